//go:build cgo && linux

package nvml

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"

	"github.com/gpulet/gpulet/internal/inventory"
)

func TestDiscoverDGXH100(t *testing.T) {
	f := newFixture(t, dgxh100.New())
	n, err := f.b.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n.Backend != "nvml" || n.DriverVersion != "550.54.15" || n.CUDADriverVersion != "12.4" {
		t.Errorf("node = backend %q driver %q CUDA %q; want nvml, 550.54.15, 12.4", n.Backend, n.DriverVersion, n.CUDADriverVersion)
	}
	if n.DevRoot != filepath.Join(f.root, "dev") {
		t.Errorf("DevRoot = %q, want %q", n.DevRoot, filepath.Join(f.root, "dev"))
	}
	if len(n.GPUs) != 8 {
		t.Fatalf("%d GPUs, want 8", len(n.GPUs))
	}
	for i, g := range n.GPUs {
		d := f.devs[i]
		want := inventory.GPU{
			UUID: d.UUID, Index: i, Minor: (i * 3) % 8, Name: "NVIDIA H100 80GB HBM3", Architecture: "Hopper",
			MemoryBytes: 80 << 30, ComputeCapability: "9.0", PCIBusID: fmt.Sprintf("00000000:%02X:00.0", dgxBus[i]),
			NUMANode: i / 4, Serial: fmt.Sprintf("165212300%04d", i), MIGCapable: true,
			Brand: brandName(d.Config.Brand), AddressingMode: "None",
		}
		if !reflect.DeepEqual(g, want) {
			t.Errorf("GPU %d:\n got %+v\nwant %+v", i, g, want)
		}
	}
	for i := range n.GPUs {
		for j := range n.GPUs {
			if i == j {
				continue
			}
			if want := (inventory.Link{PCIe: wantPCIe(i, j)}); n.Links[i][j] != want {
				t.Errorf("link %d-%d = %+v, want %+v", i, j, n.Links[i][j], want)
			}
		}
	}
	if err := n.Validate(); err != nil {
		t.Error(err)
	}
	// Topology is read once per pair per discovery, never per lookup.
	calls := 0
	for _, d := range f.devs {
		calls += len(d.GetTopologyCommonAncestorCalls())
	}
	if calls != 8*7/2 {
		t.Errorf("%d GetTopologyCommonAncestor calls for 8 GPUs, want 28 (one per pair)", calls)
	}
}

