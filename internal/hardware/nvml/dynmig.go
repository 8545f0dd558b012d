//go:build cgo && linux

package nvml

// Dynamic MIG through NVML: GPU-instance profiles and their possible
// placements, MIG mode, and one instance (GPU instance at a placement plus
// a compute instance spanning it) created and destroyed on request. Every
// NVML call runs under CallTimeout (guard.go).

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpulet/gpulet/internal/hardware"
)

var _ hardware.DynamicMIG = (*Backend)(nil)

func (b *Backend) handle(uuid string) (nvml.Device, error) {
	return call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(uuid) })
}

// MIGProfiles lists the GPU's GPU-instance profiles with their possible
// placements; profiles the GPU does not have are skipped.
func (b *Backend) MIGProfiles(_ context.Context, uuid string) ([]hardware.MIGProfile, error) {
	h, err := b.handle(uuid)
	if err != nil {
		return nil, err
	}
	if _, _, err := b.migMode(h); err != nil {
		return nil, err
	}
	mem, err := call(b, "GetMemoryInfo", h.GetMemoryInfo)
	if err != nil {
		return nil, err
	}
	idx, err := b.giProfileIndex(h)
	if err != nil {
		return nil, err
	}
	var out []hardware.MIGProfile
	for _, gp := range idx { // map order: SortMIGProfiles below orders fully
		info := gp.info
		places, err := call(b, "GetGpuInstancePossiblePlacements", func() ([]nvml.GpuInstancePlacement, nvml.Return) {
			return h.GetGpuInstancePossiblePlacements(&info)
		})
		if err != nil {
			return nil, fmt.Errorf("GPU %s, GPU-instance profile %d: %w", uuid, info.Id, err)
		}
		mp := hardware.MIGProfile{
			Name: migProfile(info.SliceCount, info.SliceCount, info.MemorySizeMB, mem.Total, migSuffix(gp.index)),
			ID:   int(info.Id), ComputeSlices: int(info.SliceCount), MemoryBytes: info.MemorySizeMB << 20,
			Multiprocessors: int(info.MultiprocessorCount), CopyEngines: int(info.CopyEngineCount),
			Decoders: int(info.DecoderCount), Encoders: int(info.EncoderCount), JPEGs: int(info.JpegCount), OFAs: int(info.OfaCount),
		}
		for _, pl := range places {
			mp.Placements = append(mp.Placements, int(pl.Start))
			mp.MemorySlices = int(pl.Size)
		}
		slices.Sort(mp.Placements)
		out = append(out, mp)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("GPU %s has no GPU-instance profiles: %w", uuid, hardware.ErrMIGUnsupported)
	}
	hardware.SortMIGProfiles(out)
	return out, nil
}

// migMode reads the current and pending MIG mode; a GPU without MIG gives
// ErrMIGUnsupported.
func (b *Backend) migMode(h nvml.Device) (current, pending bool, err error) {
	type modes struct{ cur, pend int }
	m, err := call(b, "GetMigMode", func() (modes, nvml.Return) {
		c, p, ret := h.GetMigMode()
		return modes{c, p}, ret
	})
	if unsupported(err) {
		return false, false, fmt.Errorf("%v: %w", err, hardware.ErrMIGUnsupported)
	}
	if err != nil {
		return false, false, err
	}
	return m.cur == nvml.DEVICE_MIG_ENABLE, m.pend == nvml.DEVICE_MIG_ENABLE, nil
}

// MIGMode reports the current MIG mode.
func (b *Backend) MIGMode(_ context.Context, uuid string) (bool, error) {
	h, err := b.handle(uuid)
	if err != nil {
		return false, err
	}
	cur, _, err := b.migMode(h)
	return cur, err
}

// SetMIGMode switches MIG mode and checks that it took effect now: a
// change left pending (the GPU needs a reset, or a process holds it) is an
// error that says so, and the pending change is undone.
func (b *Backend) SetMIGMode(_ context.Context, uuid string, enabled bool) error {
	h, err := b.handle(uuid)
	if err != nil {
		return err
	}
	mode := nvml.DEVICE_MIG_DISABLE
	if enabled {
		mode = nvml.DEVICE_MIG_ENABLE
	}
	if _, err := call(b, "SetMigMode", func() (nvml.Return, nvml.Return) { return h.SetMigMode(mode) }); err != nil {
		if isReturn(err, nvml.ERROR_IN_USE) {
			return fmt.Errorf("GPU %s is in use (a process or MIG instance holds it), MIG mode cannot change: %w", uuid, err)
		}
		return fmt.Errorf("GPU %s: %w", uuid, err)
	}
	cur, _, err := b.migMode(h)
	if err != nil {
		return err
	}
	if cur != enabled {
		undo := nvml.DEVICE_MIG_ENABLE + nvml.DEVICE_MIG_DISABLE - mode
		_, _ = call(b, "SetMigMode", func() (nvml.Return, nvml.Return) { return h.SetMigMode(undo) })
		return fmt.Errorf("GPU %s: MIG mode change is pending a GPU reset (processes on the GPU, or a GPU that needs a reset to switch); stop them or reset the GPU", uuid)
	}
	return nil
}

