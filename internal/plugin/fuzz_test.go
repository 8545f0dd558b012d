package plugin

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// FuzzAllocate feeds arbitrary device-ID lists to the request handlers:
// they answer with exactly the requested devices or InvalidArgument, never
// panic.
func FuzzAllocate(f *testing.F) {
	node := simNode(f, "dgx-h100")
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
