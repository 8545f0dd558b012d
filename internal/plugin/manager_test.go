package plugin

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/allocator"
	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// mixedNode is a dgx-h100 whose last four GPUs are MIG-enabled with seven
// 1g.10gb instances each, so MIG mixed gives two resources: nvidia.com/gpu
// (GPUs 0-3) and nvidia.com/mig-1g.10gb (28 instances).
func mixedNode(t testing.TB) *inventory.Node {
	t.Helper()
	n := simtest.Node(t, "dgx-h100")
	for gi := 4; gi < 8; gi++ {
		g := &n.GPUs[gi]
		g.MIGEnabled = true
		for k := 0; k < 7; k++ {
			g.MIGDevices = append(g.MIGDevices, inventory.MIGDevice{
				UUID: fmt.Sprintf("MIG-%s-%d", g.UUID, k), Profile: "1g.10gb", GI: k + 1, CI: 0,
			})
		}
	}
	return n
}

// mixedShared is 32 time-sliced replicas of each device of mixedNode: 128
// nvidia.com/gpu devices and 896 nvidia.com/mig-1g.10gb ones, 1,024 in all.
var mixedShared = resources.Config{MIGStrategy: resources.MIGMixed, Replicas: 32}

// allocatorPlacement places by links alone, as allocator.ForResource does
// for whole GPUs.
func allocatorPlacement(res *resources.Resource) (Placer, error) {
	return placement(allocator.PolicyTopology)(res)
}

// BenchmarkInventoryChange measures the manager's work for one health change
// of one whole GPU on a 1,024-device node with two resources: building the
// resources and updating the servers (each update rebuilds that server's
// allocator topology). Servers are created but not served.
func BenchmarkInventoryChange(b *testing.B) {
	node := mixedNode(b)
	store := inventory.NewStore(node)
	m := &Manager{
		Opts:      &Options{Log: discardLog(), Placement: allocatorPlacement},
		Store:     store,
		Resources: mixedShared,
		servers:   map[string]*Server{},
	}
	noStart := func(*Server) {}
	m.apply(noStart)
	total := 0
	for _, s := range m.Servers() {
		res, _ := s.current()
		total += len(res.Devices)
	}
	if len(m.Servers()) != 2 || total != 1024 {
		b.Fatalf("%d servers, %d devices; want 2 and 1024", len(m.Servers()), total)
	}
	u := node.GPUs[0].UUID
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		store.SetHealth(u, inventory.Health{Healthy: i%2 == 1, Reason: "bench"})
		m.apply(noStart)
	}
}

