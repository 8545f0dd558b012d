//go:build cgo && linux

// Package nvml is the real-GPU backend: discovery, topology and device
// events through NVIDIA's NVML (github.com/NVIDIA/go-nvml), which loads
// libnvidia-ml.so.1 at run time. Every NVML call that can hang runs under a
// deadline, so a wedged driver marks devices unhealthy instead of stalling
// gpulet.
package nvml

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

// LibraryPaths are tried in order when the dynamic loader's search path has
// no libnvidia-ml.so.1 (a driver container, GKE, a GPU-operator host).
var LibraryPaths = []string{
	"libnvidia-ml.so.1",
	"/usr/local/nvidia/lib64/libnvidia-ml.so.1",
	"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
	"/usr/lib64/libnvidia-ml.so.1",
	"/run/nvidia/driver/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
	"/home/kubernetes/bin/nvidia/lib64/libnvidia-ml.so.1",
}

// CallTimeout bounds one NVML call.
var CallTimeout = 5 * time.Second

// ErrLibraryNotFound means no NVML library could be loaded.
var ErrLibraryNotFound = errors.New("libnvidia-ml.so.1 not found")

// Backend reads real GPUs through NVML.
type Backend struct {
	lib     nvml.Interface
	libPath string
	sysRoot string // "/" normally; tests point it elsewhere

	mu    sync.Mutex
	stuck string // the NVML call that never returned, if any
}

var _ hardware.Backend = (*Backend)(nil)

// New loads NVML and initialises it. A missing library or driver gives an
// error that says what to check, never a panic or an empty node.
func New() (hardware.Backend, error) {
	var tried []string
	for _, p := range LibraryPaths {
		if strings.HasPrefix(p, "/") {
			if _, err := os.Stat(p); err != nil {
				continue
			}
		}
		lib := nvml.New(nvml.WithLibraryPath(p))
		ret := lib.Init()
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			tried = append(tried, p)
			continue
		}
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("NVML (%s) failed to initialise: %s: the NVIDIA driver is loaded but not usable; check `nvidia-smi` on the node and the kernel log (dmesg) for NVRM errors", p, nvml.ErrorString(ret))
		}
		return &Backend{lib: lib, libPath: p, sysRoot: "/"}, nil
	}
	return nil, fmt.Errorf("%w (tried %s): this node has no NVIDIA driver visible to gpulet. On a GPU node, check that the driver is installed (`nvidia-smi` works on the host) and that the container sees it (the NVIDIA container toolkit, or a hostPath mount of the driver's lib folder plus LD_LIBRARY_PATH). On a machine without GPUs, use --backend=sim",
		ErrLibraryNotFound, strings.Join(tried, ", "))
}

func (b *Backend) Name() string { return "nvml" }

// Close shuts NVML down.
func (b *Backend) Close() error {
	if ret := b.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("NVML shutdown: %s", nvml.ErrorString(ret))
	}
	return nil
}

// call runs f under CallTimeout. A call that never returns leaves its
// goroutine behind (NVML cannot be interrupted) and makes later calls fail
// fast instead of piling up.
func call[T any](b *Backend, what string, f func() (T, nvml.Return)) (T, error) {
	var zero T
	b.mu.Lock()
	stuck := b.stuck
	b.mu.Unlock()
	if stuck != "" {
		return zero, fmt.Errorf("NVML %s skipped: an earlier call (%s) never returned; the driver is wedged", what, stuck)
	}
	type result struct {
		v   T
		ret nvml.Return
	}
	done := make(chan result, 1)
	go func() {
		v, ret := f()
		done <- result{v, ret}
	}()
	t := time.NewTimer(CallTimeout)
	defer t.Stop()
	select {
	case r := <-done:
		if r.ret != nvml.SUCCESS {
			return zero, nvmlError{what, r.ret}
		}
		return r.v, nil
	case <-t.C:
		b.mu.Lock()
		b.stuck = what
		b.mu.Unlock()
		go func() { // forget the stuck call once it returns
			<-done
			b.mu.Lock()
			b.stuck = ""
			b.mu.Unlock()
		}()
		return zero, fmt.Errorf("NVML %s did not return within %s", what, CallTimeout)
	}
}

type nvmlError struct {
	what string
	ret  nvml.Return
}

func (e nvmlError) Error() string { return fmt.Sprintf("NVML %s: %s", e.what, nvml.ErrorString(e.ret)) }

