//go:build cgo && linux

package nvml

import (
	"context"
	"reflect"
	"sync/atomic"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"

	"github.com/gpulet/gpulet/internal/inventory"
)

// dgx1 is a DGX-1V's hybrid cube-mesh: NVLinks between GPUs, 6 per GPU.
var dgx1 = [8][8]int{
	{0, 1, 1, 2, 2, 0, 0, 0},
	{1, 0, 2, 1, 0, 2, 0, 0},
	{1, 2, 0, 2, 0, 0, 1, 0},
	{2, 1, 2, 0, 0, 0, 0, 1},
	{2, 0, 0, 0, 0, 1, 1, 2},
	{0, 2, 0, 0, 1, 0, 2, 1},
	{0, 0, 1, 0, 1, 2, 0, 2},
	{0, 0, 0, 1, 2, 1, 2, 0},
}

func TestNVLinkDirect(t *testing.T) {
	for _, tc := range []struct {
		name    string
		kind    nvml.IntNvLinkDeviceType
		kindRet nvml.Return
	}{
		{"driver names the far end", nvml.NVLINK_DEVICE_TYPE_GPU, nvml.SUCCESS},
		{"old driver without GetNvLinkRemoteDeviceType", 0, nvml.ERROR_FUNCTION_NOT_FOUND},
		{"far end unknown", nvml.NVLINK_DEVICE_TYPE_UNKNOWN, nvml.SUCCESS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, dgxh100.New())
			var linkCalls atomic.Int64
			for i, d := range f.devs {
				var peers []int
				for j, c := range dgx1[i] {
					for k := 0; k < c; k++ {
						peers = append(peers, j)
					}
				}
				if len(peers) != 6 {
					t.Fatalf("fixture: GPU %d has %d links", i, len(peers))
				}
				d.GetNvLinkStateFunc = func(l int) (nvml.EnableState, nvml.Return) {
					linkCalls.Add(1)
					switch {
					case l < len(peers):
						return nvml.FEATURE_ENABLED, nvml.SUCCESS
					case l == len(peers):
						return nvml.FEATURE_DISABLED, nvml.SUCCESS // wired but down
					}
					return 0, nvml.ERROR_INVALID_ARGUMENT
				}
				d.GetNvLinkRemoteDeviceTypeFunc = func(int) (nvml.IntNvLinkDeviceType, nvml.Return) { return tc.kind, tc.kindRet }
				d.GetNvLinkRemotePciInfoFunc = func(l int) (nvml.PciInfo, nvml.Return) {
					if l >= len(peers) {
						return pciInfo(0, dgxBus[(i+1)%8]), nvml.SUCCESS // a down link must not count
					}
					return pciInfo(0, dgxBus[peers[l]]), nvml.SUCCESS
				}
			}
			n, err := f.b.Discover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for i := range dgx1 {
				for j := range dgx1 {
					if i != j && n.Links[i][j].NVLinks != dgx1[i][j] {
						t.Errorf("GPU%d-GPU%d: %d NVLinks, want %d", i, j, n.Links[i][j].NVLinks, dgx1[i][j])
					}
				}
			}
			if err := n.Validate(); err != nil {
				t.Error(err)
			}
			// Deferred: the devices without a single link call, then the
			// same links as Discover's.
			linkCalls.Store(0)
			d, err := f.b.DiscoverDevices(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if c := linkCalls.Load(); c != 0 || !d.LinksPending || d.Links != nil || len(d.GPUs) != len(n.GPUs) {
				t.Fatalf("DiscoverDevices: %d link calls, pending %v, links %v, %d GPUs", c, d.LinksPending, d.Links, len(d.GPUs))
			}
			links, err := f.b.Links(context.Background(), d)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(links, n.Links) {
				t.Errorf("Links after DiscoverDevices %v, Discover's %v", links, n.Links)
			}
		})
	}
}

