package hardware

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A stand-in nvidia-smi records its arguments and environment: gpulet runs
// it with NVIDIA's DRA driver's arguments and preloads its NVML library.
func TestNvidiaSMIArgs(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	smi := filepath.Join(dir, "usr", "bin", "nvidia-smi")
	if err := os.MkdirAll(filepath.Dir(smi), 0o755); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\necho \"$LD_PRELOAD $*\" >> " + log + "\ncase \"$*\" in *GPU-bad*) echo 'No devices were found' ; exit 6;; esac\n"
	if err := os.WriteFile(smi, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := FindNvidiaSMI(dir); got != smi {
		t.Fatalf("FindNvidiaSMI = %s, want %s", got, smi)
	}
	n := NvidiaSMI{Path: smi, Library: "/lib/libnvidia-ml.so.1"}
	ctx := context.Background()
	if err := n.SetComputeMode(ctx, "GPU-a", ComputeModeExclusiveProcess); err != nil {
		t.Fatal(err)
	}
	if err := n.SetTimeSlice(ctx, "GPU-a", TimeSliceLong); err != nil {
		t.Fatal(err)
	}
	err := n.SetTimeSlice(ctx, "GPU-bad", TimeSliceShort)
	if err == nil || !strings.Contains(err.Error(), "No devices were found") || !strings.Contains(err.Error(), "--set-timeslice 1") {
		t.Fatalf("error %v: want nvidia-smi's output and the command", err)
	}
	got, _ := os.ReadFile(log)
	want := "/lib/libnvidia-ml.so.1 -i GPU-a -c EXCLUSIVE_PROCESS\n" +
		"/lib/libnvidia-ml.so.1 compute-policy -i GPU-a --set-timeslice 3\n" +
		"/lib/libnvidia-ml.so.1 compute-policy -i GPU-bad --set-timeslice 1\n"
	if string(got) != want {
		t.Fatalf("calls:\n%s\nwant:\n%s", got, want)
	}
}
