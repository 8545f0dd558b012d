package sim

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/hardware"
)

// The simulator keeps what it was told of each GPU's compute policy, across
// backends on the same root (a restarted gpulet), and refuses what
// nvidia-smi would: a MIG instance, a removed GPU, an unknown mode.
func TestComputePolicy(t *testing.T) {
	p, err := LoadProfile("dgx-h100")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	b, err := New(p, root)
	if err != nil {
		t.Fatal(err)
	}
	node, _ := b.Discover(context.Background())
	g0, g1 := node.GPUs[0].UUID, node.GPUs[1].UUID
	ctx := context.Background()
	if err := b.SetComputeMode(ctx, g0, hardware.ComputeModeExclusiveProcess); err != nil {
		t.Fatal(err)
	}
	b2, _ := New(p, root)
	if err := b2.SetTimeSlice(ctx, g1, hardware.TimeSliceMedium); err != nil {
		t.Fatal(err)
	}
	got, err := ReadComputePolicy(root)
	if err != nil {
		t.Fatal(err)
	}
	if got[g0].ComputeMode != hardware.ComputeModeExclusiveProcess || got[g0].TimeSlice != nil ||
		got[g1].ComputeMode != "" || got[g1].TimeSlice == nil || *got[g1].TimeSlice != 2 || len(got) != 2 {
		t.Fatalf("policy %+v", got)
	}
	log, _ := os.ReadFile(ComputePolicyLogPath(root))
	if string(log) != g0+" -c EXCLUSIVE_PROCESS\n"+g1+" --set-timeslice 2\n" {
		t.Fatalf("log:\n%s", log)
	}
	for name, err := range map[string]error{
		"unknown GPU":  b.SetComputeMode(ctx, "GPU-nope", hardware.ComputeModeDefault),
		"unknown mode": b.SetComputeMode(ctx, g0, "PROHIBITED"),
		"interval 4":   b.SetTimeSlice(ctx, g0, 4),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := UpdateFaults(root, func(f *Faults) error { f.Removed = append(f.Removed, g1); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.SetTimeSlice(ctx, g1, 0); err == nil || !strings.Contains(err.Error(), "no GPU") {
		t.Errorf("removed GPU: %v", err)
	}
}