func notSupported(err error) bool {
	var ne nvmlError
	return errors.As(err, &ne) && (ne.ret == nvml.ERROR_NOT_SUPPORTED || ne.ret == nvml.ERROR_INVALID_ARGUMENT)
}

// Discover reads every GPU, its MIG devices and the links between GPUs.
func (b *Backend) Discover(context.Context) (*inventory.Node, error) {
	n := &inventory.Node{Backend: "nvml", DevRoot: filepath.Join(b.sysRoot, "dev")}
	var err error
	if n.DriverVersion, err = call(b, "SystemGetDriverVersion", b.lib.SystemGetDriverVersion); err != nil {
		return nil, err
	}
	cuda, err := call(b, "SystemGetCudaDriverVersion", b.lib.SystemGetCudaDriverVersion)
	if err != nil {
		return nil, err
	}
	n.CUDADriverVersion = fmt.Sprintf("%d.%d", cuda/1000, (cuda%1000)/10)
	count, err := call(b, "DeviceGetCount", b.lib.DeviceGetCount)
	if err != nil {
		return nil, err
	}
	if count == 0 {
		return nil, errors.New("NVML loaded but reports no GPUs: check `nvidia-smi -L` on the node; GPUs excluded by the driver or bound to vfio are not visible")
	}
	handles := make([]nvml.Device, count)
	for i := 0; i < count; i++ {
		h, err := call(b, fmt.Sprintf("DeviceGetHandleByIndex(%d)", i), func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByIndex(i) })
		if err != nil {
			return nil, err
		}
		handles[i] = h
		g, err := b.gpu(i, h)
		if err != nil {
			return nil, fmt.Errorf("GPU %d: %w", i, err)
		}
		n.GPUs = append(n.GPUs, g)
	}
	n.Links = b.links(handles, n.GPUs)
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("NVML inventory is inconsistent: %w", err)
	}
	return n, nil
}

func (b *Backend) gpu(i int, h nvml.Device) (inventory.GPU, error) {
	g := inventory.GPU{Index: i, NUMANode: -1}
	var err error
	if g.UUID, err = call(b, "GetUUID", h.GetUUID); err != nil {
		return g, err
	}
	if g.Name, err = call(b, "GetName", h.GetName); err != nil {
		return g, err
	}
	if g.Minor, err = call(b, "GetMinorNumber", h.GetMinorNumber); err != nil {
		return g, err
	}
	mem, err := call(b, "GetMemoryInfo", h.GetMemoryInfo)
	if err != nil {
		return g, err
	}
	g.MemoryBytes = mem.Total
	cc, err := call(b, "GetCudaComputeCapability", func() ([2]int, nvml.Return) {
		major, minor, ret := h.GetCudaComputeCapability()
		return [2]int{major, minor}, ret
	})
	if err != nil {
		return g, err
	}
	g.ComputeCapability = fmt.Sprintf("%d.%d", cc[0], cc[1])
	pci, err := call(b, "GetPciInfo", h.GetPciInfo)
	if err != nil {
		return g, err
	}
	g.PCIBusID = busID(pci)
	if numa, err := call(b, "GetNumaNodeId", h.GetNumaNodeId); err == nil {
		g.NUMANode = numa
	} else {
		g.NUMANode = b.sysfsNUMA(g.PCIBusID)
	}
	if s, err := call(b, "GetSerial", h.GetSerial); err == nil {
		g.Serial = s
	}
	if a, err := call(b, "GetArchitecture", h.GetArchitecture); err == nil {
		g.Architecture = archName(a)
	}
	mode, err := call(b, "GetMigMode", func() (int, nvml.Return) {
		cur, _, ret := h.GetMigMode()
		return cur, ret
	})
	switch {
	case err == nil:
		g.MIGCapable = true
		g.MIGEnabled = mode == nvml.DEVICE_MIG_ENABLE
	case !notSupported(err):
		return g, err
	}
	if g.MIGEnabled {
		if g.MIGDevices, err = b.migDevices(h); err != nil {
			return g, err
		}
	}
	return g, nil
}

