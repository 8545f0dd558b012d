//go:build cgo && linux

package nvml

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/dl"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

// dgxBus holds the PCI buses of a DGX H100's eight GPUs.
var dgxBus = []uint32{0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb}

// pciInfo is a PCI address as NVML reports it: an 8-digit domain, upper case.
func pciInfo(domain, bus uint32) nvml.PciInfo {
	p := nvml.PciInfo{Domain: domain, Bus: bus}
	s := fmt.Sprintf("%08X:%02X:00.0", domain, bus)
	for i := 0; i < len(s); i++ {
		p.BusId[i] = int8(s[i])
	}
	return p
}

// pcieLevel is the fixture's PCIe tree: pairs share a switch, quads a NUMA
// node, the halves meet across the SMP interconnect.
func pcieLevel(i, j int) nvml.GpuTopologyLevel {
	switch {
	case i/2 == j/2:
		return nvml.TOPOLOGY_MULTIPLE
	case i/4 == j/4:
		return nvml.TOPOLOGY_NODE
	}
	return nvml.TOPOLOGY_SYSTEM
}

func wantPCIe(i, j int) inventory.Level {
	switch {
	case i/2 == j/2:
		return inventory.LevelPXB
	case i/4 == j/4:
		return inventory.LevelNODE
	}
	return inventory.LevelSYS
}

type fixture struct {
	srv  *server.Server
	devs []*server.Device
	b    *Backend
	root string
}

// newFixture completes a go-nvml server mock with what it lacks (PCI bus
// IDs, NUMA, serials, topology, health counters, events) and wraps it in a
// Backend whose sysfs lives in a temporary folder.
func newFixture(t *testing.T, srv *server.Server) *fixture {
	t.Helper()
	f := &fixture{srv: srv, root: t.TempDir()}
	for i, dev := range srv.Devices {
		d := dev.(*server.Device)
		f.devs = append(f.devs, d)
		bus := uint32(i)
		if i < len(dgxBus) {
			bus = dgxBus[i]
		}
		pci := pciInfo(0, bus)
		pci.PciDeviceId = d.Config.PciDeviceId
		d.PciBusID = fmt.Sprintf("0000:%02x:00.0", bus)
		d.Minor = (i * 3) % 8 // not the index: the minor must come from NVML
		d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) { return pci, nvml.SUCCESS }
		d.GetNumaNodeIdFunc = func() (int, nvml.Return) { return i / 4, nvml.SUCCESS }
		d.GetSerialFunc = func() (string, nvml.Return) { return fmt.Sprintf("165212300%04d", i), nvml.SUCCESS }
		d.GetNvLinkStateFunc = func(int) (nvml.EnableState, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
		d.GetTopologyCommonAncestorFunc = func(o nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
			return pcieLevel(i, o.(*server.Device).Index), nvml.SUCCESS
		}
		d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, nvml.SUCCESS }
		d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return 0, nvml.SUCCESS }
		d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
			return nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError | nvml.EventTypePState, nvml.SUCCESS
		}
		d.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
	}
	f.b = newBackend(srv, f.root)
	return f
}

// setTimeouts shortens the package's timeouts for one test.
func setTimeouts(t *testing.T, callTimeout time.Duration) {
	t.Helper()
	oc, ow, ol, or := CallTimeout, waitTimeout, lostRetry, retryPause
	CallTimeout, waitTimeout, lostRetry, retryPause = callTimeout, 10*time.Millisecond, 10*time.Millisecond, 10*time.Millisecond
	t.Cleanup(func() { CallTimeout, waitTimeout, lostRetry, retryPause = oc, ow, ol, or })
}

// blocker makes mock calls hang until released, as a wedged driver does.
type blocker struct {
	ch   chan struct{}
	once sync.Once
}

func newBlocker(t *testing.T) *blocker {
	b := &blocker{ch: make(chan struct{})}
	t.Cleanup(b.release)
	return b
}