func TestNVLinkSwitch(t *testing.T) {
	// Eight GPUs with 18 links each to four NVSwitches; GPU 3 has two links
	// down, GPU 7 reports no NVLink at all.
	linksOf := func(i int) int {
		switch i {
		case 3:
			return 16
		case 7:
			return 0
		}
		return 18
	}
	for _, tc := range []struct {
		name    string
		kind    nvml.IntNvLinkDeviceType
		kindRet nvml.Return
	}{
		{"driver names the switch", nvml.NVLINK_DEVICE_TYPE_SWITCH, nvml.SUCCESS},
		{"old driver: the far end is not a GPU", 0, nvml.ERROR_FUNCTION_NOT_FOUND},
		{"far end unknown: the far end is not a GPU", nvml.NVLINK_DEVICE_TYPE_UNKNOWN, nvml.SUCCESS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, dgxh100.New())
			for i, d := range f.devs {
				if i == 7 {
					continue // NOT_SUPPORTED from the fixture
				}
				d.GetNvLinkStateFunc = func(l int) (nvml.EnableState, nvml.Return) {
					switch {
					case l < linksOf(i):
						return nvml.FEATURE_ENABLED, nvml.SUCCESS
					case l < 18:
						return nvml.FEATURE_DISABLED, nvml.SUCCESS
					}
					return 0, nvml.ERROR_INVALID_ARGUMENT
				}
				d.GetNvLinkRemoteDeviceTypeFunc = func(int) (nvml.IntNvLinkDeviceType, nvml.Return) { return tc.kind, tc.kindRet }
				d.GetNvLinkRemotePciInfoFunc = func(l int) (nvml.PciInfo, nvml.Return) {
					return pciInfo(0, 0xc5+uint32(l%4)), nvml.SUCCESS // an NVSwitch
				}
			}
			n, err := f.b.Discover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for i := range n.GPUs {
				for j := range n.GPUs {
					if i == j {
						continue
					}
					want := min(linksOf(i), linksOf(j))
					if got := n.Links[i][j].NVLinks; got != want {
						t.Errorf("GPU%d-GPU%d: %d NVLinks, want %d", i, j, got, want)
					}
				}
			}
			if err := n.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestNVLinkToCPU: POWER9 GPUs link to the CPU too; those links are not a
// switch every GPU shares.
func TestNVLinkToCPU(t *testing.T) {
	f := newFixture(t, dgxh100.NewWithGPUs(gpus.H100_SXM5_80GB, gpus.H100_SXM5_80GB, gpus.H100_SXM5_80GB))
	// GPU0 and GPU1 share 2 links; GPU2 links only to the CPU; all link to the CPU.
	peers := [][]int{{1, 1, -1}, {0, 0, -1}, {-1, -1}}
	for i, d := range f.devs {
		d.GetNvLinkStateFunc = func(l int) (nvml.EnableState, nvml.Return) {
			if l < len(peers[i]) {
				return nvml.FEATURE_ENABLED, nvml.SUCCESS
			}
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
		d.GetNvLinkRemoteDeviceTypeFunc = func(l int) (nvml.IntNvLinkDeviceType, nvml.Return) {
			if peers[i][l] < 0 {
				return nvml.NVLINK_DEVICE_TYPE_IBMNPU, nvml.SUCCESS
			}
			return nvml.NVLINK_DEVICE_TYPE_GPU, nvml.SUCCESS
		}
		d.GetNvLinkRemotePciInfoFunc = func(l int) (nvml.PciInfo, nvml.Return) {
			if peers[i][l] < 0 {
				return pciInfo(0, 0x04), nvml.SUCCESS
			}
			return pciInfo(0, dgxBus[peers[i][l]]), nvml.SUCCESS
		}
	}
	n, err := f.b.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := [3][3]int{{0, 2, 0}, {2, 0, 0}, {0, 0, 0}}
	for i := range want {
		for j := range want {
			if i != j && n.Links[i][j].NVLinks != want[i][j] {
				t.Errorf("GPU%d-GPU%d: %d NVLinks, want %d", i, j, n.Links[i][j].NVLinks, want[i][j])
			}
		}
	}
}

func TestPCIeLevels(t *testing.T) {
	for _, tc := range []struct {
		name  string
		level nvml.GpuTopologyLevel
		ret   nvml.Return
		numa  [2]int // NVML's NUMA nodes of the two GPUs; -1: unknown
		want  inventory.Level
	}{
		{"internal (one board)", nvml.TOPOLOGY_INTERNAL, nvml.SUCCESS, [2]int{0, 0}, inventory.LevelSame},
		{"single switch", nvml.TOPOLOGY_SINGLE, nvml.SUCCESS, [2]int{0, 0}, inventory.LevelPIX},
		{"multiple switches", nvml.TOPOLOGY_MULTIPLE, nvml.SUCCESS, [2]int{0, 0}, inventory.LevelPXB},
		{"host bridge", nvml.TOPOLOGY_HOSTBRIDGE, nvml.SUCCESS, [2]int{0, 0}, inventory.LevelPHB},
		{"NUMA node", nvml.TOPOLOGY_NODE, nvml.SUCCESS, [2]int{0, 0}, inventory.LevelNODE},
		{"system", nvml.TOPOLOGY_SYSTEM, nvml.SUCCESS, [2]int{0, 1}, inventory.LevelSYS},
		{"unsupported, same NUMA node", 0, nvml.ERROR_NOT_SUPPORTED, [2]int{1, 1}, inventory.LevelNODE},
		{"unsupported, different NUMA nodes", 0, nvml.ERROR_NOT_SUPPORTED, [2]int{0, 1}, inventory.LevelSYS},
		{"unsupported, NUMA unknown", 0, nvml.ERROR_NOT_SUPPORTED, [2]int{-1, -1}, inventory.LevelSYS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, dgxh100.NewWithGPUs(gpus.H100_SXM5_80GB, gpus.H100_SXM5_80GB))
			for i, d := range f.devs {
				d.GetTopologyCommonAncestorFunc = func(nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) { return tc.level, tc.ret }
				d.GetNumaNodeIdFunc = func() (int, nvml.Return) { return tc.numa[i], nvml.SUCCESS }
			}
			n, err := f.b.Discover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if n.Links[0][1].PCIe != tc.want || n.Links[1][0].PCIe != tc.want {
				t.Errorf("PCIe level = %v / %v, want %v both ways", n.Links[0][1].PCIe, n.Links[1][0].PCIe, tc.want)
			}
		})
	}
}
