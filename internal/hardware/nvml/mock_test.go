//go:build cgo && linux

package nvml

// gpulet's NVML backend against NVIDIA's mock libnvidia-ml.so (k8s-test-infra,
// built by hack/nvml-mock.sh; make unit sets GPULET_NVML_MOCK). The mock reads
// its profile once, when it is loaded, and go-nvml binds one library per
// process, so each profile runs in a child process: this test binary run
// again with GPULET_NVML_MOCK_CHILD naming what the child checks.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/nvml/nvmlmocktest"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/waittest"
)

const mockChildEnv = "GPULET_NVML_MOCK_CHILD"

// runChild runs TestNVMLMockChild in a fresh process with env added and
// fails t with the child's output unless the child passed.
func runChild(t *testing.T, child string, env ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestNVMLMockChild$", "-test.v", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(append(os.Environ(), mockChildEnv+"="+child), env...)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestNVMLMockChild") {
		t.Fatalf("child %s: %v\n%s", child, err, out)
	}
	if testing.Verbose() {
		t.Logf("child %s:\n%s", child, out)
	}
}

// TestNVMLMockProfiles runs the NVML backend on every profile of NVIDIA's
// mock: discovery, topology and telemetry equal the profile's YAML, and
// faults injected at run time with nvml-mock-ctl give the health the README
// promises.
func TestNVMLMockProfiles(t *testing.T) {
	if os.Getenv(mockChildEnv) != "" {
		t.Skip("a child runs only TestNVMLMockChild")
	}
	mock := nvmlmocktest.Dir(t)
	for _, p := range nvmlmocktest.Profiles {
		t.Run(p, func(t *testing.T) {
			t.Parallel()
			runChild(t, p,
				"MOCK_NVML_CONFIG="+nvmlmocktest.Config(mock, p),
				"MOCK_NVML_OVERRIDES="+filepath.Join(t.TempDir(), "overrides.yaml"))
		})
	}
}

// TestNVMLRefusingInit loads a libnvidia-ml.so.1 that answers init with
// "driver not loaded" (testdata/refuseinit.c): New must say which library
// refused and what to check, not report a node without GPUs.
func TestNVMLRefusingInit(t *testing.T) {
	if os.Getenv(mockChildEnv) != "" {
		t.Skip("a child runs only TestNVMLMockChild")
	}
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler (cc) to build testdata/refuseinit.c")
	}
	root := t.TempDir()
	lib := filepath.Join(root, "usr", "lib64", "libnvidia-ml.so.1")
	if err := os.MkdirAll(filepath.Dir(lib), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-shared", "-fPIC", "-Wall", "-Werror", "-o", lib, filepath.Join("testdata", "refuseinit.c")).CombinedOutput(); err != nil {
		t.Fatalf("build testdata/refuseinit.c: %v\n%s", err, out)
	}
	runChild(t, "refuse-init", "GPULET_TEST_DRIVER_ROOT="+root)
}

