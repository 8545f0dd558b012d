package sim_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
)

const a100Profile = `
name: a100
driverVersion: 580.159.04
gpus:
  - {name: NVIDIA A100-SXM4-40GB, memoryMiB: 40960, computeCapability: "8.0", migCapable: true}
  - {name: NVIDIA L4, memoryMiB: 23034, computeCapability: "8.9"}
`

// The three products' tables: every profile's name is what NVML's naming
// rule gives its memory on that GPU, the placements fit in eight memory
// slices, and the full profile is one placement of all of them.
func TestMIGTables(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		profile string
		names   []string
	}{
		{a100Profile, []string{"1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"}},
		{"dgx-h100", []string{"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"}},
		{"h200", []string{"1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"}},
	} {
		b, n := simtest.Backend(t, tc.profile)
		g := n.GPUs[0]
		ps, err := b.MIGProfiles(ctx, g.UUID)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, p := range ps {
			names = append(names, p.Name)
			base, _, _ := strings.Cut(p.Name, "+")
			gb := inventory.MIGMemoryGB(p.MemoryBytes, g.MemoryBytes)
			if want := strings.SplitN(base, ".", 2)[1]; want != strconv.FormatUint(gb, 10)+"gb" {
				t.Errorf("%s %s: %d MiB is a %dgb instance by NVML's rule", g.Name, p.Name, p.MemoryBytes>>20, gb)
			}
			for _, s := range p.Placements {
				if s%p.MemorySlices != 0 && p.MemorySlices > 1 || s+p.MemorySlices > 8 {
					t.Errorf("%s %s: placement %d of size %d is not aligned inside 8 slices", g.Name, p.Name, s, p.MemorySlices)
				}
			}
		}
		if !slices.Equal(names, tc.names) {
			t.Errorf("%s: profiles %v, want %v", g.Name, names, tc.names)
		}
		full := ps[len(ps)-1]
		if full.ID != 0 || full.MemorySlices != 8 || full.ComputeSlices != 7 || !slices.Equal(full.Placements, []int{0}) {
			t.Errorf("%s: full profile %+v", g.Name, full)
		}
	}
}

func TestDynamicMIGLifecycle(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	p := simtest.Profile(t, "h200")
	b, err := sim.New(p, root)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := b.Discover(ctx)
	uuid := n.GPUs[0].UUID

	if _, err := b.CreateMIGInstance(ctx, uuid, 9, 0); err == nil || !strings.Contains(err.Error(), "MIG mode is off") {
		t.Fatalf("create with MIG off: %v", err)
	}
	if on, _ := b.MIGMode(ctx, uuid); on {
		t.Fatal("h200 starts with MIG on")
	}
	if err := b.SetMIGMode(ctx, uuid, true); err != nil {
		t.Fatal(err)
	}
	big, err := b.CreateMIGInstance(ctx, uuid, 9, 4) // 3g.71gb on slices 4-7
	if err != nil {
		t.Fatal(err)
	}
	if big.GI != 2 || big.CI != 0 || big.Size != 4 || !strings.HasPrefix(big.UUID, "MIG-") {
		t.Fatalf("3g at 4: %+v", big)
	}
	for _, bad := range []struct {
		id, start int
		why       string
	}{
		{14, 4, "overlap"},          // 2g on slice 4-5
		{0, 0, "overlap"},           // the whole GPU
		{14, 1, "cannot be placed"}, // not a placement
		{77, 0, "no GPU-instance profile"},
	} {
		if _, err := b.CreateMIGInstance(ctx, uuid, bad.id, bad.start); err == nil || !strings.Contains(err.Error(), bad.why) {
			t.Errorf("profile %d at %d: %v, want %q", bad.id, bad.start, err, bad.why)
		}
	}
	small, err := b.CreateMIGInstance(ctx, uuid, 14, 0) // 2g.35gb on 0-1
	if err != nil {
		t.Fatal(err)
	}
	me, err := b.CreateMIGInstance(ctx, uuid, 20, 2) // 1g.18gb+me
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateMIGInstance(ctx, uuid, 20, 3); err == nil || !strings.Contains(err.Error(), "OFA") {
		t.Fatalf("second +me instance: %v", err)
	}
	if err := b.SetMIGMode(ctx, uuid, false); err == nil {
		t.Fatal("MIG mode turned off under instances")
	}

	// A restarted simulator sees the same instances; Discover reports them
	// with their caps nodes on disk.
	b2, err := sim.New(p, root)
	if err != nil {
		t.Fatal(err)
	}
	ins, err := b2.MIGInstances(ctx, uuid)
	if err != nil || len(ins) != 3 {
		t.Fatalf("instances after restart: %v %+v", err, ins)
	}
	n2, err := b2.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := n2.GPUs[0]
	if !g.MIGEnabled || len(g.MIGDevices) != 3 || g.MIGDevices[0].Profile != "3g.71gb" || g.MIGDevices[0].UUID != big.UUID {
		t.Fatalf("discovered %+v", g)
	}
	f, err := os.Open(b2.MIGMinorsPath())
	if err != nil {
		t.Fatal(err)
	}
	minors, err := cdispec.ParseMIGMinors(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []hardware.MIGInstance{big, small, me} {
		caps, err := minors.CapNodes(g.Minor, in.GI, in.CI)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range caps {
			if _, err := os.Stat(filepath.Join(n2.DevRoot, c)); err != nil {
				t.Errorf("caps node of GI %d: %v", in.GI, err)
			}
		}
	}

	for _, in := range []hardware.MIGInstance{big, small, me, me} { // twice: already gone is fine
		if err := b2.DestroyMIGInstance(ctx, uuid, in.GI, in.CI); err != nil {
			t.Fatal(err)
		}
	}
	if err := b2.SetMIGMode(ctx, uuid, false); err != nil {
		t.Fatal(err)
	}
	if err := b2.SetMIGMode(ctx, uuid, true); err != nil {
		t.Fatal(err)
	}
	next, err := b2.CreateMIGInstance(ctx, uuid, 9, 4)
	if err != nil {
		t.Fatal(err)
	}
	if next.UUID == big.UUID {
		t.Error("a new instance at the same place got the old UUID")
	}
}

func TestDynamicMIGUnsupported(t *testing.T) {
	ctx := context.Background()
	b, n := simtest.Backend(t, a100Profile)
	if _, err := b.MIGProfiles(ctx, n.GPUs[1].UUID); !errors.Is(err, hardware.ErrMIGUnsupported) {
		t.Fatalf("L4: %v", err)
	}
	b, n = simtest.Backend(t, "pcie-4x-l4")
	if _, err := b.MIGProfiles(ctx, n.GPUs[0].UUID); !errors.Is(err, hardware.ErrMIGUnsupported) {
		t.Fatalf("pcie L4: %v", err)
	}
}

// With an injected fault (a busy or broken GPU) MIG mode does not change.
func TestDynamicMIGModeRefusedOnFault(t *testing.T) {
	ctx := context.Background()
	b, n := simtest.Backend(t, "h200")
	uuid := n.GPUs[0].UUID
	if err := sim.UpdateFaults(b.Root(), func(f *sim.Faults) error {
		f.GPUs[uuid] = sim.Fault{Reason: "busy"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetMIGMode(ctx, uuid, true); err == nil {
		t.Fatal("MIG mode set on a faulty GPU")
	}
}