func (b *blocker) wait()    { <-b.ch }
func (b *blocker) release() { b.once.Do(func() { close(b.ch) }) }

// waitUnwedged waits for every stuck call to have returned.
func waitUnwedged(t *testing.T, b *Backend) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for b.wedged("test") != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the backend still refuses calls after the stuck call returned: %v", b.wedged("test"))
		}
		time.Sleep(time.Millisecond)
	}
}

func TestNewWithoutLibrary(t *testing.T) {
	dir := t.TempDir()
	bogus := filepath.Join(dir, "libnvidia-ml.so.1")
	if err := os.WriteFile(bogus, []byte("not an ELF file"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing", "libnvidia-ml.so.1")
	old := LibraryPaths
	LibraryPaths = []string{missing, bogus}
	t.Cleanup(func() { LibraryPaths = old })

	b, err := New(Options{})
	if b != nil || err == nil {
		t.Fatalf("New() = %v, %v; want no backend and an error", b, err)
	}
	if !errors.Is(err, ErrLibraryNotFound) {
		t.Fatalf("New() error %q does not wrap ErrLibraryNotFound", err)
	}
	for _, want := range []string{missing, bogus, "nvidia-smi", "--backend=sim"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New() error %q does not mention %q", err, want)
		}
	}
}

// TestNewOnThisMachine runs the real loader. Without a driver (a CI machine)
// New must fail with ErrLibraryNotFound; with one it must give a working
// backend, so this test is also the smoke test on a GPU node.
func TestNewOnThisMachine(t *testing.T) {
	loadable := ""
	for _, p := range LibraryPaths {
		lib := dl.New(p, dl.RTLD_LAZY|dl.RTLD_LOCAL)
		if lib.Open() == nil {
			loadable = p
			_ = lib.Close()
			break
		}
	}
	b, err := New(Options{})
	if loadable == "" {
		if !errors.Is(err, ErrLibraryNotFound) {
			t.Fatalf("no libnvidia-ml here, but New() = %v, %v; want ErrLibraryNotFound", b, err)
		}
		t.Logf("as expected without a driver: %v", err)
		return
	}
	if err != nil {
		if !strings.Contains(err.Error(), "nvidia-smi") {
			t.Fatalf("New() with %s loadable failed without saying what to check: %v", loadable, err)
		}
		t.Skipf("NVML is present (%s) but does not initialise here: %v", loadable, err)
	}
	defer func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	ctx := context.Background()
	n, err := b.Discover(ctx)
	if err != nil {
		t.Fatalf("Discover on a real driver: %v", err)
	}
	if err := n.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Logf("driver %s, CUDA %s, %d GPUs", n.DriverVersion, n.CUDADriverVersion, len(n.GPUs))
	for i, g := range n.GPUs {
		t.Logf("GPU %d: %+v links %+v", i, g, n.Links[i])
		if err := b.Probe(ctx, g.UUID); err != nil {
			t.Errorf("Probe(%s): %v", g.UUID, err)
		}
	}
}

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
	want := []inventory.MIGDevice{
		{UUID: id(0), Profile: "1g.10gb", GI: 0, CI: 0, MemoryBytes: 10 << 30},
		{UUID: id(2), Profile: "1g.10gb+me", GI: 1, CI: 0, MemoryBytes: 10 << 30},
		{UUID: id(3), Profile: "1g.20gb", GI: 2, CI: 0, MemoryBytes: 20 << 30},
		{UUID: id(4), Profile: "1c.3g.40gb", GI: 3, CI: 0, MemoryBytes: 40 << 30},
		{UUID: id(5), Profile: "2c.3g.40gb", GI: 3, CI: 1, MemoryBytes: 40 << 30},
	}
	// Attributes are NVML's, passed through for node labels: check their
	// GPU-instance slices, then compare the rest.
	got := slices.Clone(g.MIGDevices)
	for i, m := range got {
		if m.Attributes == nil || fmt.Sprintf("%dg.", m.Attributes.GISlices) != m.Profile[strings.Index(m.Profile, "g.")-1:strings.Index(m.Profile, "g.")+2] {
			t.Errorf("MIG %s: attributes %+v do not match its profile", m.Profile, m.Attributes)
		}
		got[i].Attributes = nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GPU 0 MIG devices:\n got %+v\nwant %+v", got, want)
	}
	if g := n.GPUs[1]; g.MIGCapable || g.MIGEnabled || len(g.MIGDevices) != 0 {
		t.Errorf("GPU 1 without MIG support: MIGCapable %v MIGEnabled %v %d MIG devices", g.MIGCapable, g.MIGEnabled, len(g.MIGDevices))
	}
	if g := n.GPUs[2]; len(g.MIGDevices) != 1 || g.MIGDevices[0].Profile != "1g.10gb" {
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

func TestProbe(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(d *server.Device)
		uuid    string // default: GPU 2's
		wantErr string // "" for healthy
	}{
		{"healthy", func(*server.Device) {}, "", ""},
		{"old GPU: no row remapping, ECC off", func(d *server.Device) {
			d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, nvml.ERROR_NOT_SUPPORTED }
			d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
				return 0, nvml.ERROR_NOT_SUPPORTED
			}
		}, "", ""},
		{"remap pending only", func(d *server.Device) {
			d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 1, true, false, nvml.SUCCESS }
		}, "", ""},
		{"row remap failure", func(d *server.Device) {
			d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 512, false, true, nvml.SUCCESS }
		}, "", "row remapping failed"},
		{"uncorrected ECC", func(d *server.Device) {
			d.GetTotalEccErrorsFunc = func(typ nvml.MemoryErrorType, ctr nvml.EccCounterType) (uint64, nvml.Return) {
				if typ == nvml.MEMORY_ERROR_TYPE_UNCORRECTED && ctr == nvml.VOLATILE_ECC {
					return 2, nvml.SUCCESS
				}
				return 0, nvml.SUCCESS
			}
		}, "", "2 uncorrected ECC errors"},
		{"GPU lost", func(d *server.Device) {
			d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST }
		}, "", nvml.ERROR_GPU_IS_LOST.Error()},
		{"ECC query fails", func(d *server.Device) {
			d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
		}, "", "GetTotalEccErrors"},
		{"unknown device", func(*server.Device) {}, "GPU-00000000-0000-0000-0000-000000000000", "DeviceGetHandleByUUID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, dgxh100.New())
			tc.setup(f.devs[2])
			uuid := tc.uuid
			if uuid == "" {
				uuid = f.devs[2].UUID
			}
			err := f.b.Probe(context.Background(), uuid)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Probe = %v, want healthy", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Probe = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}

func TestProbeMIGChecksParent(t *testing.T) {
	f := newFixture(t, dgxh100.NewWithGPUs(gpus.H100_SXM5_80GB))
	migs := enableMIG(t, f.devs[0], h100Slots)
	withMIGHandles(f, migs)
	if _, err := f.b.Discover(context.Background()); err != nil {
		t.Fatal(err)
	}
	u, _ := migs[1].GetUUID()
	if err := f.b.Probe(context.Background(), u); err != nil {
		t.Fatalf("healthy MIG device: %v", err)
	}
	f.devs[0].GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return 1, nvml.SUCCESS }
	if err := f.b.Probe(context.Background(), u); err == nil || !strings.Contains(err.Error(), "uncorrected ECC") {
		t.Fatalf("MIG device on a GPU with an uncorrected ECC error: %v", err)
	}
}

