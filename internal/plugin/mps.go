package plugin

import (
	"context"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/mps"
	"github.com/gpulet/gpulet/internal/resources"
)

// MPSAccess is what Allocate needs of the MPS daemons (mps.Manager).
type MPSAccess interface {
	Access(ctx context.Context, gpuUUID string) (mps.Access, error)
}

// anyReplica reports whether any ID is a shared replica; NVIDIA applies
// failRequestsGreaterThanOne only then, so whole devices left unshared by a
// devices subset can still be asked for in numbers.
func anyReplica(ids []string) bool {
	for _, id := range ids {
		if strings.Contains(id, resources.ReplicaSep) {
			return true
		}
	}
	return false
}

// addMPS gives a container of MPS replicas its GPU's pipe folder, the shm
// folder and the replica's limits, as NVIDIA's plugin does.
func (o *Options) addMPS(ctx context.Context, res *resources.Resource, devs []resources.Device, r *pluginapi.ContainerAllocateResponse) error {
	if !res.MPS {
		return nil
	}
	gpu := ""
	for _, d := range devs {
		if d.Replicas == 0 {
			continue // a whole device under the same name: no MPS
		}
		if gpu != "" && d.UUID != gpu {
			// One CUDA_MPS_PIPE_DIRECTORY reaches one GPU's daemon.
			return status.Errorf(codes.InvalidArgument,
				"%s: MPS replicas of more than one GPU in one container (%s, %s) cannot work: each GPU has its own MPS daemon; ask for one replica, or set failRequestsGreaterThanOne",
				res.Name, gpu, d.UUID)
		}
		gpu = d.UUID
	}
	if gpu == "" {
		return nil
	}
	if o.MPS == nil {
		return status.Errorf(codes.Internal, "%s is shared through MPS but no MPS daemon manager is running", res.Name)
	}
	a, err := o.MPS.Access(ctx, gpu)
	if err != nil {
		return status.Errorf(codes.Unavailable, "%s: %v", res.Name, err)
	}
	for k, v := range a.Env {
		setEnv(r, k, v)
	}
	for _, m := range a.Mounts {
		r.Mounts = append(r.Mounts, &pluginapi.Mount{HostPath: m.Host, ContainerPath: m.Container})
	}
	return nil
}