func TestDiscoverCUDAVersion(t *testing.T) {
	for _, tc := range []struct {
		v    int
		want string
	}{{12040, "12.4"}, {13000, "13.0"}, {12090, "12.9"}, {11080, "11.8"}, {13010, "13.1"}} {
		f := newFixture(t, dgxh100.NewWithGPUs(gpus.H100_SXM5_80GB))
		f.srv.CudaDriverVersion = tc.v
		n, err := f.b.Discover(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n.CUDADriverVersion != tc.want {
			t.Errorf("CUDA driver version %d reads as %q, want %q", tc.v, n.CUDADriverVersion, tc.want)
		}
	}
}

func TestDiscoverNUMA(t *testing.T) {
	for _, tc := range []struct {
		name     string
		domain   uint32
		bus      uint32
		nvmlNode int
		nvmlRet  nvml.Return
		sysDir   string // the sysfs folder holding numa_node; "" for none
		sysValue string
		want     int
	}{
		{"NVML knows", 0, 0x9a, 1, nvml.SUCCESS, "0000:9a:00.0", "0", 1},
		{"NVML not supported, sysfs knows", 0, 0x9a, 0, nvml.ERROR_NOT_SUPPORTED, "0000:9a:00.0", "1\n", 1},
		{"old driver without the call", 0, 0x18, 0, nvml.ERROR_FUNCTION_NOT_FOUND, "0000:18:00.0", "0\n", 0},
		{"NVML says -1, sysfs knows", 0, 0xdb, -1, nvml.SUCCESS, "0000:db:00.0", "1", 1},
		{"neither knows", 0, 0x9a, 0, nvml.ERROR_NOT_SUPPORTED, "", "", -1},
		{"sysfs says -1", 0, 0x9a, 0, nvml.ERROR_NOT_SUPPORTED, "0000:9a:00.0", "-1\n", -1},
		{"sysfs garbage", 0, 0x9a, 0, nvml.ERROR_NOT_SUPPORTED, "0000:9a:00.0", "x\n", -1},
		{"Hyper-V domain", 0x4b3d, 0x00, 0, nvml.ERROR_NOT_SUPPORTED, "4b3d:00:00.0", "0", 0},
		{"VMD domain wider than 4 digits", 0x10000, 0xe1, 0, nvml.ERROR_NOT_SUPPORTED, "10000:e1:00.0", "2", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, dgxh100.NewWithGPUs(gpus.H100_SXM5_80GB))
			pci := pciInfo(tc.domain, tc.bus)
			f.devs[0].GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) { return pci, nvml.SUCCESS }
			f.devs[0].GetNumaNodeIdFunc = func() (int, nvml.Return) { return tc.nvmlNode, tc.nvmlRet }
			if tc.sysDir != "" {
				dir := filepath.Join(f.root, "sys/bus/pci/devices", tc.sysDir)
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "numa_node"), []byte(tc.sysValue), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			n, err := f.b.Discover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := n.GPUs[0].NUMANode; got != tc.want {
				t.Errorf("NUMA node = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestNormBusID(t *testing.T) {
	for in, want := range map[string]string{
		"00000000:9A:00.0": "0000:9a:00.0",
		"0000:9a:00.0":     "0000:9a:00.0",
		"00010000:E1:00.0": "10000:e1:00.0",
		"00004B3D:00:00.0": "4b3d:00:00.0",
		"9a:00.0":          "9a:00.0",
	} {
		if got := normBusID(in); got != want {
			t.Errorf("normBusID(%q) = %q, want %q", in, got, want)
		}
	}
	legacy := nvml.PciInfo{Domain: 0, Bus: 0x3a}
	for i, c := range "0000:3A:00.0" {
		legacy.BusIdLegacy[i] = int8(c)
	}
	if got := busID(legacy); got != "0000:3A:00.0" {
		t.Errorf("busID falls back to the legacy ID: got %q", got)
	}
	if got := busID(nvml.PciInfo{Domain: 1, Bus: 0x3a, Device: 2}); got != "00000001:3A:02.0" {
		t.Errorf("busID from the numeric fields: got %q", got)
	}
}

func TestDiscoverErrors(t *testing.T) {
	t.Run("no GPUs", func(t *testing.T) {
		f := newFixture(t, dgxh100.NewWithGPUs())
		n, err := f.b.Discover(context.Background())
		if n != nil || err == nil || !strings.Contains(err.Error(), "no GPUs") {
			t.Fatalf("Discover with zero GPUs = %v, %v; want a 'no GPUs' error", n, err)
		}
	})
	t.Run("a GPU that fails", func(t *testing.T) {
		f := newFixture(t, dgxh100.New())
		f.devs[3].GetNameFunc = func() (string, nvml.Return) { return "", nvml.ERROR_UNKNOWN }
		n, err := f.b.Discover(context.Background())
		if n != nil || err == nil || !strings.Contains(err.Error(), "GPU 3") || !strings.Contains(err.Error(), "GetName") {
			t.Fatalf("Discover = %v, %v; want an error naming GPU 3 and GetName", n, err)
		}
	})
	t.Run("duplicate UUIDs", func(t *testing.T) {
		f := newFixture(t, dgxh100.NewWithGPUs(gpus.H100_SXM5_80GB, gpus.H100_SXM5_80GB))
		f.devs[1].UUID = f.devs[0].UUID
		if _, err := f.b.Discover(context.Background()); err == nil || !strings.Contains(err.Error(), "inconsistent") {
			t.Fatalf("Discover with a repeated UUID: %v", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		f := newFixture(t, dgxh100.New())
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := f.b.Discover(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Discover with a cancelled context: %v", err)
		}
	})
}

// TestFabric checks which fabric answers count as attached, as go-nvlib
// decides it for GFD's gpu.clique label.
func TestFabric(t *testing.T) {
	cluster := [16]uint8{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8}
	done := nvml.GpuFabricInfo{ClusterUuid: cluster, Status: uint32(nvml.SUCCESS), CliqueId: 32766, State: nvml.GPU_FABRIC_STATE_COMPLETED}
	tests := []struct {
		name string
		info nvml.GpuFabricInfo
		ret  nvml.Return
		want *inventory.Fabric
	}{
		{"attached", done, nvml.SUCCESS, &inventory.Fabric{ClusterUUID: "12345678-9abc-def0-0102-030405060708", CliqueID: 32766}},
		{"not supported", nvml.GpuFabricInfo{}, nvml.ERROR_NOT_SUPPORTED, nil},
		{"fabric manager not done", func() nvml.GpuFabricInfo { i := done; i.State = nvml.GPU_FABRIC_STATE_IN_PROGRESS; return i }(), nvml.SUCCESS, nil},
		{"fabric manager failed", func() nvml.GpuFabricInfo { i := done; i.Status = uint32(nvml.ERROR_UNKNOWN); return i }(), nvml.SUCCESS, nil},
		{"no cluster", func() nvml.GpuFabricInfo { i := done; i.ClusterUuid = [16]uint8{}; return i }(), nvml.SUCCESS, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, dgxh100.NewWithGPUs(gpus.H100_SXM5_80GB))
			f.devs[0].GetGpuFabricInfoFunc = func() (nvml.GpuFabricInfo, nvml.Return) { return tt.info, tt.ret }
			n, err := f.b.Discover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := n.GPUs[0].Fabric; !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Fabric = %+v, want %+v", got, tt.want)
			}
		})
	}
}
