//go:build cgo && linux

package nvml

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/gpulet/gpulet/internal/hardware"
)

// listMIGHandles makes d list its live compute instances as MIG device
// handles, as the driver does (go-nvml's mock server creates instances but
// has no MIG device handles).
func listMIGHandles(d *server.Device) {
	handles := func() []*mock.Device {
		d.RLock()
		defer d.RUnlock()
		var out []*mock.Device
		for gi := range d.GpuInstances {
			gi.RLock()
			for ci := range gi.ComputeInstances {
				giID, ciID := int(gi.Info.Id), int(ci.Info.Id)
				uuid := fmt.Sprintf("MIG-%s-%d-%d", strings.TrimPrefix(d.UUID, "GPU-"), giID, ciID)
				out = append(out, &mock.Device{
					GetUUIDFunc:              func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
					GetGpuInstanceIdFunc:     func() (int, nvml.Return) { return giID, nvml.SUCCESS },
					GetComputeInstanceIdFunc: func() (int, nvml.Return) { return ciID, nvml.SUCCESS },
				})
			}
			gi.RUnlock()
		}
		return out
	}
	d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 7, nvml.SUCCESS }
	d.GetMigDeviceHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		hs := handles()
		if i >= len(hs) {
			return nil, nvml.ERROR_NOT_FOUND
		}
		return hs[i], nvml.SUCCESS
	}
}

