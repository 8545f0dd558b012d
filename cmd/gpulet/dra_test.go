package main

import (
	"fmt"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"sigs.k8s.io/yaml"
)

// `gpulet dra slice` prints the slice the DRA driver would publish: one
// device per GPU, NVIDIA's names, and a faulted GPU withdrawn.
func TestDRASliceCommand(t *testing.T) {
	root := t.TempDir()
	sim := []string{"--backend=sim", "--sim-profile=dgx-h100", "--sim-root=" + root}
	read := func() resourceapi.ResourceSlice {
		t.Helper()
		out, err := gpulet(t, append([]string{"dra", "slice", "--node-name=gpu-node-1"}, sim...)...)
		if err != nil {
			t.Fatalf("gpulet dra slice: %v\n%s", err, out)
		}
		var s resourceapi.ResourceSlice
		if err := yaml.UnmarshalStrict([]byte(out), &s); err != nil {
			t.Fatalf("not a ResourceSlice: %v\n%s", err, out)
		}
		return s
	}
	s := read()
	if s.Kind != "ResourceSlice" || s.Spec.Driver != "gpu.nvidia.com" || s.Spec.NodeName == nil ||
		*s.Spec.NodeName != "gpu-node-1" || s.Spec.Pool.Name != "gpu-node-1" {
		t.Fatalf("slice header: kind %q driver %q node %v pool %q", s.Kind, s.Spec.Driver, s.Spec.NodeName, s.Spec.Pool.Name)
	}
	if len(s.Spec.Devices) != 8 {
		t.Fatalf("%d devices, want the 8 GPUs of dgx-h100", len(s.Spec.Devices))
	}
	names := map[string]bool{}
	for _, d := range s.Spec.Devices {
		names[d.Name] = true
		if p := d.Attributes["productName"].StringValue; p == nil || *p != "NVIDIA H100 80GB HBM3" {
			t.Errorf("device %s: productName %v", d.Name, p)
		}
		if _, ok := d.Capacity["memory"]; !ok {
			t.Errorf("device %s has no memory capacity", d.Name)
		}
	}
	for i := 0; i < 8; i++ {
		if !names[fmt.Sprintf("gpu-%d", i)] {
			t.Errorf("no device gpu-%d in %v", i, names)
		}
	}
	if out, err := gpulet(t, append([]string{"sim", "fault", "--gpu=3", "--xid=48"}, sim[1:]...)...); err != nil {
		t.Fatalf("sim fault: %v\n%s", err, out)
	}
	s = read()
	for _, d := range s.Spec.Devices {
		if d.Name == "gpu-3" {
			t.Errorf("the faulted gpu-3 is still offered")
		}
	}
	if len(s.Spec.Devices) != 7 {
		t.Errorf("%d devices with GPU 3 faulted, want 7", len(s.Spec.Devices))
	}
}