// eventFeed is a mock event set whose Wait returns what the test sends, or
// ERROR_TIMEOUT after a few milliseconds.
type eventFeed struct {
	set   *mock.EventSet
	ch    chan nvml.EventData
	rets  chan nvml.Return
	mu    sync.Mutex
	freed bool
}

func newEventFeed(f *fixture) *eventFeed {
	e := &eventFeed{ch: make(chan nvml.EventData), rets: make(chan nvml.Return)}
	e.set = &mock.EventSet{
		WaitFunc: func(uint32) (nvml.EventData, nvml.Return) {
			select {
			case d := <-e.ch:
				return d, nvml.SUCCESS
			case r := <-e.rets:
				return nvml.EventData{}, r
			case <-time.After(2 * time.Millisecond):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return {
			e.mu.Lock()
			e.freed = true
			e.mu.Unlock()
			return nvml.SUCCESS
		},
	}
	f.srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return e.set, nvml.SUCCESS }
	return e
}

func (e *eventFeed) isFreed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.freed
}

func xid(d nvml.Device, code uint64) nvml.EventData {
	return nvml.EventData{Device: d, EventType: nvml.EventTypeXidCriticalError, EventData: code, GpuInstanceId: invalidID, ComputeInstanceId: invalidID}
}

type watcher struct {
	events chan hardware.Event
	errc   chan error
	cancel context.CancelFunc
}

