//go:build cgo && linux

package nvml

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/dl"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/waittest"
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
		d.GetAddressingModeFunc = func() (nvml.DeviceAddressingMode, nvml.Return) {
			return nvml.DeviceAddressingMode{Value: uint32(nvml.DEVICE_ADDRESSING_MODE_NONE)}, nvml.SUCCESS
		}
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
		d.GetGpuFabricInfoFunc = func() (nvml.GpuFabricInfo, nvml.Return) { return nvml.GpuFabricInfo{}, nvml.ERROR_NOT_SUPPORTED }
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
	waittest.UntilSays(t, 2*time.Second, "the backend takes calls again after the stuck calls returned", func() (bool, string) {
		err := b.wedged("test")
		return err == nil, fmt.Sprint(err)
	})
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
