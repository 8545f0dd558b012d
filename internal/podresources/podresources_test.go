package podresources_test

import (
	"context"
	"reflect"
	"testing"

	"github.com/gpulet/gpulet/internal/podresources"
	"github.com/gpulet/gpulet/internal/podresources/podresourcestest"
	"github.com/gpulet/gpulet/internal/resources"
)

func TestListAndByDevice(t *testing.T) {
	stub := podresourcestest.Start(t,
		podresourcestest.Pod{Namespace: "ml", Name: "train", Containers: map[string]map[string][]string{
			"main": {"nvidia.com/gpu": {"GPU-a", "GPU-b"}, "example.com/nic": {"nic0"}},
		}},
		podresourcestest.Pod{Namespace: "ml", Name: "infer", Containers: map[string]map[string][]string{
			"srv": {"nvidia.com/gpu.shared": {"GPU-c::1"}},
		}},
		podresourcestest.Pod{Namespace: "ml", Name: "infer2", Containers: map[string]map[string][]string{
			"srv": {"nvidia.com/gpu.shared": {"GPU-c::2", "GPU-c::3"}},
		}},
	)
	c, err := podresources.Dial(stub.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	asg, err := c.List(context.Background(), "nvidia.com/gpu", "nvidia.com/gpu.shared")
	if err != nil {
		t.Fatal(err)
	}
	if len(asg) != 3 || asg[0].Pod != "infer" || asg[2].Pod != "train" {
		t.Fatalf("assignments not filtered and sorted: %+v", asg)
	}
	adv := []resources.Resource{
		{Name: "nvidia.com/gpu", Devices: []resources.Device{{ID: "GPU-a", UUID: "GPU-a"}, {ID: "GPU-b", UUID: "GPU-b"}}},
		{Name: "nvidia.com/gpu.shared", Devices: []resources.Device{{ID: "GPU-c::1", UUID: "GPU-c"}, {ID: "GPU-c::2", UUID: "GPU-c"}, {ID: "GPU-c::3", UUID: "GPU-c"}}},
	}
	got := podresources.ByDevice(asg, adv)
	want := map[string][]podresources.Owner{
		"GPU-a": {{"ml", "train", "main"}},
		"GPU-b": {{"ml", "train", "main"}},
		"GPU-c": {{"ml", "infer", "srv"}, {"ml", "infer2", "srv"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ByDevice = %v, want %v", got, want)
	}
}

func TestListWithoutKubelet(t *testing.T) {
	c, err := podresources.Dial(t.TempDir() + "/missing.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.List(context.Background()); err == nil {
		t.Fatal("List against a missing socket succeeded")
	}
}