// startWatch runs Watch until the test ends.
func startWatch(t *testing.T, b *Backend) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{events: make(chan hardware.Event, 32), errc: make(chan error, 1), cancel: cancel}
	go func() { w.errc <- b.Watch(ctx, w.events) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.errc:
		case <-time.After(2 * time.Second):
			t.Error("Watch did not end after its context was cancelled")
		}
	})
	return w
}

func (w *watcher) next(t *testing.T) hardware.Event {
	t.Helper()
	select {
	case ev := <-w.events:
		return ev
	case err := <-w.errc:
		t.Fatalf("Watch ended: %v", err)
	case <-time.After(2 * time.Second):
		t.Fatal("no event within 2s")
	}
	return hardware.Event{}
}

func TestWatchEvents(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	w := startWatch(t, f.b)

	send := func(d nvml.EventData) {
		select {
		case feed.ch <- d:
		case <-time.After(2 * time.Second):
			t.Fatal("Watch is not waiting for events")
		}
	}
	send(xid(f.devs[2], 48))
	if ev, want := w.next(t), (hardware.Event{Kind: hardware.EventXID, UUID: f.devs[2].UUID, XID: 48}); ev != want {
		t.Errorf("got %+v, want %+v", ev, want)
	}
	send(nvml.EventData{Device: f.devs[5], EventType: nvml.EventTypeDoubleBitEccError, GpuInstanceId: invalidID, ComputeInstanceId: invalidID})
	if ev, want := w.next(t), (hardware.Event{Kind: hardware.EventECCDoubleBit, UUID: f.devs[5].UUID}); ev != want {
		t.Errorf("got %+v, want %+v", ev, want)
	}
	send(nvml.EventData{Device: f.devs[1], EventType: nvml.EventTypePState}) // not a fault
	send(xid(nil, 79))
	if ev, want := w.next(t), (hardware.Event{Kind: hardware.EventXID, XID: 79}); ev != want {
		t.Errorf("got %+v, want %+v (a P-state event is no fault; an XID without a device has no UUID)", ev, want)
	}
	// ERROR_TIMEOUT loops: many waits have come and gone.
	deadline := time.Now().Add(2 * time.Second)
	for len(feed.set.WaitCalls()) < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d waits: ERROR_TIMEOUT does not loop", len(feed.set.WaitCalls()))
		}
		time.Sleep(time.Millisecond)
	}
	for i, d := range f.devs {
		calls := d.RegisterEventsCalls()
		if len(calls) != 1 || calls[0].V != nvml.EventTypeXidCriticalError|nvml.EventTypeDoubleBitEccError || calls[0].EventSet != feed.set {
			t.Errorf("GPU %d registrations: %+v; want one for XID and double-bit ECC on the set", i, calls)
		}
	}

	start := time.Now()
	w.cancel()
	select {
	case err := <-w.errc:
		if err != nil {
			t.Errorf("Watch after cancel: %v", err)
		}
		w.errc <- err // for the cleanup
	case <-time.After(time.Second):
		t.Fatal("Watch did not end within 1s of cancel")
	}
	if el := time.Since(start); el > 200*time.Millisecond {
		t.Errorf("Watch took %v to end after cancel", el)
	}
	deadline = time.Now().Add(time.Second)
	for !feed.isFreed() {
		if time.Now().After(deadline) {
			t.Fatal("the event set was never freed")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWatchCancelDuringWait: NVML's wait cannot be interrupted, yet cancel
// ends Watch at once, and the event set is freed only after the wait returns.
func TestWatchCancelDuringWait(t *testing.T) {
	setTimeouts(t, time.Second)
	waitTimeout = 600 * time.Millisecond
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	var mu sync.Mutex
	waiting, freedEarly := false, false
	entered := make(chan struct{}, 1)
	feed.set.WaitFunc = func(ms uint32) (nvml.EventData, nvml.Return) {
		mu.Lock()
		waiting = true
		mu.Unlock()
		select {
		case entered <- struct{}{}:
		default:
		}
		time.Sleep(time.Duration(ms) * time.Millisecond) // as NVML does
		mu.Lock()
		waiting = false
		mu.Unlock()
		return nvml.EventData{}, nvml.ERROR_TIMEOUT
	}
	free := feed.set.FreeFunc
	feed.set.FreeFunc = func() nvml.Return {
		mu.Lock()
		freedEarly = freedEarly || waiting
		mu.Unlock()
		return free()
	}
	w := startWatch(t, f.b)
	<-entered
	start := time.Now()
	w.cancel()
	select {
	case err := <-w.errc:
		if err != nil {
			t.Errorf("Watch after cancel: %v", err)
		}
		w.errc <- err
	case <-time.After(2 * time.Second):
		t.Fatal("Watch did not end after cancel")
	}
	if el := time.Since(start); el > 200*time.Millisecond {
		t.Errorf("Watch took %v to end after cancel, during a %v NVML wait", el, waitTimeout)
	}
	deadline := time.Now().Add(2 * time.Second)
	for !feed.isFreed() {
		if time.Now().After(deadline) {
			t.Fatal("the event set was never freed")
		}
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if freedEarly {
		t.Error("the event set was freed while NVML was still waiting on it")
	}
}

func TestWatchRegistration(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	f.devs[0].GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return nvml.EventTypeXidCriticalError, nvml.SUCCESS } // no ECC (GeForce)
	f.devs[1].GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	f.devs[3].GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return nvml.EventTypePState, nvml.SUCCESS }
	f.devs[4].GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
	f.devs[6].RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.ERROR_NOT_SUPPORTED }
	w := startWatch(t, f.b)

	// Registration ends before the first wait, so every registration event
	// comes before this XID.
	select {
	case feed.ch <- xid(f.devs[0], 31):
	case <-time.After(2 * time.Second):
		t.Fatal("Watch is not waiting for events")
	}
	var got []hardware.Event
	for {
		ev := w.next(t)
		if ev.Kind == hardware.EventXID {
			break
		}
		got = append(got, ev)
	}
	if len(got) != 1 || got[0].Kind != hardware.EventUnhealthy || got[0].UUID != f.devs[4].UUID || !strings.Contains(got[0].Reason, "ERROR_UNKNOWN") {
		t.Errorf("registration events %+v; want only GPU 4 unhealthy with its NVML error (GPUs that cannot report events stay healthy)", got)
	}
	if c := f.devs[0].RegisterEventsCalls(); len(c) != 1 || c[0].V != nvml.EventTypeXidCriticalError {
		t.Errorf("GPU 0 without ECC events registered %+v, want XID only", c)
	}
	for _, i := range []int{1, 3, 4} {
		if c := f.devs[i].RegisterEventsCalls(); len(c) != 0 {
			t.Errorf("GPU %d registered %+v, want nothing", i, c)
		}
	}
}