func (b *Backend) migDevices(h nvml.Device) ([]inventory.MIGDevice, error) {
	max, err := call(b, "GetMaxMigDeviceCount", h.GetMaxMigDeviceCount)
	if err != nil {
		return nil, err
	}
	var out []inventory.MIGDevice
	for i := 0; i < max; i++ {
		m, err := call(b, "GetMigDeviceHandleByIndex", func() (nvml.Device, nvml.Return) { return h.GetMigDeviceHandleByIndex(i) })
		if errors.Is(err, nvmlError{"GetMigDeviceHandleByIndex", nvml.ERROR_NOT_FOUND}) {
			continue // an empty slot
		}
		if err != nil {
			return nil, err
		}
		d := inventory.MIGDevice{}
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
		d.MemoryBytes = attr.MemorySizeMB << 20
		d.Profile = migProfile(attr.GpuInstanceSliceCount, attr.MemorySizeMB)
		out = append(out, d)
	}
	return out, nil
}

// migProfile names a MIG instance the way nvidia-smi does (1g.18gb).
func migProfile(slices uint32, memMB uint64) string {
	gb := (memMB + 1023) / 1024
	return fmt.Sprintf("%dg.%dgb", slices, gb)
}

// links reads NVLink counts and PCIe common ancestors once per discovery.
func (b *Backend) links(handles []nvml.Device, gpus []inventory.GPU) [][]inventory.Link {
	n := len(handles)
	links := make([][]inventory.Link, n)
	byBus := map[string]int{}
	for i, g := range gpus {
		byBus[strings.ToLower(g.PCIBusID)] = i
		links[i] = make([]inventory.Link, n)
	}
	// NVLinks to each peer GPU, and to NVSwitches (peers through a switch
	// get the smaller of the two GPUs' switch link counts).
	toSwitch := make([]int, n)
	for i, h := range handles {
		for l := 0; l < nvml.NVLINK_MAX_LINKS; l++ {
			state, err := call(b, "GetNvLinkState", func() (nvml.EnableState, nvml.Return) { return h.GetNvLinkState(l) })
			if err != nil || state != nvml.FEATURE_ENABLED {
				continue
			}
			remote, err := call(b, "GetNvLinkRemotePciInfo", func() (nvml.PciInfo, nvml.Return) { return h.GetNvLinkRemotePciInfo(l) })
			if err != nil {
				continue
			}
			if j, ok := byBus[strings.ToLower(busID(remote))]; ok && j != i {
				links[i][j].NVLinks++
			} else {
				toSwitch[i]++
			}
		}
	}
	for i := range handles {
		for j := range handles {
			if i == j {
				continue
			}
			if links[i][j].NVLinks == 0 && toSwitch[i] > 0 && toSwitch[j] > 0 {
				links[i][j].NVLinks = min(toSwitch[i], toSwitch[j])
			}
			if j < i {
				links[i][j].PCIe = links[j][i].PCIe
				continue
			}
			lvl, err := call(b, "GetTopologyCommonAncestor", func() (nvml.GpuTopologyLevel, nvml.Return) {
				return handles[i].GetTopologyCommonAncestor(handles[j])
			})
			if err == nil {
				links[i][j].PCIe = level(lvl)
			} else if gpus[i].NUMANode >= 0 && gpus[i].NUMANode == gpus[j].NUMANode {
				links[i][j].PCIe = inventory.LevelNODE
			} else {
				links[i][j].PCIe = inventory.LevelSYS
			}
		}
	}
	// Keep the matrix symmetric even if NVML counted links asymmetrically.
	for i := range links {
		for j := i + 1; j < n; j++ {
			m := min(links[i][j].NVLinks, links[j][i].NVLinks)
			if m == 0 {
				m = max(links[i][j].NVLinks, links[j][i].NVLinks)
			}
			links[i][j].NVLinks, links[j][i].NVLinks = m, m
		}
	}
	return links
}

func level(l nvml.GpuTopologyLevel) inventory.Level {
	switch l {
	case nvml.TOPOLOGY_INTERNAL:
		return inventory.LevelSame
	case nvml.TOPOLOGY_SINGLE:
		return inventory.LevelPIX
	case nvml.TOPOLOGY_MULTIPLE:
		return inventory.LevelPXB
	case nvml.TOPOLOGY_HOSTBRIDGE:
		return inventory.LevelPHB
	case nvml.TOPOLOGY_NODE:
		return inventory.LevelNODE
	default:
		return inventory.LevelSYS
	}
}

