package cdispec

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/gpulet/gpulet/internal/inventory"
)

// A MIG instance whose caps nodes the host lacks (a dynamic instance: the
// driver makes them on demand) gets them by type and numbers from the
// driver's mig-minors and /proc/devices, so the runtime creates them in
// the container; a node the host has keeps its host path.
func TestMIGCapsNodesWithoutHostNodes(t *testing.T) {
	dir := t.TempDir()
	dev := filepath.Join(dir, "dev")
	if err := os.MkdirAll(filepath.Join(dev, "nvidia-caps"), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := FormatMIGMinors(&buf, 1); err != nil {
		t.Fatal(err)
	}
	minors, err := ParseMIGMinors(&buf)
	if err != nil {
		t.Fatal(err)
	}
	gi, ci := minors[GICap(0, 2)], minors[CICap(0, 2, 0)]
	// The host has the GPU instance's node only.
	if err := os.WriteFile(filepath.Join(dev, "nvidia-caps", "nvidia-cap"+strconv.Itoa(gi)), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	procDevices := filepath.Join(dir, "devices")
	os.WriteFile(procDevices, []byte("Character devices:\n  1 mem\n195 nvidia\n241 nvidia-caps\n\nBlock devices:\n241 nvidia-caps-fake\n"), 0o644)
	if m := CharMajor(procDevices, "nvidia-caps"); m != 241 {
		t.Fatalf("CharMajor: %d", m)
	}
	if m := CharMajor(procDevices, "nvidia-caps-fake"); m != 0 {
		t.Fatalf("CharMajor read a block device: %d", m)
	}
	node := &inventory.Node{DevRoot: dev, GPUs: []inventory.GPU{{UUID: "GPU-1", Minor: 0,
		MIGDevices: []inventory.MIGDevice{{UUID: "MIG-1", GI: 2, CI: 0}}}}}
	raw, err := BuildClaim(node, Options{Kind: ClaimKind, MIGMinors: minors, CapsMajor: CharMajor(procDevices, "nvidia-caps")},
		[]ClaimDevice{{Name: "c-0", UUID: "MIG-1"}})
	if err != nil {
		t.Fatal(err)
	}
	nodes := raw.Devices[0].ContainerEdits.DeviceNodes
	if len(nodes) != 3 {
		t.Fatalf("%d device nodes: %+v", len(nodes), nodes)
	}
	if n := nodes[1]; n.Path != "/dev/nvidia-caps/nvidia-cap"+strconv.Itoa(gi) || n.HostPath == "" || n.Type != "" {
		t.Errorf("GI caps node (on the host): %+v", *n)
	}
	if n := nodes[2]; n.Path != "/dev/nvidia-caps/nvidia-cap"+strconv.Itoa(ci) || n.HostPath != "" || n.Type != "c" || n.Major != 241 || n.Minor != int64(ci) ||
		n.FileMode == nil || *n.FileMode != 0o444 {
		t.Errorf("CI caps node (not on the host): %+v", *n)
	}
	// Without the major the host's node is needed, as before.
	raw, err = BuildClaim(node, Options{Kind: ClaimKind, MIGMinors: minors}, []ClaimDevice{{Name: "c-0", UUID: "MIG-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if n := raw.Devices[0].ContainerEdits.DeviceNodes[2]; n.HostPath == "" || n.Type != "" {
		t.Errorf("without a major: %+v", *n)
	}
}