func TestWatchNothingToWatch(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	for _, d := range f.devs {
		d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	}
	w := startWatch(t, f.b)
	select {
	case ev := <-w.events:
		t.Fatalf("unexpected event %+v", ev)
	case err := <-w.errc:
		t.Fatalf("Watch ended early: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if n := len(feed.set.WaitCalls()); n != 0 {
		t.Errorf("%d waits on an empty event set", n)
	}
}

func TestWatchMIGEvents(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.NewWithGPUs(gpus.H100_SXM5_80GB, gpus.H100_SXM5_80GB))
	enableMIG(t, f.devs[0], h100Slots)
	feed := newEventFeed(f)
	n, err := f.b.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mig := n.GPUs[0].MIGDevices
	w := startWatch(t, f.b)
	for _, tc := range []struct {
		name   string
		gi, ci uint32
		want   []string
	}{
		{"one compute instance", 3, 1, []string{mig[4].UUID}},
		{"a whole GPU instance", 3, invalidID, []string{mig[3].UUID, mig[4].UUID}},
		{"outside MIG", invalidID, invalidID, []string{n.GPUs[0].UUID}},
		{"an instance discovery did not see", 6, 0, []string{n.GPUs[0].UUID}},
	} {
		ev := xid(f.devs[0], 94)
		ev.GpuInstanceId, ev.ComputeInstanceId = tc.gi, tc.ci
		select {
		case feed.ch <- ev:
		case <-time.After(2 * time.Second):
			t.Fatal("Watch is not waiting for events")
		}
		for _, want := range tc.want {
			if got := w.next(t); got.Kind != hardware.EventXID || got.XID != 94 || got.UUID != want {
				t.Errorf("%s: got %+v, want XID 94 on %s", tc.name, got, want)
			}
		}
	}
}

