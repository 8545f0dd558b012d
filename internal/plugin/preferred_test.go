package plugin

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/allocator"
	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// placement builds the real placer as the daemon does (daemon.PlacementFor,
// which this package cannot import).
func placement(p allocator.Policy) func(*resources.Resource) (Placer, error) {
	return func(res *resources.Resource) (Placer, error) {
		topo, err := allocator.ForResource(res, p)
		if err != nil {
			return nil, err
		}
		return topo, nil
	}
}

// fakeKubelet drives GetPreferredAllocation over the plugin socket the way
// the kubelet does: it offers the free devices and takes what is preferred.
type fakeKubelet struct {
	t      *testing.T
	client pluginapi.DevicePluginClient
	node   *inventory.Node
	free   []string
}

func newFakeKubelet(t *testing.T, policy allocator.Policy, replicas int) *fakeKubelet {
	node := simtest.Node(t, "pcie-4x-l4")
	h := startHarness(t, node, Options{Placement: placement(policy)}, resources.Config{Replicas: replicas})
	h.kubelet.waitRegistration(t, 5*time.Second)
	k := &fakeKubelet{t: t, client: dial(t, h.dir, endpoint), node: node}
	for _, d := range resources.Build(h.store.Snapshot(), resources.Config{Replicas: replicas})[0].Devices {
		k.free = append(k.free, d.ID)
	}
	return k
}

// replica names replica r of GPU g.
func (k *fakeKubelet) replica(g, r int) string {
	return fmt.Sprintf("%s%s%d", k.node.GPUs[g].UUID, resources.ReplicaSep, r)
}

// use marks devices as held by running containers.
func (k *fakeKubelet) use(ids ...string) {
	k.free = slices.DeleteFunc(k.free, func(id string) bool { return slices.Contains(ids, id) })
}

// allocate asks for size devices and takes them.
func (k *fakeKubelet) allocate(size int) []string {
	k.t.Helper()
	resp, err := k.client.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: k.free, AllocationSize: int32(size)}},
	})
	if err != nil {
		k.t.Fatal(err)
	}
	got := resp.ContainerResponses[0].DeviceIDs
	if len(got) != size {
		k.t.Fatalf("asked for %d, got %v", size, got)
	}
	k.use(got...)
	return got
}

// loads counts the devices in use per GPU.
func (k *fakeKubelet) loads(replicas int) []int {
	l := make([]int, len(k.node.GPUs))
	for g := range l {
		for r := range replicas {
			if !slices.Contains(k.free, k.replica(g, r)) {
				l[g]++
			}
		}
	}
	return l
}

// gpusOf names the GPU index of each device.
func (k *fakeKubelet) gpusOf(ids []string) []int {
	var out []int
	for _, id := range ids {
		for g, gpu := range k.node.GPUs {
			if strings.HasPrefix(id, gpu.UUID+resources.ReplicaSep) {
				out = append(out, g)
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestPreferredAllocationPlacesReplicasByPolicy replays issue 9's findings
// on pcie-4x-l4 with four replicas through the gRPC server.
func TestPreferredAllocationPlacesReplicasByPolicy(t *testing.T) {
	t.Run("distributed avoids the busy GPU", func(t *testing.T) {
		k := newFakeKubelet(t, allocator.PolicyDistributed, 4)
		k.use(k.replica(0, 0), k.replica(0, 1), k.replica(0, 2))
		if g := k.gpusOf(k.allocate(1)); g[0] == 0 {
			t.Errorf("one replica went to GPU0, which has 3 of 4 in use; loads now %v", k.loads(4))
		}
	})
	for _, size := range []int{2, 4} {
		t.Run(fmt.Sprintf("distributed %d replicas on distinct GPUs", size), func(t *testing.T) {
			k := newFakeKubelet(t, allocator.PolicyDistributed, 4)
			if g := k.gpusOf(k.allocate(size)); len(slices.Compact(g)) != size {
				t.Errorf("%d replicas on GPUs %v, want %d distinct", size, g, size)
			}
		})
	}
	t.Run("distributed successive singles stay balanced", func(t *testing.T) {
		k := newFakeKubelet(t, allocator.PolicyDistributed, 4)
		for i := range 16 {
			k.allocate(1)
			if l := k.loads(4); slices.Max(l)-slices.Min(l) > 1 {
				t.Fatalf("after %d single requests loads %v", i+1, l)
			}
		}
	})
	t.Run("packed fills one GPU, then the next", func(t *testing.T) {
		k := newFakeKubelet(t, allocator.PolicyPacked, 4)
		for range 8 {
			k.allocate(1)
		}
		l := k.loads(4)
		slices.Sort(l)
		if !slices.Equal(l, []int{0, 0, 4, 4}) {
			t.Errorf("8 singles packed give loads %v, want two GPUs full", k.loads(4))
		}
	})
	t.Run("must-include honoured", func(t *testing.T) {
		k := newFakeKubelet(t, allocator.PolicyDistributed, 4)
		must := k.replica(3, 2)
		resp, err := k.client.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
			ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: k.free, MustIncludeDeviceIDs: []string{must}, AllocationSize: 3}},
		})
		if err != nil {
			t.Fatal(err)
		}
		got := resp.ContainerResponses[0].DeviceIDs
		if !slices.Contains(got, must) || len(slices.Compact(k.gpusOf(got))) != 3 {
			t.Errorf("got %v, want %s and two replicas of two other GPUs", got, must)
		}
	})
}