// TestNVMLLibraryMissing: no library anywhere is ErrLibraryNotFound, with
// the places tried and what to do.
func TestNVMLLibraryMissing(t *testing.T) {
	saved := LibraryPaths
	t.Cleanup(func() { LibraryPaths = saved })
	LibraryPaths = []string{"/nonexistent-gpulet-test/usr/lib64/libnvidia-ml.so.1"}
	root := t.TempDir()
	_, err := New(Options{DriverRoot: root})
	if !errors.Is(err, ErrLibraryNotFound) {
		t.Fatalf("New = %v, want ErrLibraryNotFound", err)
	}
	for _, want := range []string{filepath.Join(root, LibraryPaths[0]), "nvidia-smi", "--backend=sim"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// TestNVMLMockChild is the child process of the tests above.
func TestNVMLMockChild(t *testing.T) {
	child := os.Getenv(mockChildEnv)
	switch child {
	case "":
		t.Skip("run by TestNVMLMockProfiles and TestNVMLRefusingInit, one process each")
	case "refuse-init":
		root := os.Getenv("GPULET_TEST_DRIVER_ROOT")
		_, err := New(Options{DriverRoot: root})
		if err == nil || errors.Is(err, ErrLibraryNotFound) {
			t.Fatalf("New = %v, want an init failure", err)
		}
		for _, want := range []string{filepath.Join(root, "usr/lib64/libnvidia-ml.so.1"), "failed to initialise", "Driver Not Loaded", "nvidia-smi", "dmesg"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
		return
	}
	mock := nvmlmocktest.Dir(t)
	want := readMockProfile(t, os.Getenv("MOCK_NVML_CONFIG"))
	// The mock as a driver root, as the DaemonSet mounts it: New finds the
	// library under the root before the usual places.
	root := t.TempDir()
	lib := filepath.Join(root, "usr", "lib64", "libnvidia-ml.so.1")
	if err := os.MkdirAll(filepath.Dir(lib), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(nvmlmocktest.Library(mock), lib); err != nil {
		t.Fatal(err)
	}
	hb, err := New(Options{DriverRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	b := hb.(*Backend)
	t.Cleanup(func() { b.Close() })
	if b.libPath != lib {
		t.Errorf("loaded %s, want the driver root's %s", b.libPath, lib)
	}
	ctx := context.Background()
	n, err := b.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("discovery", func(t *testing.T) { checkDiscovery(t, n, want) })
	t.Run("topology", func(t *testing.T) { checkTopology(t, n, want) })
	t.Run("telemetry", func(t *testing.T) { checkTelemetry(t, b, n, want) })
	t.Run("health", func(t *testing.T) { checkHealth(t, b, n, mock) })
}

// mockProfile is what the tests read from a profile YAML.
type mockProfile struct {
	System struct {
		DriverVersion string `json:"driver_version"`
		CUDAVersion   string `json:"cuda_version"`
	} `json:"system"`
	Devices []mockDevice `json:"-"` // device_defaults merged with each devices[] entry
	NVLink  *struct {
		LinksPerGPU int `json:"links_per_gpu"`
		Switches    []struct {
			BDF string `json:"bdf"`
		} `json:"switches"`
	} `json:"nvlink"`
	PCIe *struct {
		RootComplexes []struct {
			ID       string   `json:"id"`
			NUMANode int      `json:"numa_node"`
			Devices  []string `json:"devices"`
		} `json:"root_complexes"`
	} `json:"pcie_topology"`
}

type mockDevice struct {
	UUID              string `json:"uuid"`
	Name              string `json:"name"`
	Serial            string `json:"serial"`
	Architecture      string `json:"architecture"`
	Minor             int    `json:"minor_number"`
	ComputeCapability struct {
		Major int `json:"major"`
		Minor int `json:"minor"`
	} `json:"compute_capability"`
	Memory struct {
		Total    uint64 `json:"total_bytes"`
		Free     uint64 `json:"free_bytes"`
		Used     uint64 `json:"used_bytes"`
		Reserved uint64 `json:"reserved_bytes"`
	} `json:"memory"`
	PCI struct {
		BusID string `json:"bus_id"`
	} `json:"pci"`
	PCIe struct {
		ReplayCounter uint64 `json:"replay_counter"`
	} `json:"pcie"`
	MIG struct {
		Mode string `json:"mode_current"`
	} `json:"mig"`
	Fabric *struct {
		ClusterUUID string `json:"cluster_uuid"`
		CliqueID    uint32 `json:"clique_id"`
		State       string `json:"state"`
	} `json:"fabric"`
	Power struct {
		DrawMW   uint64 `json:"current_draw_mw"`
		EnergyMJ uint64 `json:"total_energy_consumption_mj"`
	} `json:"power"`
	Thermal struct {
		GPU int `json:"temperature_gpu_c"`
	} `json:"thermal"`
	Clocks struct {
		SM     int `json:"sm_current"`
		Memory int `json:"memory_current"`
	} `json:"clocks"`
	Utilization struct {
		GPU    int `json:"gpu"`
		Memory int `json:"memory"`
	} `json:"utilization"`
	RemappedRows struct {
		Correctable   int  `json:"correctable"`
		Uncorrectable int  `json:"uncorrectable"`
		Failure       bool `json:"failure_occurred"`
	} `json:"remapped_rows"`
}

// readMockProfile parses a profile and merges device_defaults into each
// device, as the mock does.
func readMockProfile(t *testing.T, path string) mockProfile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var p mockProfile
	if err := yaml.Unmarshal(data, &p); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var raw struct {
		Defaults map[string]any   `json:"device_defaults"`
		Devices  []map[string]any `json:"devices"`
	}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, d := range raw.Devices {
		merged, err := json.Marshal(deepMerge(raw.Defaults, d))
		if err != nil {
			t.Fatal(err)
		}
		var dev mockDevice
		if err := json.Unmarshal(merged, &dev); err != nil {
			t.Fatalf("%s: device: %v", path, err)
		}
		p.Devices = append(p.Devices, dev)
	}
	if len(p.Devices) == 0 {
		t.Fatalf("%s lists no devices", path)
	}
	return p
}

// deepMerge returns base with over's keys laid over it, maps merged key by key.
func deepMerge(base, over map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		bm, ok1 := out[k].(map[string]any)
		om, ok2 := v.(map[string]any)
		if ok1 && ok2 {
			out[k] = deepMerge(bm, om)
			continue
		}
		out[k] = v
	}
	return out
}

// numa is the NUMA node the profile's PCIe topology gives a bus ID, -1 if none.
func (p mockProfile) numa(bus string) (node int, rootComplex string) {
	if p.PCIe != nil {
		for _, rc := range p.PCIe.RootComplexes {
			for _, d := range rc.Devices {
				if normBusID(d) == normBusID(bus) {
					return rc.NUMANode, rc.ID
				}
			}
		}
	}
	return -1, ""
}

func checkDiscovery(t *testing.T, n *inventory.Node, p mockProfile) {
	if n.DriverVersion != p.System.DriverVersion || n.CUDADriverVersion != p.System.CUDAVersion {
		t.Errorf("driver %s CUDA %s, profile says %s and %s", n.DriverVersion, n.CUDADriverVersion, p.System.DriverVersion, p.System.CUDAVersion)
	}
	if len(n.GPUs) != len(p.Devices) {
		t.Fatalf("%d GPUs, profile lists %d", len(n.GPUs), len(p.Devices))
	}
	arch := func(s string) string { return strings.NewReplacer(" ", "", "_", "").Replace(strings.ToLower(s)) }
	for i, g := range n.GPUs {
		d := p.Devices[i]
		numa, _ := p.numa(d.PCI.BusID)
		var fabric *inventory.Fabric
		if f := d.Fabric; f != nil && (f.State == "auto" || f.State == "completed") && strings.Trim(f.ClusterUUID, "0-") != "" {
			fabric = &inventory.Fabric{ClusterUUID: strings.ToLower(f.ClusterUUID), CliqueID: f.CliqueID}
		}
		checks := []struct {
			field     string
			got, want any
		}{
			{"UUID", g.UUID, d.UUID},
			{"Name", g.Name, d.Name},
			{"Serial", g.Serial, d.Serial},
			{"Architecture", arch(g.Architecture), arch(d.Architecture)},
			{"Minor", g.Minor, d.Minor},
			{"MemoryBytes", g.MemoryBytes, d.Memory.Total},
			{"ComputeCapability", g.ComputeCapability, fmt.Sprintf("%d.%d", d.ComputeCapability.Major, d.ComputeCapability.Minor)},
			{"PCIBusID", normBusID(g.PCIBusID), normBusID(d.PCI.BusID)},
			{"NUMANode", g.NUMANode, numa},
			{"MIGEnabled", g.MIGEnabled, d.MIG.Mode == "enabled"},
			{"Fabric", fmt.Sprint(deref(g.Fabric)), fmt.Sprint(deref(fabric))},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("GPU %d %s = %v, profile says %v", i, c.field, c.got, c.want)
			}
		}
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// checkTopology compares the link matrix with what the profile's NVLink
// and PCIe sections describe: NVSwitches with links_per_gpu give every pair
// that many NVLinks; PCIe pairs on one root complex are PIX, on one NUMA node
// PHB, across NUMA nodes SYS, and a profile without a PCIe tree is all PIX.
func checkTopology(t *testing.T, n *inventory.Node, p mockProfile) {
	nv := 0
	if p.NVLink != nil && len(p.NVLink.Switches) > 0 {
		nv = p.NVLink.LinksPerGPU
	}
	for i := range n.GPUs {
		ni, ri := p.numa(p.Devices[i].PCI.BusID)
		for j := range n.GPUs {
			if i == j {
				continue
			}
			nj, rj := p.numa(p.Devices[j].PCI.BusID)
			want := inventory.Link{NVLinks: nv, PCIe: inventory.LevelPIX}
			switch {
			case p.PCIe == nil:
			case ni != nj:
				want.PCIe = inventory.LevelSYS
			case ri != "" && ri == rj:
				want.PCIe = inventory.LevelPIX
			default:
				want.PCIe = inventory.LevelPHB
			}
			if got := n.Link(i, j); got != want {
				t.Errorf("GPU%d-GPU%d link %+v, profile says %+v", i, j, got, want)
			}
		}
	}
}

// checkTelemetry samples every GPU: each value dcgm-exporter's default set
// reads is the one the profile sets.
func checkTelemetry(t *testing.T, b *Backend, n *inventory.Node, p mockProfile) {
	all := hardware.FieldGPUUtil | hardware.FieldMemCopyUtil | hardware.FieldFB | hardware.FieldFBReserved | hardware.FieldGPUTemp |
		hardware.FieldPower | hardware.FieldEnergy | hardware.FieldSMClock | hardware.FieldMemClock | hardware.FieldPCIeReplays | hardware.FieldRemappedRows
	for i, g := range n.GPUs {
		d := p.Devices[i]
		s, err := b.Sample(context.Background(), g.UUID)
		if err != nil {
			t.Fatalf("GPU %d: %v", i, err)
		}
		if s.Have&all != all {
			t.Errorf("GPU %d: sample has fields %#x, want all of %#x", i, s.Have, all)
		}
		mib := func(v uint64) float64 { return float64(v >> 20) }
		checks := []struct {
			metric    string
			got, want float64
		}{
			{"DCGM_FI_DEV_GPU_UTIL", s.GPUUtil, float64(d.Utilization.GPU)},
			{"DCGM_FI_DEV_MEM_COPY_UTIL", s.MemCopyUtil, float64(d.Utilization.Memory)},
			{"DCGM_FI_DEV_FB_USED", s.FBUsedMiB, mib(d.Memory.Used)},
			{"DCGM_FI_DEV_FB_FREE", s.FBFreeMiB, mib(d.Memory.Free)},
			{"DCGM_FI_DEV_FB_RESERVED", s.FBReservedMiB, mib(d.Memory.Reserved)},
			{"DCGM_FI_DEV_GPU_TEMP", s.GPUTempC, float64(d.Thermal.GPU)},
			{"DCGM_FI_DEV_POWER_USAGE", s.PowerW, float64(d.Power.DrawMW) / 1000},
			{"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", s.EnergyMJ, float64(d.Power.EnergyMJ)},
			{"DCGM_FI_DEV_SM_CLOCK", s.SMClockMHz, float64(d.Clocks.SM)},
			{"DCGM_FI_DEV_MEM_CLOCK", s.MemClockMHz, float64(d.Clocks.Memory)},
			{"DCGM_FI_DEV_PCIE_REPLAY_COUNTER", s.PCIeReplays, float64(d.PCIe.ReplayCounter)},
			{"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", s.RemappedCorrectable, float64(d.RemappedRows.Correctable)},
			{"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", s.RemappedUncorrectable, float64(d.RemappedRows.Uncorrectable)},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("GPU %d %s = %v, profile says %v", i, c.metric, c.got, c.want)
			}
		}
		if s.RowRemapFailure != d.RemappedRows.Failure {
			t.Errorf("GPU %d DCGM_FI_DEV_ROW_REMAP_FAILURE = %v, profile says %v", i, s.RowRemapFailure, d.RemappedRows.Failure)
		}
	}
}

// healthLog records every health change the monitor makes.
type healthLog struct {
	mu      sync.Mutex
	changes map[string][]inventory.Health
}

func (l *healthLog) DeviceEvent(hardware.Event) {}
func (l *healthLog) HealthChanged(uuid string, h inventory.Health) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.changes[uuid] = append(l.changes[uuid], h)
}

func (l *healthLog) saw(uuid string, h inventory.Health) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.changes[uuid] {
		if c == h {
			return true
		}
	}
	return false
}

// checkHealth injects the four faults the README describes with
// nvml-mock-ctl, one GPU each, into a running health monitor, and checks
// state, reason and recovery: reset-class faults (XID 48, uncorrectable ECC)
// stay until gpulet restarts after the reset, lost GPUs (XID 79 / fallen off
// the bus, lost) come back in place once the probe passes.
func checkHealth(t *testing.T, b *Backend, n *inventory.Node, mock string) {
	if len(n.GPUs) < 4 {
		t.Fatalf("%d GPUs; the fault checks need 4", len(n.GPUs))
	}
	// The driver's faults reach gpulet within the mock's override TTL (1 s)
	// plus one event wait and one sweep. This process runs only this test,
	// so the shorter periods stay (a stopped monitor does not wait for
	// Watch to return, and restoring them would race with it).
	waitTimeout, sweepEvery = 100*time.Millisecond, 100*time.Millisecond
	const quiet = time.Second
	const bound = 30 * time.Second

	ctl := func(args ...string) {
		t.Helper()
		full := append([]string{"--file", os.Getenv("MOCK_NVML_OVERRIDES"), "--config", os.Getenv("MOCK_NVML_CONFIG")}, args...)
		if out, err := exec.Command(filepath.Join(mock, "nvml-mock-ctl"), full...).CombinedOutput(); err != nil {
			t.Fatalf("nvml-mock-ctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	store := inventory.NewStore(n)
	policy, err := health.NewPolicy(nil)
	if err != nil {
		t.Fatal(err)
	}
	log := &healthLog{changes: map[string][]inventory.Health{}}
	mon := &health.Monitor{Backend: b, Store: store, Policy: policy, Quiet: quiet, Observer: log,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mon.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("monitor: %v", err)
		}
	}
	defer func() {
		if ctx.Err() == nil {
			stop()
		}
	}()

	const reset = "; reset the GPU, then restart gpulet"
	faults := []struct {
		name string
		args []string
		saw  inventory.Health // a health the monitor must have set
		held bool             // reset class: held after the fault clears
	}{
		{"XID 48", []string{"fail", "--gpu", "0", "--mode", "ecc_uncorrectable", "--xid", "48"},
			inventory.Health{Reason: "XID 48: double-bit ECC error" + reset, XID: 48}, true},
		{"XID 79, fallen off the bus", []string{"fail", "--gpu", "1", "--mode", "fallen_off_bus", "--xid", "79"},
			inventory.Health{Reason: "XID 79: GPU has fallen off the bus", XID: 79}, false},
		{"uncorrectable ECC", []string{"fail", "--gpu", "2", "--mode", "ecc_uncorrectable"},
			inventory.Health{Reason: "uncorrectable (double-bit) ECC error" + reset}, true},
		{"lost GPU", []string{"fail", "--gpu", "3", "--mode", "lost"},
			inventory.Health{Reason: "XID 79: GPU has fallen off the bus", XID: 79}, false},
	}
	for _, f := range faults {
		ctl(f.args...)
	}
	for i, f := range faults {
		uuid := n.GPUs[i].UUID
		waittest.Until(t, bound, fmt.Sprintf("GPU %d unhealthy after %s", i, f.name), func() bool { return log.saw(uuid, f.saw) })
		t.Logf("%s on GPU %d: %q", f.name, i, f.saw.Reason)
	}
	// The other GPUs are untouched.
	for i := len(faults); i < len(n.GPUs); i++ {
		if h, known := store.Snapshot().Health[n.GPUs[i].UUID]; known && !h.Healthy {
			t.Errorf("GPU %d became unhealthy: %+v", i, h)
		}
	}

	// The GPUs are fixed (the simulated reset): lost ones come back in
	// place; reset-class ones stay out while gpulet runs.
	ctl("reset", "--gpu", "all")
	for i, f := range faults {
		if f.held {
			continue
		}
		uuid := n.GPUs[i].UUID
		waittest.Until(t, bound, fmt.Sprintf("GPU %d healthy again after %s cleared", i, f.name), func() bool {
			return log.saw(uuid, inventory.Health{Healthy: true})
		})
	}
	for i, f := range faults {
		h, known := store.Snapshot().Health[n.GPUs[i].UUID]
		unhealthy := known && !h.Healthy
		if f.held && (!unhealthy || !strings.HasSuffix(h.Reason, reset)) {
			t.Errorf("GPU %d after %s and a reset, while gpulet runs: %+v, want held until restart", i, f.name, h)
		}
		if !f.held && unhealthy {
			t.Errorf("GPU %d after %s cleared: %+v, want healthy", i, f.name, h)
		}
	}
	// Restarting gpulet after the reset: the new process probes each GPU
	// (as gpulet list does) and every one passes.
	stop()
	for i, g := range n.GPUs {
		if err := b.Probe(context.Background(), g.UUID); err != nil {
			t.Errorf("GPU %d after the reset and a restart: probe: %v", i, err)
		}
	}
}
