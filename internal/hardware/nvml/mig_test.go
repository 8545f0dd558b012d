//go:build cgo && linux

package nvml

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/gpulet/gpulet/internal/inventory"
)

// migSlot is one MIG device of the fixture: a GPU instance of profile gi
// with a compute instance of ciSlices.
type migSlot struct {
	giProfile int
	ciSlices  uint32
}

// enableMIG turns MIG on for d and carves slots (nil: an empty slot). The
// GPU-instance profile IDs are offset from the profile constants, as on real
// GPUs. It returns the MIG devices in slot order.
func enableMIG(t *testing.T, d *server.Device, slots []*migSlot) []*mock.Device {
	t.Helper()
	orig := d.GetGpuInstanceProfileInfoFunc
	d.GetGpuInstanceProfileInfoFunc = func(p int) (nvml.GpuInstanceProfileInfo, nvml.Return) {
		info, ret := orig(p)
		info.Id += 19
		return info, ret
	}
	if ret, _ := d.SetMigMode(nvml.DEVICE_MIG_ENABLE); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	var devs []*mock.Device
	handles := map[int]*mock.Device{}
	cis := map[int]int{}  // GPU instance -> compute instances so far
	giOf := map[int]int{} // profile -> the GPU instance of a multi-CI profile
	for slot, s := range slots {
		if s == nil {
			continue
		}
		info, ret := d.GetGpuInstanceProfileInfo(s.giProfile)
		if ret != nvml.SUCCESS {
			t.Fatalf("profile %d: %v", s.giProfile, ret)
		}
		giID, shared := giOf[s.giProfile]
		if !shared || s.ciSlices == info.SliceCount {
			gi, ret := d.CreateGpuInstance(&info)
			if ret != nvml.SUCCESS {
				t.Fatal(ret)
			}
			gii, _ := gi.GetInfo()
			giID = int(gii.Id)
			if s.ciSlices != info.SliceCount {
				giOf[s.giProfile] = giID
			}
		}
		ci := cis[giID]
		cis[giID]++
		attr := nvml.DeviceAttributes{GpuInstanceSliceCount: info.SliceCount, ComputeInstanceSliceCount: s.ciSlices, MemorySizeMB: info.MemorySizeMB}
		uuid := fmt.Sprintf("MIG-%s-%d", strings.TrimPrefix(d.UUID, "GPU-"), slot)
		m := &mock.Device{
			GetUUIDFunc:              func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
			GetGpuInstanceIdFunc:     func() (int, nvml.Return) { return giID, nvml.SUCCESS },
			GetComputeInstanceIdFunc: func() (int, nvml.Return) { return ci, nvml.SUCCESS },
			GetAttributesFunc:        func() (nvml.DeviceAttributes, nvml.Return) { return attr, nvml.SUCCESS },
			GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
				return nvml.Memory{Total: info.MemorySizeMB << 20}, nvml.SUCCESS
			},
		}
		handles[slot] = m
		devs = append(devs, m)
	}
	d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return len(slots), nvml.SUCCESS }
	d.GetMigDeviceHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if m, ok := handles[i]; ok {
			return m, nvml.SUCCESS
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	d.GetGpuInstanceByIdFunc = func(id int) (nvml.GpuInstance, nvml.Return) {
		d.RLock()
		defer d.RUnlock()
		for gi := range d.GpuInstances {
			if int(gi.Info.Id) == id {
				return gi, nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	return devs
}

// withMIGHandles lets DeviceGetHandleByUUID find MIG devices too.
func withMIGHandles(f *fixture, migs []*mock.Device) {
	orig := f.srv.DeviceGetHandleByUUIDFunc
	f.srv.DeviceGetHandleByUUIDFunc = func(uuid string) (nvml.Device, nvml.Return) {
		for _, m := range migs {
			if u, _ := m.GetUUID(); u == uuid {
				return m, nvml.SUCCESS
			}
		}
		return orig(uuid)
	}
}

var h100Slots = []*migSlot{
	{nvml.GPU_INSTANCE_PROFILE_1_SLICE, 1},
	nil,
	{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, 1},
	{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2, 1},
	{nvml.GPU_INSTANCE_PROFILE_3_SLICE, 1},
	{nvml.GPU_INSTANCE_PROFILE_3_SLICE, 2},
	nil,
}

func TestDiscoverMIG(t *testing.T) {
	f := newFixture(t, dgxh100.NewWithGPUs(gpus.H100_SXM5_80GB, gpus.H100_SXM5_80GB, gpus.H100_SXM5_80GB))
	enableMIG(t, f.devs[0], h100Slots)
	f.devs[1].GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED }
	// GPU 2 runs MIG but gpulet may not read its GPU instances: the
	// profile keeps its size but loses the +me attribute.
	enableMIG(t, f.devs[2], []*migSlot{{nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, 1}})
	f.devs[2].GetGpuInstanceByIdFunc = func(int) (nvml.GpuInstance, nvml.Return) { return nil, nvml.ERROR_NO_PERMISSION }

	n, err := f.b.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	g := n.GPUs[0]
	if !g.MIGCapable || !g.MIGEnabled {
		t.Fatalf("GPU 0: MIGCapable %v MIGEnabled %v, want both", g.MIGCapable, g.MIGEnabled)
	}
	id := func(slot int) string { return fmt.Sprintf("MIG-%s-%d", strings.TrimPrefix(g.UUID, "GPU-"), slot) }
	// Index is NVML's handle index: slot 1 is empty, and the gap stays.
	want := []inventory.MIGDevice{
		{UUID: id(0), Index: 0, Profile: "1g.10gb", GI: 0, CI: 0, MemoryBytes: 10 << 30},
		{UUID: id(2), Index: 2, Profile: "1g.10gb+me", GI: 1, CI: 0, MemoryBytes: 10 << 30},
		{UUID: id(3), Index: 3, Profile: "1g.20gb", GI: 2, CI: 0, MemoryBytes: 20 << 30},
		{UUID: id(4), Index: 4, Profile: "1c.3g.40gb", GI: 3, CI: 0, MemoryBytes: 40 << 30},
		{UUID: id(5), Index: 5, Profile: "2c.3g.40gb", GI: 3, CI: 1, MemoryBytes: 40 << 30},
	}
	// Attributes are NVML's, passed through for node labels: check their
	// GPU-instance slices, then compare the rest.
	got := slices.Clone(g.MIGDevices)
	for i, m := range got {
		if m.Attributes == nil || fmt.Sprintf("%dg.", m.Attributes.GISlices) != m.Profile[strings.Index(m.Profile, "g.")-1:strings.Index(m.Profile, "g.")+2] {
			t.Errorf("MIG %s: attributes %+v do not match its profile", m.Profile, m.Attributes)
		}
		got[i].Attributes = nil
		// The GPU-instance profile (ID and engines) and placement come
		// from the GPU instance, as NVIDIA's DRA driver reads them (the mock
		// places every instance at 0).
		slot := h100Slots[m.Index]
		info, _ := f.devs[0].GetGpuInstanceProfileInfo(slot.giProfile)
		if gp := m.GIProfile; gp == nil || gp.ID != slot.giProfile+19 || gp.Multiprocessors != int(info.MultiprocessorCount) ||
			gp.MemoryBytes != info.MemorySizeMB<<20 {
			t.Errorf("MIG %s: GI profile %+v, want ID %d, %d multiprocessors, %d MiB", m.Profile, gp, slot.giProfile+19, info.MultiprocessorCount, info.MemorySizeMB)
		}
		got[i].GIProfile = nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GPU 0 MIG devices:\n got %+v\nwant %+v", got, want)
	}
	if g := n.GPUs[1]; g.MIGCapable || g.MIGEnabled || len(g.MIGDevices) != 0 {
		t.Errorf("GPU 1 without MIG support: MIGCapable %v MIGEnabled %v %d MIG devices", g.MIGCapable, g.MIGEnabled, len(g.MIGDevices))
	}
	if g := n.GPUs[2]; len(g.MIGDevices) != 1 || g.MIGDevices[0].Profile != "1g.10gb" || g.MIGDevices[0].GIProfile != nil {
		t.Errorf("GPU 2 MIG devices = %+v, want one 1g.10gb", g.MIGDevices)
	}
	if err := n.Validate(); err != nil {
		t.Error(err)
	}
}

func TestMIGProfileNames(t *testing.T) {
	const a100, h100, h200 = 40536 << 20, 81559 << 20, 143771 << 20 // MiB as the GPUs report them
	for _, tc := range []struct {
		ci, gi  uint32
		memMB   uint64
		gpu     uint64
		suffix  string
		want    string
		comment string
	}{
		{1, 1, 4864, a100, "", "1g.5gb", "A100 40GB"},
		{2, 2, 9984, a100, "", "2g.10gb", ""},
		{3, 3, 20096, a100, "", "3g.20gb", ""},
		{7, 7, 40192, a100, "", "7g.40gb", ""},
		{1, 1, 9856, h100, "", "1g.10gb", "H100 80GB"},
		{1, 1, 9856, h100, "+me", "1g.10gb+me", ""},
		{1, 1, 19968, h100, "", "1g.20gb", ""},
		{1, 2, 19968, h100, "", "1c.2g.20gb", ""},
		{3, 3, 40192, h100, "", "3g.40gb", ""},
		{7, 7, 80384, h100, "", "7g.80gb", "a plain round-up says 79gb"},
		{1, 1, 16384, h200, "", "1g.18gb", "H200: a plain round-up says 16gb"},
		{1, 1, 32768, h200, "", "1g.35gb", ""},
		{3, 3, 65536, h200, "", "3g.71gb", ""},
		{7, 7, 130816, h200, "", "7g.141gb", ""},
	} {
		if got := migProfile(tc.ci, tc.gi, tc.memMB, tc.gpu, tc.suffix); got != tc.want {
			t.Errorf("%d MiB on a %d MiB GPU (%s) = %q, want %q", tc.memMB, tc.gpu>>20, tc.comment, got, tc.want)
		}
	}
}