// giProfileInfo finds the profile info of a GPU-instance profile ID.
func (b *Backend) giProfileInfo(h nvml.Device, id int) (nvml.GpuInstanceProfileInfo, error) {
	idx, err := b.giProfileIndex(h)
	if err != nil {
		return nvml.GpuInstanceProfileInfo{}, err
	}
	p, ok := idx[uint32(id)]
	if !ok {
		return nvml.GpuInstanceProfileInfo{}, fmt.Errorf("the GPU has no GPU-instance profile %d", id)
	}
	return p.info, nil
}

// fullCIProfile finds the compute-instance profile that spans a GPU
// instance of slices compute slices.
func (b *Backend) fullCIProfile(gi nvml.GpuInstance, slices uint32) (nvml.ComputeInstanceProfileInfo, error) {
	for p := nvml.COMPUTE_INSTANCE_PROFILE_COUNT - 1; p >= 0; p-- {
		info, err := call(b, "GetComputeInstanceProfileInfo", func() (nvml.ComputeInstanceProfileInfo, nvml.Return) {
			return gi.GetComputeInstanceProfileInfo(p, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
		})
		if err != nil {
			if hung(err) != nil {
				return info, err
			}
			continue
		}
		if info.SliceCount == slices {
			return info, nil
		}
	}
	return nvml.ComputeInstanceProfileInfo{}, fmt.Errorf("no compute-instance profile of %d slices", slices)
}

// CreateMIGInstance creates the GPU instance at the placement and one
// compute instance over all of it; if the compute instance fails, the GPU
// instance is destroyed again.
func (b *Backend) CreateMIGInstance(_ context.Context, uuid string, profileID, start int) (hardware.MIGInstance, error) {
	var out hardware.MIGInstance
	h, err := b.handle(uuid)
	if err != nil {
		return out, err
	}
	info, err := b.giProfileInfo(h, profileID)
	if err != nil {
		return out, fmt.Errorf("GPU %s: %w", uuid, err)
	}
	places, err := call(b, "GetGpuInstancePossiblePlacements", func() ([]nvml.GpuInstancePlacement, nvml.Return) {
		return h.GetGpuInstancePossiblePlacements(&info)
	})
	if err != nil {
		return out, fmt.Errorf("GPU %s: %w", uuid, err)
	}
	i := slices.IndexFunc(places, func(p nvml.GpuInstancePlacement) bool { return int(p.Start) == start })
	if i < 0 {
		return out, fmt.Errorf("GPU %s: GPU-instance profile %d cannot start at memory slice %d", uuid, profileID, start)
	}
	place := places[i]
	gi, err := call(b, "CreateGpuInstanceWithPlacement", func() (nvml.GpuInstance, nvml.Return) {
		return h.CreateGpuInstanceWithPlacement(&info, &place)
	})
	if err != nil {
		return out, fmt.Errorf("GPU %s: create GPU instance of profile %d at %d: %w", uuid, profileID, start, err)
	}
	giInfo, err := call(b, "GpuInstance GetInfo", gi.GetInfo)
	if err == nil {
		var ci nvml.ComputeInstance
		var ciProf nvml.ComputeInstanceProfileInfo
		if ciProf, err = b.fullCIProfile(gi, info.SliceCount); err == nil {
			ci, err = call(b, "CreateComputeInstance", func() (nvml.ComputeInstance, nvml.Return) { return gi.CreateComputeInstance(&ciProf) })
		}
		var ciInfo nvml.ComputeInstanceInfo
		if err == nil {
			if ciInfo, err = call(b, "ComputeInstance GetInfo", ci.GetInfo); err != nil {
				_ = b.do("ComputeInstance Destroy", ci.Destroy)
			}
		}
		if err == nil {
			out = hardware.MIGInstance{ProfileID: profileID, Start: int(giInfo.Placement.Start), Size: int(giInfo.Placement.Size),
				GI: int(giInfo.Id), CI: int(ciInfo.Id)}
			out.UUID, _ = b.migUUID(h, out.GI, out.CI)
			return out, nil
		}
	}
	if derr := b.do("GpuInstance Destroy", gi.Destroy); derr != nil {
		err = errors.Join(err, fmt.Errorf("and the GPU instance it leaves could not be destroyed: %w", derr))
	}
	return out, fmt.Errorf("GPU %s: create compute instance in the new GPU instance: %w", uuid, err)
}

// migUUID finds the UUID of MIG device gi/ci; "" when NVML does not list
// it (best effort: claims name instances by GI and CI).
func (b *Backend) migUUID(h nvml.Device, gi, ci int) (string, error) {
	max, err := call(b, "GetMaxMigDeviceCount", h.GetMaxMigDeviceCount)
	if err != nil {
		return "", err
	}
	for i := 0; i < max; i++ {
		m, err := call(b, "GetMigDeviceHandleByIndex", func() (nvml.Device, nvml.Return) { return h.GetMigDeviceHandleByIndex(i) })
		if err != nil {
			if hung(err) != nil {
				return "", err
			}
			continue
		}
		g, err1 := call(b, "GetGpuInstanceId", m.GetGpuInstanceId)
		c, err2 := call(b, "GetComputeInstanceId", m.GetComputeInstanceId)
		if err1 == nil && err2 == nil && g == gi && c == ci {
			return call(b, "MIG GetUUID", m.GetUUID)
		}
	}
	return "", nil
}

// instance is one live GPU instance with its compute instances.
type instance struct {
	gi   nvml.GpuInstance
	info nvml.GpuInstanceInfo
	cis  []nvml.ComputeInstance
	ci   []nvml.ComputeInstanceInfo
}

// instances lists the GPU's GPU instances and their compute instances, by
// profile (NVML has no "all instances" call).
func (b *Backend) instances(h nvml.Device) ([]instance, error) {
	idx, err := b.giProfileIndex(h)
	if err != nil {
		return nil, err
	}
	var out []instance
	for _, id := range slices.Sorted(maps.Keys(idx)) {
		info := idx[id].info
		gis, err := call(b, "GetGpuInstances", func() ([]nvml.GpuInstance, nvml.Return) { return h.GetGpuInstances(&info) })
		if err != nil {
			return nil, err
		}
		for _, gi := range gis {
			in := instance{gi: gi}
			if in.info, err = call(b, "GpuInstance GetInfo", gi.GetInfo); err != nil {
				return nil, err
			}
			for p := 0; p < nvml.COMPUTE_INSTANCE_PROFILE_COUNT; p++ {
				ciProf, err := call(b, "GetComputeInstanceProfileInfo", func() (nvml.ComputeInstanceProfileInfo, nvml.Return) {
					return gi.GetComputeInstanceProfileInfo(p, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
				})
				if err != nil {
					if hung(err) != nil {
						return nil, err
					}
					continue
				}
				cis, err := call(b, "GetComputeInstances", func() ([]nvml.ComputeInstance, nvml.Return) { return gi.GetComputeInstances(&ciProf) })
				if err != nil {
					return nil, err
				}
				for _, ci := range cis {
					ciInfo, err := call(b, "ComputeInstance GetInfo", ci.GetInfo)
					if err != nil {
						return nil, err
					}
					in.cis, in.ci = append(in.cis, ci), append(in.ci, ciInfo)
				}
			}
			out = append(out, in)
		}
	}
	return out, nil
}

// DestroyMIGInstance destroys compute instance ci of GPU instance gi and
// then the GPU instance, if no other compute instance is left in it; ci -1
// destroys a GPU instance that has no compute instance.
func (b *Backend) DestroyMIGInstance(_ context.Context, uuid string, gi, ci int) error {
	h, err := b.handle(uuid)
	if err != nil {
		return err
	}
	all, err := b.instances(h)
	if err != nil {
		return fmt.Errorf("GPU %s: list MIG instances: %w", uuid, err)
	}
	for _, in := range all {
		if int(in.info.Id) != gi {
			continue
		}
		left := 0
		for k, c := range in.ci {
			if ci < 0 || int(c.Id) != ci {
				left++
				continue
			}
			if err := b.do("ComputeInstance Destroy", in.cis[k].Destroy); err != nil {
				return fmt.Errorf("GPU %s: destroy compute instance %d of GPU instance %d: %w", uuid, ci, gi, err)
			}
		}
		if left > 0 {
			return nil
		}
		if err := b.do("GpuInstance Destroy", in.gi.Destroy); err != nil {
			return fmt.Errorf("GPU %s: destroy GPU instance %d: %w", uuid, gi, err)
		}
	}
	return nil
}

// MIGInstances lists the GPU's MIG instances, one per compute instance.
func (b *Backend) MIGInstances(_ context.Context, uuid string) ([]hardware.MIGInstance, error) {
	h, err := b.handle(uuid)
	if err != nil {
		return nil, err
	}
	if cur, _, err := b.migMode(h); err != nil || !cur {
		return nil, err
	}
	all, err := b.instances(h)
	if err != nil {
		return nil, fmt.Errorf("GPU %s: list MIG instances: %w", uuid, err)
	}
	var out []hardware.MIGInstance
	for _, in := range all {
		if len(in.ci) == 0 { // a crash between the two creates leaves this
			out = append(out, hardware.MIGInstance{ProfileID: int(in.info.ProfileId), Start: int(in.info.Placement.Start),
				Size: int(in.info.Placement.Size), GI: int(in.info.Id), CI: -1})
		}
		for _, c := range in.ci {
			m := hardware.MIGInstance{ProfileID: int(in.info.ProfileId), Start: int(in.info.Placement.Start), Size: int(in.info.Placement.Size),
				GI: int(in.info.Id), CI: int(c.Id)}
			m.UUID, _ = b.migUUID(h, m.GI, m.CI)
			out = append(out, m)
		}
	}
	return out, nil
}