// TestGetPreferredAllocationRefusesBadInput: input a correct kubelet never
// sends is InvalidArgument naming the offending IDs, never an answer.
func TestGetPreferredAllocationRefusesBadInput(t *testing.T) {
	k := newFakeKubelet(t, allocator.PolicyDistributed, 2)
	a, b, c := k.replica(0, 0), k.replica(1, 0), k.replica(2, 1)
	for _, tc := range []struct {
		name  string
		avail []string
		must  []string
		size  int32
		want  []string
	}{
		{"unknown ID", []string{a, "GPU-bogus::0", b}, nil, 2, []string{"unknown", `"GPU-bogus::0"`}},
		{"same ID three times", []string{a, a, a}, nil, 2, []string{"more than once", a, "exceeds the 1 distinct"}},
		{"must-include not offered", []string{a, b}, []string{c}, 2, []string{"not among the available", c}},
		{"must-include twice", []string{a, b, c}, []string{a, a}, 2, []string{"must-include devices listed more than once", a}},
		{"size 0", []string{a, b}, nil, 0, []string{"size 0"}},
		{"negative size", []string{a, b}, nil, -1, []string{"size -1"}},
		{"size above available", []string{a, b}, nil, 3, []string{"size 3 exceeds the 2"}},
		{"more must-include than size", []string{a, b, c}, []string{a, b}, 1, []string{"2 must-include devices exceed the allocation size 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := k.client.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
				ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: tc.avail, MustIncludeDeviceIDs: tc.must, AllocationSize: tc.size}},
			})
			if err == nil {
				t.Fatalf("answered %v", resp.ContainerResponses)
			}
			checkInvalid(t, "GetPreferredAllocation", err, tc.want)
		})
	}
}

// TestGetPreferredAllocationNeverAnswersUnofferedDevices: a placer answer
// that is not a valid choice is replaced by one in ID order.
func TestGetPreferredAllocationNeverAnswersUnofferedDevices(t *testing.T) {
	node := simtest.Node(t, "dgx-h100")
	bad := map[string]placerFunc{
		"unoffered": func(_ context.Context, avail, _ []string, n int) ([]string, error) {
			return append([]string{node.GPUs[7].UUID}, avail[:n-1]...), nil
		},
		"repeated": func(_ context.Context, avail, _ []string, n int) ([]string, error) {
			return slices.Repeat(avail[:1], n), nil
		},
		"short":        func(_ context.Context, avail, _ []string, n int) ([]string, error) { return avail[:n-1], nil },
		"drops a must": func(_ context.Context, avail, _ []string, n int) ([]string, error) { return avail[:n], nil },
	}
	for name, p := range bad {
		t.Run(name, func(t *testing.T) {
			h := startHarness(t, node, Options{Placement: func(*resources.Resource) (Placer, error) { return p, nil }}, resources.Config{})
			h.kubelet.waitRegistration(t, 5*time.Second)
			avail := []string{node.GPUs[0].UUID, node.GPUs[1].UUID, node.GPUs[2].UUID}
			must := []string{node.GPUs[2].UUID}
			resp, err := dial(t, h.dir, endpoint).GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
				ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: avail, MustIncludeDeviceIDs: must, AllocationSize: 2}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.ContainerResponses[0].DeviceIDs; !slices.Equal(got, []string{avail[2], avail[0]}) {
				t.Errorf("answer %v, want the ID-order fallback %v", got, []string{avail[2], avail[0]})
			}
		})
	}
}
