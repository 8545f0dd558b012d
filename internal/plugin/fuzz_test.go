package plugin

import (
	"context"
	"math"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/allocator"
	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// FuzzAllocate feeds arbitrary device-ID lists to the request handlers:
// they answer with exactly the requested devices or InvalidArgument, never
// panic.
func FuzzAllocate(f *testing.F) {
	node := simtest.Node(f, "dgx-h100")
	store := inventory.NewStore(node)
	store.SetHealth(node.GPUs[7].UUID, inventory.Health{Reason: "XID 48"})
	rs := resources.Build(store.Snapshot(), resources.Config{Replicas: 2})
	opts := &Options{PluginDir: f.TempDir(), DeviceListStrategies: []string{StrategyEnvvar, StrategyVolumeMounts, StrategyCDIAnnotations, StrategyCDICRI},
		DeviceIDStrategy: IDStrategyUUID, PassDeviceSpecs: true, Log: discardLog()}
	s := NewServer(opts, rs[0])
	f.Add(node.GPUs[0].UUID+"::0", 2)
	f.Add(node.GPUs[7].UUID+"::1,"+node.GPUs[1].UUID+"::0", 3)
	f.Add(",,::", 1)
	f.Fuzz(func(t *testing.T, idList string, size int) {
		ids := strings.Split(idList, ",")
		resp, err := s.Allocate(context.Background(), &pluginapi.AllocateRequest{
			ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}},
		})
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
		} else {
			c := resp.ContainerResponses[0]
			for _, id := range ids {
				d, ok := rs[0].Device(id)
				if !ok || !d.Healthy {
					t.Fatalf("allocated unknown or unhealthy %q", id)
				}
				if !strings.Contains(c.Envs["NVIDIA_VISIBLE_DEVICES"], "/var/run") || len(c.CdiDevices) == 0 {
					t.Fatalf("incomplete response %+v", c)
				}
			}
		}
		_, err = s.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
			ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: ids, AllocationSize: int32(size)}},
		})
		if err != nil && status.Code(err) != codes.InvalidArgument {
			t.Fatalf("preferred allocation error %v", err)
		}
	})
}

// FuzzGetPreferredAllocation: arbitrary requests to the real placer on
// time-sliced GPUs are refused with InvalidArgument exactly when no correct
// kubelet could send them, and otherwise answered with size distinct
// offered devices including every must-include one. A token "#n" in a list
// names device n, so the fuzzer reaches valid requests.
func FuzzGetPreferredAllocation(f *testing.F) {
	node := simtest.Node(f, "pcie-4x-l4")
	rs := resources.Build(inventory.NewStore(node).Snapshot(), resources.Config{Replicas: 4})
	res := rs[0]
	s := NewServer(&Options{PluginDir: f.TempDir(), Placement: placement(allocator.PolicyDistributed), Log: discardLog()}, res)
	ids := func(list string) []string {
		if list == "" {
			return nil
		}
		var out []string
		for _, tok := range strings.Split(list, ",") {
			if n, err := strconv.Atoi(strings.TrimPrefix(tok, "#")); err == nil && strings.HasPrefix(tok, "#") && n >= 0 {
				tok = res.Devices[n%len(res.Devices)].ID
			}
			out = append(out, tok)
		}
		return out
	}
	f.Add("#0,#1,#2,#5,#9,#13", "#5", 3)
	f.Add("#0,#0,#0", "", 2)
	f.Add("#0,bogus", "", 1)
	f.Add("#0,#1", "#2", 1)
	f.Add("#3,#4,#5", "#3,#3", 2)
	f.Add("#0,#1,#2,#3,#4,#5,#6,#7,#8,#9,#10,#11,#12,#13,#14,#15", "", 0)
	f.Fuzz(func(t *testing.T, availS, mustS string, size int) {
		avail, must := ids(availS), ids(mustS)
		valid := size > 0 && size <= len(avail) && len(must) <= size && size <= math.MaxInt32
		seen := map[string]int{}
		for _, id := range avail {
			if _, ok := res.Device(id); !ok || seen[id] != 0 {
				valid = false
			}
			seen[id] = 1
		}
		for _, id := range must {
			if seen[id] != 1 {
				valid = false // not offered, or listed twice
			}
			seen[id] = 2
		}
		resp, err := s.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
			ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: avail, MustIncludeDeviceIDs: must, AllocationSize: int32(size)}},
		})
		if !valid || int(int32(size)) != size {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("avail %q must %q size %d: got %v, %v; want InvalidArgument", avail, must, size, resp, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("valid request avail %q must %q size %d: %v", avail, must, size, err)
		}
		got := resp.ContainerResponses[0].DeviceIDs
		if len(got) != size {
			t.Fatalf("asked %d, got %v", size, got)
		}
		in := map[string]bool{}
		for _, id := range got {
			if in[id] || seen[id] == 0 {
				t.Fatalf("answer %v repeats or was not offered %q (avail %q)", got, id, avail)
			}
			in[id] = true
		}
		for _, id := range must {
			if !in[id] {
				t.Fatalf("answer %v lacks must-include %q", got, id)
			}
		}
	})
}
