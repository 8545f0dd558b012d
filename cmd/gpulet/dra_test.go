package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
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
		// A one-shot probe finds the GPU faulty but not which XID (the
		// daemon's event watch does): gpulet's own key.
		tainted := len(d.Taints) == 1 && d.Taints[0].Key == "gpulet.io/unhealthy" && d.Taints[0].Effect == resourceapi.DeviceTaintEffectNoSchedule
		if tainted != (d.Name == "gpu-3") {
			t.Errorf("%s: taints %+v; want gpulet.io/unhealthy:NoSchedule on the faulted gpu-3 only", d.Name, d.Taints)
		}
	}
	if len(s.Spec.Devices) != 8 {
		t.Errorf("%d devices with GPU 3 faulted, want 8 (the faulted one tainted)", len(s.Spec.Devices))
	}
}

// parityProfile has a whole GPU and a MIG-enabled one, on a platform that
// answers every query NVIDIA's driver makes (NUMA, addressing mode).
const parityProfile = `name: parity
driverVersion: 580.159.04
cudaDriverVersion: "13.0"
gpus:
  - {name: NVIDIA H100 80GB HBM3, architecture: Hopper, addressingMode: None, memoryMiB: 81559, computeCapability: "9.0", migCapable: true}
  - name: NVIDIA H100 80GB HBM3
    architecture: Hopper
    addressingMode: None
    memoryMiB: 81559
    computeCapability: "9.0"
    mig:
      profile: 3g.40gb
      count: 2
      memoryMiB: 40192
      attributes: {multiprocessors: 60, giSlices: 3, ciSlices: 3, copyEngines: 3, decoders: 3, encoders: 0, jpegs: 3, ofas: 0}
numaNodes: [0, 1]
`

// `gpulet dra slice` lists every attribute and capacity NVIDIA's DRA
// driver publishes (internal/dra/testdata/nvidia-slice-names.txt, facts
// from NVIDIA's source), with the same value type, on GPUs and MIG devices.
func TestDRASliceHasNVIDIAsNames(t *testing.T) {
	dir := t.TempDir()
	profile := filepath.Join(dir, "parity.yaml")
	if err := os.WriteFile(profile, []byte(parityProfile), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := gpulet(t, "dra", "slice", "--node-name=n1", "--backend=sim", "--sim-profile="+profile, "--sim-root="+filepath.Join(dir, "root"))
	if err != nil {
		t.Fatalf("gpulet dra slice: %v\n%s", err, out)
	}
	var s resourceapi.ResourceSlice
	if err := yaml.UnmarshalStrict([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	byType := map[string][]resourceapi.Device{}
	for _, d := range s.Spec.Devices {
		if a := d.Attributes["type"].StringValue; a != nil {
			byType[*a] = append(byType[*a], d)
		}
	}
	if len(byType["gpu"]) != 1 || len(byType["mig"]) != 2 {
		t.Fatalf("%d GPUs and %d MIG devices, want 1 and 2", len(byType["gpu"]), len(byType["mig"]))
	}
	facts, err := os.ReadFile("../../internal/dra/testdata/nvidia-slice-names.txt")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(facts), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 5 {
			t.Fatalf("bad fact line %q", line)
		}
		kind, what, name, typ, when := f[0], f[1], f[2], f[3], f[4]
		n++
		for _, d := range byType[kind] {
			got := ""
			if what == "attribute" {
				if a, ok := d.Attributes[resourceapi.QualifiedName(name)]; ok {
					got = map[bool]string{a.StringValue != nil: "string", a.IntValue != nil: "int", a.VersionValue != nil: "version", a.BoolValue != nil: "bool"}[true]
				}
			} else {
				for c := range d.Capacity {
					if c == resourceapi.QualifiedName(name) || (strings.HasSuffix(name, "<N>") && regexp.MustCompile("^"+strings.TrimSuffix(name, "<N>")+"[0-9]+$").MatchString(string(c))) {
						got = "quantity"
					}
				}
			}
			switch {
			case when == "sysfs":
				if got != "" {
					t.Errorf("%s %s %s on the simulator, which has no sysfs", d.Name, what, name)
				}
			case got != typ:
				t.Errorf("%s lacks NVIDIA's %s %s (%s): got %q", d.Name, what, name, typ, got)
			}
		}
	}
	if n < 30 {
		t.Fatalf("only %d facts read", n)
	}
	if got := byType["mig"][1].Name; got != "gpu-1-mig-3g40gb-9-4" {
		t.Errorf("second MIG device named %q, want NVIDIA's gpu-1-mig-3g40gb-9-4 (profile ID 9, placed at slice 4)", got)
	}
}

// `gpulet dra slice --dra-dynamic-mig` prints the pool as the driver
// publishes it: the counter sets first, then each dynamic GPU whole and its
// placements; a GPU left out stays plain.
func TestDRASliceDynamicMIG(t *testing.T) {
	out, err := gpulet(t, "dra", "slice", "--node-name=n1", "--backend=sim", "--sim-profile=dgx-h100",
		"--sim-root="+t.TempDir(), "--dra-dynamic-mig=0,1")
	if err != nil {
		t.Fatalf("gpulet dra slice: %v\n%s", err, out)
	}
	docs := strings.Split(out, "\n---\n")
	if len(docs) != 4 {
		t.Fatalf("%d slices, want 4 (counters, plain GPUs, GPU 0, GPU 1):\n%s", len(docs), out)
	}
	var sl []resourceapi.ResourceSlice
	for _, d := range docs {
		var s resourceapi.ResourceSlice
		if err := yaml.UnmarshalStrict([]byte(d), &s); err != nil {
			t.Fatalf("not a ResourceSlice: %v\n%s", err, d)
		}
		if s.Spec.Pool.ResourceSliceCount != 4 {
			t.Errorf("%s: resourceSliceCount %d", s.Name, s.Spec.Pool.ResourceSliceCount)
		}
		sl = append(sl, s)
	}
	if len(sl[0].Spec.SharedCounters) != 2 || sl[0].Spec.SharedCounters[0].Name != "gpu-0-counter-set" || len(sl[0].Spec.Devices) != 0 {
		t.Fatalf("first slice: %+v", sl[0].Spec)
	}
	if len(sl[1].Spec.Devices) != 6 || sl[1].Spec.Devices[0].Name != "gpu-2" || sl[1].Spec.Devices[0].ConsumesCounters != nil {
		t.Fatalf("plain GPUs: %d devices, first %s", len(sl[1].Spec.Devices), sl[1].Spec.Devices[0].Name)
	}
	for i, s := range sl[2:] {
		if len(s.Spec.Devices) != 26 || s.Spec.Devices[0].Name != fmt.Sprintf("gpu-%d", i) || len(s.Spec.Devices[25].ConsumesCounters) != 1 {
			t.Fatalf("GPU %d's slice: %d devices, first %s", i, len(s.Spec.Devices), s.Spec.Devices[0].Name)
		}
	}
	if out, err := gpulet(t, "dra", "slice", "--node-name=n1", "--backend=sim", "--sim-profile=dgx-h100",
		"--sim-root="+t.TempDir(), "--dra-dynamic-mig=9"); err == nil || !strings.Contains(out, "dra-dynamic-mig names GPU 9") {
		t.Fatalf("a GPU the node lacks: %v\n%s", err, out)
	}
}