func TestWatchGPULost(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	f.devs[7].GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST }
	w := startWatch(t, f.b)
	feed.rets <- nvml.ERROR_GPU_IS_LOST
	if ev := w.next(t); ev.Kind != hardware.EventXID || ev.XID != 79 || ev.UUID != f.devs[7].UUID {
		t.Errorf("got %+v, want XID 79 on GPU 7", ev)
	}
	feed.ch <- xid(f.devs[1], 48) // and the watch goes on
	if ev := w.next(t); ev.UUID != f.devs[1].UUID || ev.XID != 48 {
		t.Errorf("got %+v, want XID 48 on GPU 1", ev)
	}
}

func TestWatchWaitError(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	w := startWatch(t, f.b)
	feed.rets <- nvml.ERROR_UNKNOWN
	select {
	case err := <-w.errc:
		if err == nil || !strings.Contains(err.Error(), "event wait") {
			t.Errorf("Watch = %v, want an event wait error", err)
		}
		w.errc <- err
	case <-time.After(2 * time.Second):
		t.Fatal("Watch goes on after a failed wait")
	}
}

func TestWatchWedgedWait(t *testing.T) {
	setTimeouts(t, 200*time.Millisecond)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	block := newBlocker(t)
	first := true
	var mu sync.Mutex
	wait := feed.set.WaitFunc
	feed.set.WaitFunc = func(ms uint32) (nvml.EventData, nvml.Return) {
		mu.Lock()
		hang := first
		first = false
		mu.Unlock()
		if hang {
			block.wait()
		}
		return wait(ms)
	}
	w := startWatch(t, f.b)
	seen := map[string]bool{}
	for range f.devs {
		ev := w.next(t)
		if ev.Kind != hardware.EventUnhealthy || !strings.Contains(ev.Reason, "did not return within") {
			t.Errorf("got %+v, want an unhealthy device with a reason", ev)
		}
		seen[ev.UUID] = true
	}
	if len(seen) != len(f.devs) {
		t.Errorf("%d of %d GPUs marked unhealthy by a hung event wait", len(seen), len(f.devs))
	}
	start := time.Now()
	if err := f.b.Probe(context.Background(), f.devs[0].UUID); !errors.Is(err, errWedged) || time.Since(start) > CallTimeout/2 {
		t.Errorf("Probe while the wait hangs = %v after %v, want a fast wedged error", err, time.Since(start))
	}
	block.release()
	waitUnwedged(t, f.b)
	feed.ch <- xid(f.devs[3], 48)
	if ev := w.next(t); ev.UUID != f.devs[3].UUID || ev.XID != 48 {
		t.Errorf("after the driver answered again: got %+v, want XID 48 on GPU 3", ev)
	}
	if err := f.b.Probe(context.Background(), f.devs[0].UUID); err != nil {
		t.Errorf("Probe after the driver answered again: %v", err)
	}
}