// The NVML implementation on go-nvml's A100, H100 and H200 mock servers:
// profiles and placements are NVML's, an instance is created at the asked
// placement with a compute instance spanning it, listed, and destroyed
// with nothing left.
func TestDynamicMIGOnMockServers(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		srv   *server.Server
		names []string
	}{
		{"dgxa100", dgxa100.New(), []string{"1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"}},
		{"dgxh100", dgxh100.New(), []string{"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"}},
		// The mock's H200 sizes are nominal (18432 MiB for 1g.18gb, over an
		// eighth of its 144384 MiB), so NVML's naming rule calls them one
		// step bigger than a real H200's (16.5 GiB); the simulator's table
		// has the real sizes.
		{"dgxh200", dgxh200.New(), []string{"1g.35gb", "1g.35gb+me", "1g.35gb", "2g.35gb", "3g.88gb", "4g.88gb", "7g.141gb"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.srv)
			d := f.devs[0]
			listMIGHandles(d)
			uuid := d.UUID
			ps, err := f.b.MIGProfiles(ctx, uuid)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, p := range ps {
				names = append(names, p.Name)
				want := d.Config.MIGProfiles.GpuInstancePlacements[p.ID]
				var starts []int
				for _, pl := range want {
					starts = append(starts, int(pl.Start))
				}
				if !slices.Equal(p.Placements, starts) || p.MemorySlices != int(want[0].Size) {
					t.Errorf("%s: placements %v of %d, NVML has %v", p.Name, p.Placements, p.MemorySlices, want)
				}
			}
			if !slices.Equal(names, tc.names) {
				t.Errorf("profiles %v, want %v", names, tc.names)
			}
			three := ps[slices.IndexFunc(ps, func(p hardware.MIGProfile) bool { return strings.HasPrefix(p.Name, "3g.") })]
			start := three.Placements[len(three.Placements)-1]

			if err := f.b.SetMIGMode(ctx, uuid, true); err != nil {
				t.Fatal(err)
			}
			if on, err := f.b.MIGMode(ctx, uuid); err != nil || !on {
				t.Fatalf("MIG mode after enabling: %v %v", on, err)
			}
			in, err := f.b.CreateMIGInstance(ctx, uuid, three.ID, start)
			if err != nil {
				t.Fatal(err)
			}
			if in.ProfileID != three.ID || in.Start != start || in.UUID != fmt.Sprintf("MIG-%s-%d-%d", strings.TrimPrefix(uuid, "GPU-"), in.GI, in.CI) {
				t.Fatalf("created %+v", in)
			}
			list, err := f.b.MIGInstances(ctx, uuid)
			if err != nil || len(list) != 1 || list[0] != in {
				t.Fatalf("instances %+v %v, want [%+v]", list, err, in)
			}
			if _, err := f.b.CreateMIGInstance(ctx, uuid, three.ID, 5); err == nil {
				t.Error("created at a placement NVML does not list")
			}
			if err := f.b.DestroyMIGInstance(ctx, uuid, in.GI, in.CI); err != nil {
				t.Fatal(err)
			}
			if err := f.b.DestroyMIGInstance(ctx, uuid, in.GI, in.CI); err != nil {
				t.Fatalf("destroying a gone instance: %v", err)
			}
			if n := len(d.GpuInstances); n != 0 {
				t.Fatalf("%d GPU instances left", n)
			}
			if err := f.b.SetMIGMode(ctx, uuid, false); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A compute instance that cannot be created takes its GPU instance with
// it; a GPU instance left alone (a crash between the two) is listed with
// CI -1 and destroyed as such.
func TestDynamicMIGRollback(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, dgxh100.New())
	d := f.devs[0]
	listMIGHandles(d)
	if err := f.b.SetMIGMode(ctx, d.UUID, true); err != nil {
		t.Fatal(err)
	}
	create := d.CreateGpuInstanceWithPlacementFunc
	d.CreateGpuInstanceWithPlacementFunc = func(info *nvml.GpuInstanceProfileInfo, p *nvml.GpuInstancePlacement) (nvml.GpuInstance, nvml.Return) {
		gi, ret := create(info, p)
		gi.(*server.GpuInstance).CreateComputeInstanceFunc = func(*nvml.ComputeInstanceProfileInfo) (nvml.ComputeInstance, nvml.Return) {
			return nil, nvml.ERROR_INSUFFICIENT_RESOURCES
		}
		return gi, ret
	}
	if _, err := f.b.CreateMIGInstance(ctx, d.UUID, nvml.GPU_INSTANCE_PROFILE_2_SLICE, 2); err == nil {
		t.Fatal("created without a compute instance")
	}
	if n := len(d.GpuInstances); n != 0 {
		t.Fatalf("%d GPU instances left after a failed create", n)
	}

	// A bare GPU instance, as a crash would leave it.
	info, _ := d.GetGpuInstanceProfileInfo(nvml.GPU_INSTANCE_PROFILE_1_SLICE)
	if _, ret := create(&info, &nvml.GpuInstancePlacement{Start: 3, Size: 1}); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	list, err := f.b.MIGInstances(ctx, d.UUID)
	if err != nil || len(list) != 1 || list[0].CI != -1 || list[0].Start != 3 {
		t.Fatalf("bare GPU instance listed as %+v (%v)", list, err)
	}
	if err := f.b.DestroyMIGInstance(ctx, d.UUID, list[0].GI, -1); err != nil {
		t.Fatal(err)
	}
	if n := len(d.GpuInstances); n != 0 {
		t.Fatalf("%d GPU instances left", n)
	}
}

// A GPU without MIG says so; a create that never returns gives an error
// within the call deadline instead of a hang.
func TestDynamicMIGUnsupportedAndDeadline(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, dgxh100.New())
	d := f.devs[0]
	d.GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED }
	if _, err := f.b.MIGProfiles(ctx, d.UUID); !errors.Is(err, hardware.ErrMIGUnsupported) {
		t.Fatalf("no MIG: %v", err)
	}

	setTimeouts(t, 50*time.Millisecond)
	f = newFixture(t, dgxh100.New())
	d = f.devs[0]
	if err := f.b.SetMIGMode(ctx, d.UUID, true); err != nil {
		t.Fatal(err)
	}
	blk := newBlocker(t)
	d.CreateGpuInstanceWithPlacementFunc = func(*nvml.GpuInstanceProfileInfo, *nvml.GpuInstancePlacement) (nvml.GpuInstance, nvml.Return) {
		blk.wait()
		return nil, nvml.ERROR_UNKNOWN
	}
	start := time.Now()
	_, err := f.b.CreateMIGInstance(ctx, d.UUID, nvml.GPU_INSTANCE_PROFILE_1_SLICE, 0)
	if !errors.Is(err, errWedged) || time.Since(start) > 2*time.Second {
		t.Fatalf("hung create: %v after %s", err, time.Since(start))
	}
	blk.release()
	waitUnwedged(t, f.b)
}
