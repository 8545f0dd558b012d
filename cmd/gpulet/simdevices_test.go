package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `gpulet sim devices` makes a profile's device nodes also while the
// simulated driver is down (a CPU-only e2e node given GPUs for a scenario
// is set up that way), and says which.
func TestSimDevicesWithTheDriverDown(t *testing.T) {
	root := t.TempDir()
	if out, err := gpulet(t, "sim", "driver", "down", "--sim-root="+root); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := gpulet(t, "sim", "devices", "--sim-profile=pcie-4x-l4", "--sim-root="+root)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if want := "created " + filepath.Join(root, "dev") + "/{nvidiactl,nvidia-uvm,nvidia-uvm-tools,nvidia0,nvidia1,nvidia2,nvidia3}"; !strings.Contains(out, want) {
		t.Fatalf("output %q, want %q", out, want)
	}
	for _, n := range []string{"nvidia0", "nvidia3", "nvidiactl"} {
		if _, err := os.Stat(filepath.Join(root, "dev", n)); err != nil {
			t.Error(err)
		}
	}
}