func busID(p nvml.PciInfo) string {
	var sb strings.Builder
	for _, c := range p.BusId {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

// sysfsNUMA reads the NUMA node from sysfs when NVML does not know it.
func (b *Backend) sysfsNUMA(bus string) int {
	// NVML's 8-digit domain; sysfs uses 4 (00000000:00:06.0 -> 0000:00:06.0).
	id := strings.ToLower(bus)
	if len(id) == 16 {
		id = id[4:]
	}
	data, err := os.ReadFile(filepath.Join(b.sysRoot, "sys/bus/pci/devices", id, "numa_node"))
	if err != nil {
		return -1
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || v < 0 {
		return -1
	}
	return v
}

func archName(a nvml.DeviceArchitecture) string {
	names := map[nvml.DeviceArchitecture]string{
		nvml.DEVICE_ARCH_KEPLER: "Kepler", nvml.DEVICE_ARCH_MAXWELL: "Maxwell", nvml.DEVICE_ARCH_PASCAL: "Pascal",
		nvml.DEVICE_ARCH_VOLTA: "Volta", nvml.DEVICE_ARCH_TURING: "Turing", nvml.DEVICE_ARCH_AMPERE: "Ampere",
		nvml.DEVICE_ARCH_ADA: "Ada Lovelace", nvml.DEVICE_ARCH_HOPPER: "Hopper",
	}
	if s, ok := names[a]; ok {
		return s
	}
	return fmt.Sprintf("arch-%d", a)
}

// Probe checks a device end to end: the handle, a memory query, row
// remapping and uncorrected ECC counters.
func (b *Backend) Probe(_ context.Context, uuid string) error {
	h, err := call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(uuid) })
	if err != nil {
		return err
	}
	if _, err := call(b, "GetMemoryInfo", h.GetMemoryInfo); err != nil {
		return err
	}
	failed, err := call(b, "GetRemappedRows", func() (bool, nvml.Return) {
		_, _, _, failure, ret := h.GetRemappedRows()
		return failure, ret
	})
	if err == nil && failed {
		return errors.New("row remapping failed: the GPU needs a reset or replacement")
	}
	dbe, err := call(b, "GetTotalEccErrors", func() (uint64, nvml.Return) {
		return h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC)
	})
	if err == nil && dbe > 0 {
		return fmt.Errorf("%d uncorrected ECC errors since the last reset", dbe)
	}
	return nil
}

// Watch reports XID and double-bit ECC events for every GPU until ctx ends.
func (b *Backend) Watch(ctx context.Context, events chan<- hardware.Event) error {
	set, err := call(b, "EventSetCreate", b.lib.EventSetCreate)
	if err != nil {
		return err
	}
	defer set.Free()
	count, err := call(b, "DeviceGetCount", b.lib.DeviceGetCount)
	if err != nil {
		return err
	}
	const wanted = uint64(nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError)
	for i := 0; i < count; i++ {
		h, ret := b.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		uuid, _ := h.GetUUID()
		supported, ret := h.GetSupportedEventTypes()
		if ret != nvml.SUCCESS || supported&wanted == 0 {
			events <- hardware.Event{Kind: hardware.EventUnhealthy, UUID: uuid, Reason: "device does not report XID events; health cannot be watched"}
			continue
		}
		if ret := h.RegisterEvents(supported&wanted, set); ret != nvml.SUCCESS {
			return fmt.Errorf("NVML RegisterEvents for GPU %d: %s", i, nvml.ErrorString(ret))
		}
	}
	for ctx.Err() == nil {
		// A short wait keeps shutdown quick; NVML has no cancellable wait.
		data, ret := set.Wait(500)
		switch ret {
		case nvml.SUCCESS:
		case nvml.ERROR_TIMEOUT:
			continue
		case nvml.ERROR_GPU_IS_LOST:
			events <- hardware.Event{Kind: hardware.EventXID, XID: 79, Reason: "NVML reports a GPU lost"}
			continue
		default:
			return fmt.Errorf("NVML event wait: %s", nvml.ErrorString(ret))
		}
		ev := hardware.Event{}
		if data.Device != nil {
			ev.UUID, _ = data.Device.GetUUID()
		}
		switch {
		case data.EventType&nvml.EventTypeXidCriticalError != 0:
			ev.Kind, ev.XID = hardware.EventXID, data.EventData
		case data.EventType&nvml.EventTypeDoubleBitEccError != 0:
			ev.Kind = hardware.EventECCDoubleBit
		default:
			continue
		}
		select {
		case events <- ev:
		case <-ctx.Done():
		}
	}
	return nil
}