// mixedStreams waits for mixedNode's two registrations and opens a
// ListAndWatch stream on each, its first list read: nvidia.com/gpu's and
// nvidia.com/mig-1g.10gb's.
func mixedStreams(t *testing.T, h *harness) (gpu, mig pluginapi.DevicePlugin_ListAndWatchClient) {
	t.Helper()
	streams := map[string]pluginapi.DevicePlugin_ListAndWatchClient{}
	for range 2 {
		reg := h.kubelet.waitRegistration(t, 5*time.Second)
		s, err := dial(t, h.dir, reg.Endpoint).ListAndWatch(context.Background(), &pluginapi.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		streams[reg.ResourceName] = s
	}
	gpu, mig = streams["nvidia.com/gpu"], streams["nvidia.com/mig-1g.10gb"]
	if gpu == nil || mig == nil {
		t.Fatalf("registered %v", slices.Collect(maps.Keys(streams)))
	}
	return gpu, mig
}

// A health change of one whole GPU must reach only nvidia.com/gpu: the MIG
// resource's server keeps its placer and its stream stays quiet.
func TestInventoryChangeUpdatesOnlyChangedResource(t *testing.T) {
	node := mixedNode(t)
	var mu sync.Mutex
	placements := map[string]int{}
	opts := Options{Placement: func(res *resources.Resource) (Placer, error) {
		mu.Lock()
		placements[res.Name]++
		mu.Unlock()
		return allocatorPlacement(res)
	}}
	h := startHarness(t, node, opts, resources.Config{MIGStrategy: resources.MIGMixed})
	gpu, mig := mixedStreams(t, h)
	migMsgs := make(chan *pluginapi.ListAndWatchResponse, 8)
	go func() {
		for {
			resp, err := mig.Recv()
			if err != nil {
				return // the harness stopped
			}
			migMsgs <- resp
		}
	}()

	u := node.GPUs[0].UUID
	h.store.SetHealth(u, inventory.Health{Healthy: false, Reason: "test"})
	for {
		resp, err := gpu.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !devHealth(resp, u) {
			break
		}
	}
	select {
	case resp := <-migMsgs:
		t.Fatalf("unchanged MIG resource sent a new list of %d devices", len(resp.Devices))
	case <-time.After(300 * time.Millisecond):
	}
	mu.Lock()
	defer mu.Unlock()
	if placements["nvidia.com/gpu"] != 2 || placements["nvidia.com/mig-1g.10gb"] != 1 {
		t.Errorf("placers built per resource %v; want nvidia.com/gpu twice (start, change), the MIG resource once", placements)
	}
}

func TestNewServerLeavesCallersOptionsAlone(t *testing.T) {
	opts := &Options{PluginDir: t.TempDir(), Log: discardLog()}
	s := NewServer(opts, resources.Resource{Name: "nvidia.com/gpu"})
	if opts.Poll != 0 {
		t.Errorf("caller's Poll changed to %v", opts.Poll)
	}
	if s.opts == opts || s.opts.Poll != time.Second {
		t.Errorf("server should keep its own copy with the default poll, got %v", s.opts.Poll)
	}
}

// A new resources config while serving (a per-node config applied live):
// nvidia.com/gpu, now time-sliced 4 ways, sends its 16 replicas on its open
// stream without registering again; the unchanged MIG resource stays
// quiet; a renamed resource registers as new.
func TestSetResourcesUpdatesOnlyChangedResources(t *testing.T) {
	node := mixedNode(t)
	h := startHarness(t, node, Options{}, resources.Config{MIGStrategy: resources.MIGMixed})
	gpu, mig := mixedStreams(t, h)
	migMsgs := make(chan int, 8)
	go func() {
		for {
			resp, err := mig.Recv()
			if err != nil {
				return
			}
			migMsgs <- len(resp.Devices)
		}
	}()
	shared := resources.Config{MIGStrategy: resources.MIGMixed,
		Shares: []resources.Share{{Name: "nvidia.com/gpu", Replicas: 4, Devices: resources.Selector{}}}}
	h.mgr.SetResources(shared)
	resp, err := gpu.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Devices) != 16 {
		t.Fatalf("nvidia.com/gpu sent %d devices, want 16 (4 GPUs × 4 replicas)", len(resp.Devices))
	}
	select {
	case n := <-migMsgs:
		t.Fatalf("the unchanged MIG resource sent a new list of %d devices", n)
	case <-time.After(300 * time.Millisecond):
	}
	if reg, err := h.kubelet.WaitRegistration(100 * time.Millisecond); err == nil {
		t.Fatalf("%s registered again", reg.ResourceName)
	}
	// Renamed: nvidia.com/gpu.shared registers, nvidia.com/gpu advertises none.
	shared.Shares[0].Rename = "nvidia.com/gpu.shared"
	h.mgr.SetResources(shared)
	if reg := h.kubelet.waitRegistration(t, 5*time.Second); reg.ResourceName != "nvidia.com/gpu.shared" {
		t.Fatalf("registered %s, want nvidia.com/gpu.shared", reg.ResourceName)
	}
	if resp, err = gpu.Recv(); err != nil || len(resp.Devices) != 0 {
		t.Fatalf("nvidia.com/gpu after the rename: %d devices, %v; want 0", len(resp.GetDevices()), err)
	}
}
