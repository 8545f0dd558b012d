//go:build cgo && linux

package nvml

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpulet/gpulet/internal/inventory"
)

func (b *Backend) migDevices(h nvml.Device, gpuMemory uint64) ([]inventory.MIGDevice, error) {
	max, err := call(b, "GetMaxMigDeviceCount", h.GetMaxMigDeviceCount)
	if err != nil {
		return nil, err
	}
	var out []inventory.MIGDevice
	var giProfiles map[uint32]giProfile // by GPU instance profile ID
	for i := 0; i < max; i++ {
		m, err := call(b, "GetMigDeviceHandleByIndex", func() (nvml.Device, nvml.Return) { return h.GetMigDeviceHandleByIndex(i) })
		if isReturn(err, nvml.ERROR_NOT_FOUND) || isReturn(err, nvml.ERROR_INVALID_ARGUMENT) {
			continue // an empty slot
		}
		if err != nil {
			return nil, err
		}
		d := inventory.MIGDevice{Index: i}
		if d.UUID, err = call(b, "MIG GetUUID", m.GetUUID); err != nil {
			return nil, err
		}
		if d.GI, err = call(b, "GetGpuInstanceId", m.GetGpuInstanceId); err != nil {
			return nil, err
		}
		if d.CI, err = call(b, "GetComputeInstanceId", m.GetComputeInstanceId); err != nil {
			return nil, err
		}
		attr, err := call(b, "MIG GetAttributes", m.GetAttributes)
		if err != nil {
			return nil, err
		}
		if giProfiles == nil {
			if giProfiles, err = b.giProfileIndex(h); err != nil {
				return nil, err
			}
		}
		suffix, gip, err := b.migGIProfile(h, d.GI, giProfiles)
		if err != nil {
			return nil, err
		}
		d.GIProfile = gip
		d.MemoryBytes = attr.MemorySizeMB << 20
		d.Attributes = &inventory.MIGAttributes{ // for node labels (internal/labels)
			Multiprocessors: int(attr.MultiprocessorCount), GISlices: int(attr.GpuInstanceSliceCount),
			CISlices: int(attr.ComputeInstanceSliceCount), CopyEngines: int(attr.SharedCopyEngineCount),
			Decoders: int(attr.SharedDecoderCount), Encoders: int(attr.SharedEncoderCount),
			JPEGs: int(attr.SharedJpegCount), OFAs: int(attr.SharedOfaCount),
		}
		d.Profile = migProfile(attr.ComputeInstanceSliceCount, attr.GpuInstanceSliceCount, attr.MemorySizeMB, gpuMemory, suffix)
		out = append(out, d)
	}
	return out, nil
}

// giProfile is one GPU-instance profile of a GPU: the profile constant
// (GPU_INSTANCE_PROFILE_1_SLICE_REV1...) that says which attributes (+me,
// +gfx, -me) it has, and NVML's info on it.
type giProfile struct {
	index int
	info  nvml.GpuInstanceProfileInfo
}

// giProfileIndex maps the GPU's GPU-instance profile IDs to their profile
// constants and infos. IDs and constants differ on real GPUs.
func (b *Backend) giProfileIndex(h nvml.Device) (map[uint32]giProfile, error) {
	ids := map[uint32]giProfile{}
	for p := 0; p < nvml.GPU_INSTANCE_PROFILE_COUNT; p++ {
		info, err := call(b, "GetGpuInstanceProfileInfo", func() (nvml.GpuInstanceProfileInfo, nvml.Return) {
			return h.GetGpuInstanceProfileInfo(p)
		})
		if err != nil {
			if hung(err) != nil {
				return nil, err
			}
			continue
		}
		ids[info.Id] = giProfile{index: p, info: info}
	}
	return ids, nil
}

// migGIProfile finds the attribute suffix of MIG instance gi's profile,
// and the profile and placement. It is best effort: reading GPU instances
// may need privileges gpulet lacks, and then the plain name (1g.10gb) is
// used and the profile is unknown (nil).
func (b *Backend) migGIProfile(h nvml.Device, gi int, giProfiles map[uint32]giProfile) (string, *inventory.MIGGIProfile, error) {
	inst, err := call(b, "GetGpuInstanceById", func() (nvml.GpuInstance, nvml.Return) { return h.GetGpuInstanceById(gi) })
	if err != nil {
		return "", nil, hung(err)
	}
	info, err := call(b, "GpuInstance GetInfo", inst.GetInfo)
	if err != nil {
		return "", nil, hung(err)
	}
	p, ok := giProfiles[info.ProfileId]
	if !ok {
		return "", nil, nil
	}
	gip := &inventory.MIGGIProfile{
		ID: int(p.info.Id), PlacementStart: int(info.Placement.Start), PlacementSize: int(info.Placement.Size),
		MemoryBytes: p.info.MemorySizeMB << 20, Multiprocessors: int(p.info.MultiprocessorCount),
		CopyEngines: int(p.info.CopyEngineCount), Decoders: int(p.info.DecoderCount), Encoders: int(p.info.EncoderCount),
		JPEGs: int(p.info.JpegCount), OFAs: int(p.info.OfaCount),
	}
	return migSuffix(p.index), gip, nil
}

// migSuffix is the attribute suffix of a GPU_INSTANCE_PROFILE_* constant.
func migSuffix(p int) string {
	switch p {
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1:
		return "+me"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME:
		return "+me.all"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_2_SLICE_GFX,
		nvml.GPU_INSTANCE_PROFILE_3_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_4_SLICE_GFX:
		return "+gfx"
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_NO_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_NO_ME:
		return "-me"
	}
	return ""
}

// migProfile names a MIG instance the way nvidia-smi and NVIDIA's device
// plugin (go-nvlib) do: 1g.10gb, 1c.2g.20gb, 1g.10gb+me. The memory size is
// the instance's share of the GPU rounded up to an eighth, times the GPU's
// memory in whole GB, so an H200 instance of 16 GiB is a 1g.18gb.
func migProfile(ciSlices, giSlices uint32, memMB, gpuMemory uint64, suffix string) string {
	gb := migMemoryGB(memMB, gpuMemory)
	if ciSlices == giSlices || ciSlices == 0 {
		return fmt.Sprintf("%dg.%dgb%s", giSlices, gb, suffix)
	}
	return fmt.Sprintf("%dc.%dg.%dgb%s", ciSlices, giSlices, gb, suffix)
}

func migMemoryGB(memMB, gpuMemory uint64) uint64 {
	return inventory.MIGMemoryGB(memMB<<20, gpuMemory)
}

// migParent returns the UUID of the GPU holding MIG device uuid, as of the
// last discovery, or "" when uuid is not a known MIG device.
func (b *Backend) migParent(uuid string) string {
	b.mu.Lock()
	node := b.node
	b.mu.Unlock()
	if node == nil {
		return ""
	}
	for _, g := range node.GPUs {
		for _, m := range g.MIGDevices {
			if m.UUID == uuid {
				return g.UUID
			}
		}
	}
	return ""
}
