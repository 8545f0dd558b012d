package plugin

import (
	"context"
	"errors"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/mps"
	"github.com/gpulet/gpulet/internal/resources"
)

type fakeMPS struct{ down bool }

func (f fakeMPS) Access(_ context.Context, uuid string) (mps.Access, error) {
	if f.down {
		return mps.Access{}, errors.New("daemon down")
	}
	return mps.Access{
		Env:    map[string]string{"CUDA_MPS_PIPE_DIRECTORY": "/mps/" + uuid + "/pipe", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"},
		Mounts: []mps.Mount{{Host: "/run/nvidia/mps/" + uuid + "/pipe", Container: "/mps/" + uuid + "/pipe"}, {Host: "/run/nvidia/mps/shm", Container: "/dev/shm"}},
	}, nil
}

// TestAllocateMPSReplicas: an MPS replica gets its GPU's daemon; a whole
// device left by a devices subset does not; replicas of two GPUs in one
// container are refused; a dead daemon fails the allocation.
func TestAllocateMPSReplicas(t *testing.T) {
	node := simtest.Node(t, "pcie-4x-l4")
	cfg := resources.Config{MPS: true, Shares: []resources.Share{{Name: "nvidia.com/gpu", Replicas: 4, Devices: resources.Selector{Count: 2}}}}
	h := startHarness(t, node, Options{MPS: fakeMPS{}}, cfg)
	h.kubelet.waitRegistration(t, 5*time.Second)
	client := dial(t, h.dir, "gpulet-nvidia-com-gpu.sock")
	alloc := func(ids ...string) (*pluginapi.ContainerAllocateResponse, error) {
		r, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{
			ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}})
		if err != nil {
			return nil, err
		}
		return r.ContainerResponses[0], nil
	}
	u0, u1, u3 := node.GPUs[0].UUID, node.GPUs[1].UUID, node.GPUs[3].UUID
	c, err := alloc(u0 + "::1")
	if err != nil {
		t.Fatal(err)
	}
	if c.Envs["CUDA_MPS_PIPE_DIRECTORY"] != "/mps/"+u0+"/pipe" || c.Envs["NVIDIA_VISIBLE_DEVICES"] != u0 || len(c.Mounts) != 2 ||
		c.Mounts[1].ContainerPath != "/dev/shm" {
		t.Errorf("MPS replica got envs %v mounts %v", c.Envs, c.Mounts)
	}
	c, err = alloc(u3)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Envs["CUDA_MPS_PIPE_DIRECTORY"]; ok || len(c.Mounts) != 0 {
		t.Errorf("a whole GPU got MPS: %v %v", c.Envs, c.Mounts)
	}
	_, err = alloc(u0+"::0", u1+"::0")
	checkInvalid(t, "Allocate", err, []string{"more than one GPU"})

	down := startHarness(t, node, Options{MPS: fakeMPS{down: true}}, cfg)
	down.kubelet.waitRegistration(t, 5*time.Second)
	_, err = dial(t, down.dir, "gpulet-nvidia-com-gpu.sock").Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{u0 + "::0"}}}})
	if err == nil {
		t.Error("allocated through a dead MPS daemon")
	}
}