func TestHungCallFailsFast(t *testing.T) {
	const timeout = 200 * time.Millisecond
	setTimeouts(t, timeout)
	f := newFixture(t, dgxh100.New())
	block := newBlocker(t)
	mem := f.devs[0].GetMemoryInfoFunc
	f.devs[0].GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { block.wait(); return mem() }
	ctx := context.Background()

	start := time.Now()
	err := f.b.Probe(ctx, f.devs[0].UUID)
	el := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "did not return within") || !errors.Is(err, errWedged) {
		t.Fatalf("Probe on a hung GetMemoryInfo = %v, want a 'did not return within' error", err)
	}
	if el < timeout || el > timeout+500*time.Millisecond {
		t.Errorf("Probe returned after %v, want about %v", el, timeout)
	}

	// The driver is wedged: calls now fail at once instead of stacking up
	// goroutines behind the stuck one.
	before := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		start := time.Now()
		err := f.b.Probe(ctx, f.devs[1].UUID)
		if !errors.Is(err, errWedged) || !strings.Contains(err.Error(), "GetMemoryInfo has not returned") {
			t.Fatalf("Probe while wedged = %v", err)
		}
		if el := time.Since(start); el > timeout/2 {
			t.Fatalf("Probe while wedged took %v", el)
		}
	}
	if _, err := f.b.Discover(ctx); !errors.Is(err, errWedged) {
		t.Errorf("Discover while wedged = %v", err)
	}
	if err := f.b.Close(); !errors.Is(err, errWedged) {
		t.Errorf("Close while wedged = %v", err)
	}
	if after := runtime.NumGoroutine(); after > before+2 {
		t.Errorf("goroutines grew from %d to %d while wedged", before, after)
	}

	block.release()
	waitUnwedged(t, f.b)
	if err := f.b.Probe(ctx, f.devs[0].UUID); err != nil {
		t.Errorf("Probe after the stuck call returned: %v", err)
	}
	if _, err := f.b.Discover(ctx); err != nil {
		t.Errorf("Discover after the stuck call returned: %v", err)
	}
}

// TestTwoHungCalls: the driver stays wedged until every stuck call returns,
// not just the first.
func TestTwoHungCalls(t *testing.T) {
	setTimeouts(t, 50*time.Millisecond)
	f := newFixture(t, dgxh100.New())
	blocks := []*blocker{newBlocker(t), newBlocker(t)}
	entered := make(chan struct{}, 2)
	for i, bl := range blocks {
		mem := f.devs[i].GetMemoryInfoFunc
		f.devs[i].GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { entered <- struct{}{}; bl.wait(); return mem() }
	}
	errs := make(chan error, 2)
	for i := range blocks {
		go func() { errs <- f.b.Probe(context.Background(), f.devs[i].UUID) }()
	}
	<-entered
	<-entered // both calls are in NVML before either times out
	for range blocks {
		if err := <-errs; !strings.Contains(fmt.Sprint(err), "did not return within") {
			t.Fatalf("Probe = %v", err)
		}
	}
	blocks[0].release()
	time.Sleep(20 * time.Millisecond)
	if err := f.b.Probe(context.Background(), f.devs[2].UUID); !errors.Is(err, errWedged) {
		t.Errorf("with one call still stuck, Probe = %v; want a wedged error", err)
	}
	blocks[1].release()
	waitUnwedged(t, f.b)
	if err := f.b.Probe(context.Background(), f.devs[2].UUID); err != nil {
		t.Errorf("Probe after both calls returned: %v", err)
	}
}

func TestDiscoverHungCall(t *testing.T) {
	for _, tc := range []struct {
		name string
		hang func(d *server.Device, wait func())
	}{
		{"GetMemoryInfo", func(d *server.Device, wait func()) {
			orig := d.GetMemoryInfoFunc
			d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { wait(); return orig() }
		}},
		{"GetNumaNodeId (optional)", func(d *server.Device, wait func()) {
			d.GetNumaNodeIdFunc = func() (int, nvml.Return) { wait(); return 0, nvml.SUCCESS }
		}},
		{"GetSerial (optional)", func(d *server.Device, wait func()) {
			d.GetSerialFunc = func() (string, nvml.Return) { wait(); return "1", nvml.SUCCESS }
		}},
		{"GetNvLinkState (topology)", func(d *server.Device, wait func()) {
			d.GetNvLinkStateFunc = func(int) (nvml.EnableState, nvml.Return) { wait(); return 0, nvml.ERROR_NOT_SUPPORTED }
		}},
		{"GetTopologyCommonAncestor (topology)", func(d *server.Device, wait func()) {
			d.GetTopologyCommonAncestorFunc = func(nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
				wait()
				return nvml.TOPOLOGY_SYSTEM, nvml.SUCCESS
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setTimeouts(t, 50*time.Millisecond)
			f := newFixture(t, dgxh100.New())
			block := newBlocker(t)
			tc.hang(f.devs[5], block.wait)
			n, err := f.b.Discover(context.Background())
			if n != nil || err == nil || !strings.Contains(err.Error(), "did not return within") {
				t.Fatalf("Discover with a hung %s = %v, %v; want a 'did not return within' error and no node", tc.name, n, err)
			}
			block.release()
			waitUnwedged(t, f.b)
			if _, err := f.b.Discover(context.Background()); err != nil {
				t.Errorf("Discover after the call returned: %v", err)
			}
		})
	}
}

func TestClose(t *testing.T) {
	f := newFixture(t, dgxh100.New())
	if err := f.b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(f.srv.ShutdownCalls()); n != 1 {
		t.Errorf("%d Shutdown calls, want 1", n)
	}
	f.srv.ShutdownFunc = func() nvml.Return { return nvml.ERROR_UNINITIALIZED }
	if err := f.b.Close(); err == nil {
		t.Error("Close hides a failed shutdown")
	}
}

// A driver container (GPU operator) keeps NVML under its root: that copy is
// tried first, and the error names it.
func TestNewLooksUnderTheDriverRoot(t *testing.T) {
	root := t.TempDir()
	lib := filepath.Join(root, "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")
	os.MkdirAll(filepath.Dir(lib), 0o755)
	os.WriteFile(lib, []byte("not an ELF file"), 0o644)
	paths := Options{DriverRoot: root}.libraryPaths()
	if paths[0] != filepath.Join(root, LibraryPaths[1]) || paths[len(paths)-1] != LibraryPaths[len(LibraryPaths)-1] {
		t.Errorf("search order %v", paths)
	}
	old := LibraryPaths
	LibraryPaths = []string{"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"}
	t.Cleanup(func() { LibraryPaths = old })
	_, err := New(Options{DriverRoot: root})
	if !errors.Is(err, ErrLibraryNotFound) || !strings.Contains(err.Error(), lib) {
		t.Fatalf("error %v should name %s", err, lib)
	}
}
