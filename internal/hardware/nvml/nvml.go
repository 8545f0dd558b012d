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
	"log/slog"
	"math"
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

// errWedged is wrapped by every error caused by an NVML call that outlived
// CallTimeout, and by the errors of calls refused while one has not returned.
var errWedged = errors.New("the NVIDIA driver is not responding")

// waitTimeout is how long one event wait blocks inside NVML. Watch does not
// need it to notice cancellation; it bounds how long a wait may take before
// the driver counts as wedged (waitTimeout + CallTimeout).
var waitTimeout = time.Second

// lostRetry is how long Watch pauses after NVML reports a lost GPU, so a GPU
// that stays lost is reported again without a busy loop.
var lostRetry = 5 * time.Second

// invalidID is NVML's GPU/compute instance ID of an event outside MIG.
const invalidID = 0xFFFFFFFF

// Backend reads real GPUs through NVML.
type Backend struct {
	lib     nvml.Interface
	libPath string
	sysRoot string // "/" normally; tests point it elsewhere
	devRoot string // host folder of the nvidia* device nodes

	mu      sync.Mutex
	stuck   map[uint64]stuckCall // NVML calls that outlived CallTimeout and have not returned
	stuckID uint64
	node    *inventory.Node // the last discovery, for Watch and Probe
}

type stuckCall struct {
	what  string
	since time.Time
}

var _ hardware.Backend = (*Backend)(nil)

// newBackend wraps an initialised NVML interface (the real library, or a
// go-nvml mock in tests). sysRoot is where sys/ and dev/ are found.
func newBackend(lib nvml.Interface, sysRoot string) *Backend {
	return &Backend{lib: lib, sysRoot: sysRoot, devRoot: filepath.Join(sysRoot, "dev"), stuck: map[uint64]stuckCall{}}
}

// Options say where the driver lives on the host, as NVIDIA's plugin takes
// them (NVIDIA_DRIVER_ROOT, NVIDIA_DEV_ROOT): "/" for a driver installed on
// the host, /run/nvidia/driver for the GPU operator's driver container.
type Options struct {
	DriverRoot string // where the driver's libraries are; default "/"
	DevRoot    string // where dev/nvidia* are, as the container runtime sees it; default DriverRoot
}

// libraryPaths lists the NVML libraries to try: under the driver root
// first, then the usual places.
func (o Options) libraryPaths() []string {
	var out []string
	if o.DriverRoot != "" && o.DriverRoot != "/" {
		for _, p := range LibraryPaths {
			if strings.HasPrefix(p, "/") {
				out = append(out, filepath.Join(o.DriverRoot, p))
			}
		}
	}
	return append(out, LibraryPaths...)
}

// New loads NVML and initialises it. A missing library or driver gives an
// error that says what to check, never a panic or an empty node.
func New(opts Options) (hardware.Backend, error) {
	if opts.DriverRoot == "" {
		opts.DriverRoot = "/"
	}
	if opts.DevRoot == "" {
		opts.DevRoot = opts.DriverRoot
	}
	var tried []string
	for _, p := range opts.libraryPaths() {
		tried = append(tried, p)
		if strings.HasPrefix(p, "/") {
			if _, err := os.Stat(p); err != nil {
				continue
			}
		}
		// The first library that loads is the one: go-nvml binds NVML's
		// symbols globally, so a later path could not replace it.
		lib := nvml.New(nvml.WithLibraryPath(p))
		b := newBackend(lib, "/")
		b.libPath = p
		b.devRoot = filepath.Join(opts.DevRoot, "dev")
		err := b.do("Init", lib.Init)
		var ne nvmlError
		if errors.As(err, &ne) && ne.ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("NVML (%s) failed to initialise: %v: the NVIDIA driver is installed but not usable; check `nvidia-smi` on the node and the kernel log (dmesg) for NVRM or Xid errors", p, err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w (tried %s): this node has no NVIDIA driver visible to gpulet. On a GPU node, check that the driver is installed (`nvidia-smi` works on the host) and that the container sees it (the NVIDIA container toolkit, or a hostPath mount of the driver's lib folder plus LD_LIBRARY_PATH). On a machine without GPUs, use --backend=sim",
		ErrLibraryNotFound, strings.Join(tried, ", "))
}

func (b *Backend) Name() string { return "nvml" }

// Close shuts NVML down. On a wedged driver it gives up rather than hang.
func (b *Backend) Close() error {
	if err := b.do("Shutdown", b.lib.Shutdown); err != nil {
		return fmt.Errorf("NVML shutdown: %w", err)
	}
	return nil
}

// wedged says why calls are refused now: an earlier call never returned.
func (b *Backend) wedged(what string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var oldest stuckCall
	for _, s := range b.stuck {
		if oldest.what == "" || s.since.Before(oldest.since) {
			oldest = s
		}
	}
	if oldest.what == "" {
		return nil
	}
	return fmt.Errorf("NVML %s skipped: NVML %s has not returned for %s (%w)",
		what, oldest.what, time.Since(oldest.since).Round(time.Millisecond), errWedged)
}

// markStuck records a call that outlived its deadline; the returned func
// forgets it once the call returns.
func (b *Backend) markStuck(what string, since time.Time) func() {
	b.mu.Lock()
	b.stuckID++
	id := b.stuckID
	b.stuck[id] = stuckCall{what, since}
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		delete(b.stuck, id)
		b.mu.Unlock()
	}
}

// call runs f under CallTimeout. A call that never returns leaves its
// goroutine behind (NVML cannot be interrupted) and makes later calls fail
// fast instead of piling up, until it returns.
func call[T any](b *Backend, what string, f func() (T, nvml.Return)) (T, error) {
	var zero T
	if err := b.wedged(what); err != nil {
		return zero, err
	}
	type result struct {
		v   T
		ret nvml.Return
	}
	timeout := CallTimeout
	start := time.Now()
	done := make(chan result, 1)
	go func() {
		v, ret := f()
		done <- result{v, ret}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-done:
		if r.ret != nvml.SUCCESS {
			return zero, nvmlError{what, r.ret}
		}
		return r.v, nil
	case <-t.C:
		forget := b.markStuck(what, start)
		go func() {
			<-done
			forget()
		}()
		return zero, fmt.Errorf("NVML %s did not return within %s (%w)", what, timeout, errWedged)
	}
}

// do is call for NVML functions that return only a status.
func (b *Backend) do(what string, f func() nvml.Return) error {
	_, err := call(b, what, func() (struct{}, nvml.Return) { return struct{}{}, f() })
	return err
}

type nvmlError struct {
	what string
	ret  nvml.Return
}

func (e nvmlError) Error() string { return fmt.Sprintf("NVML %s: %s", e.what, nvml.ErrorString(e.ret)) }

// unsupported reports an NVML answer that means "this device or driver
// cannot tell", as opposed to a failure.
func unsupported(err error) bool {
	var ne nvmlError
	return errors.As(err, &ne) && (ne.ret == nvml.ERROR_NOT_SUPPORTED || ne.ret == nvml.ERROR_FUNCTION_NOT_FOUND || ne.ret == nvml.ERROR_INVALID_ARGUMENT)
}

func isReturn(err error, ret nvml.Return) bool {
	var ne nvmlError
	return errors.As(err, &ne) && ne.ret == ret
}

// hung keeps only the errors of a wedged driver: optional queries ignore
// every other failure, but must not hide a call that never returned.
func hung(err error) error {
	if errors.Is(err, errWedged) {
		return err
	}
	return nil
}

// Discover reads every GPU, its MIG devices and the links between GPUs.
func (b *Backend) Discover(ctx context.Context) (*inventory.Node, error) {
	n := &inventory.Node{Backend: "nvml", DevRoot: b.devRoot}
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
		if err := ctx.Err(); err != nil {
			return nil, err
		}
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
	if n.Links, err = b.links(handles, n.GPUs); err != nil {
		return nil, fmt.Errorf("GPU topology: %w", err)
	}
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("NVML inventory is inconsistent: %w", err)
	}
	b.mu.Lock()
	b.node = n
	b.mu.Unlock()
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
	numa, err := call(b, "GetNumaNodeId", h.GetNumaNodeId)
	switch {
	case hung(err) != nil:
		return g, err
	case err == nil && numa >= 0:
		g.NUMANode = numa
	default:
		g.NUMANode = b.sysfsNUMA(g.PCIBusID)
	}
	s, err := call(b, "GetSerial", h.GetSerial)
	if hung(err) != nil {
		return g, err
	} else if err == nil {
		g.Serial = s
	}
	a, err := call(b, "GetArchitecture", h.GetArchitecture)
	if hung(err) != nil {
		return g, err
	} else if err == nil {
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
	case !unsupported(err):
		return g, err
	}
	if g.MIGEnabled {
		if g.MIGDevices, err = b.migDevices(h, g.MemoryBytes); err != nil {
			return g, err
		}
	}
	return g, nil
}

func (b *Backend) migDevices(h nvml.Device, gpuMemory uint64) ([]inventory.MIGDevice, error) {
	max, err := call(b, "GetMaxMigDeviceCount", h.GetMaxMigDeviceCount)
	if err != nil {
		return nil, err
	}
	var out []inventory.MIGDevice
	var giProfiles map[uint32]int // GPU instance profile ID -> GPU_INSTANCE_PROFILE_* index
	for i := 0; i < max; i++ {
		m, err := call(b, "GetMigDeviceHandleByIndex", func() (nvml.Device, nvml.Return) { return h.GetMigDeviceHandleByIndex(i) })
		if isReturn(err, nvml.ERROR_NOT_FOUND) || isReturn(err, nvml.ERROR_INVALID_ARGUMENT) {
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
		if giProfiles == nil {
			if giProfiles, err = b.giProfileIndex(h); err != nil {
				return nil, err
			}
		}
		suffix, err := b.migSuffix(h, d.GI, giProfiles)
		if err != nil {
			return nil, err
		}
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

// giProfileIndex maps the GPU's GPU-instance profile IDs to the profile
// constants (GPU_INSTANCE_PROFILE_1_SLICE_REV1...) that say which attributes
// (+me, +gfx, -me) a profile has. The two differ on real GPUs.
func (b *Backend) giProfileIndex(h nvml.Device) (map[uint32]int, error) {
	ids := map[uint32]int{}
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
		ids[info.Id] = p
	}
	return ids, nil
}

// migSuffix finds the attribute suffix of MIG instance gi's profile. It is
// best effort: reading GPU instances may need privileges gpulet lacks, and
// then the plain name (1g.10gb) is used.
func (b *Backend) migSuffix(h nvml.Device, gi int, giProfiles map[uint32]int) (string, error) {
	inst, err := call(b, "GetGpuInstanceById", func() (nvml.GpuInstance, nvml.Return) { return h.GetGpuInstanceById(gi) })
	if err != nil {
		return "", hung(err)
	}
	info, err := call(b, "GpuInstance GetInfo", inst.GetInfo)
	if err != nil {
		return "", hung(err)
	}
	p, ok := giProfiles[info.ProfileId]
	if !ok {
		return "", nil
	}
	switch p {
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1, nvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1:
		return "+me", nil
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME:
		return "+me.all", nil
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_2_SLICE_GFX,
		nvml.GPU_INSTANCE_PROFILE_3_SLICE_GFX, nvml.GPU_INSTANCE_PROFILE_4_SLICE_GFX:
		return "+gfx", nil
	case nvml.GPU_INSTANCE_PROFILE_1_SLICE_NO_ME, nvml.GPU_INSTANCE_PROFILE_2_SLICE_NO_ME:
		return "-me", nil
	}
	return "", nil
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
	const oneMB, oneGB = 1 << 20, 1 << 30
	if gpuMemory == 0 {
		return (memMB + 1023) / 1024
	}
	frac := float64(memMB) * oneMB / float64(gpuMemory)
	frac = math.Ceil(frac*8) / 8
	totalGB := float64((gpuMemory + oneGB - 1) / oneGB)
	return uint64(math.Round(frac * totalGB))
}

// links reads NVLink counts and PCIe common ancestors once per discovery.
// Only a wedged driver fails it; a link NVML cannot describe is left out.
func (b *Backend) links(handles []nvml.Device, gpus []inventory.GPU) ([][]inventory.Link, error) {
	n := len(handles)
	links := make([][]inventory.Link, n)
	byBus := map[string]int{}
	for i, g := range gpus {
		byBus[normBusID(g.PCIBusID)] = i
		links[i] = make([]inventory.Link, n)
	}
	// NVLinks to each peer GPU, and to NVSwitches (peers through a switch
	// get the smaller of the two GPUs' switch link counts).
	toSwitch := make([]int, n)
	for i, h := range handles {
		for l := 0; l < nvml.NVLINK_MAX_LINKS; l++ {
			state, err := call(b, "GetNvLinkState", func() (nvml.EnableState, nvml.Return) { return h.GetNvLinkState(l) })
			if hung(err) != nil {
				return nil, err
			}
			if err != nil || state != nvml.FEATURE_ENABLED {
				continue
			}
			kind, kindErr := call(b, "GetNvLinkRemoteDeviceType", func() (nvml.IntNvLinkDeviceType, nvml.Return) {
				return h.GetNvLinkRemoteDeviceType(l)
			})
			if hung(kindErr) != nil {
				return nil, kindErr
			}
			if kindErr == nil {
				switch kind {
				case nvml.NVLINK_DEVICE_TYPE_SWITCH:
					toSwitch[i]++
					continue
				case nvml.NVLINK_DEVICE_TYPE_IBMNPU:
					continue // a link to the CPU (POWER9)
				}
			}
			remote, err := call(b, "GetNvLinkRemotePciInfo", func() (nvml.PciInfo, nvml.Return) { return h.GetNvLinkRemotePciInfo(l) })
			if hung(err) != nil {
				return nil, err
			}
			if err != nil {
				continue
			}
			j, isGPU := byBus[normBusID(busID(remote))]
			switch {
			case isGPU && j != i:
				links[i][j].NVLinks++
			case kindErr != nil || kind == nvml.NVLINK_DEVICE_TYPE_UNKNOWN:
				// A driver that cannot name the far end: a link to
				// something that is not one of our GPUs is an NVSwitch.
				if !isGPU {
					toSwitch[i]++
				}
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
			switch {
			case hung(err) != nil:
				return nil, err
			case err == nil:
				links[i][j].PCIe = level(lvl)
			case gpus[i].NUMANode >= 0 && gpus[i].NUMANode == gpus[j].NUMANode:
				links[i][j].PCIe = inventory.LevelNODE
			default:
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
	return links, nil
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

// busID is the GPU's PCI address as NVML writes it (00000000:07:00.0).
func busID(p nvml.PciInfo) string {
	for _, s := range [][]int8{p.BusId[:], p.BusIdLegacy[:]} {
		var sb strings.Builder
		for _, c := range s {
			if c == 0 {
				break
			}
			sb.WriteByte(byte(c))
		}
		if sb.Len() > 0 {
			return sb.String()
		}
	}
	return fmt.Sprintf("%08X:%02X:%02X.0", p.Domain, p.Bus, p.Device)
}

// normBusID writes a PCI address as sysfs names it: lower case, the domain
// in at least four hex digits (NVML's 00000000:07:00.0 is 0000:07:00.0).
func normBusID(bus string) string {
	id := strings.ToLower(strings.TrimSpace(bus))
	dom, rest, ok := strings.Cut(id, ":")
	if !ok || !strings.Contains(rest, ":") {
		return id // no domain
	}
	d, err := strconv.ParseUint(dom, 16, 32)
	if err != nil {
		return id
	}
	return fmt.Sprintf("%04x:%s", d, rest)
}

// sysfsNUMA reads the NUMA node from sysfs when NVML does not know it.
func (b *Backend) sysfsNUMA(bus string) int {
	data, err := os.ReadFile(filepath.Join(b.sysRoot, "sys/bus/pci/devices", normBusID(bus), "numa_node"))
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
		nvml.DEVICE_ARCH_ADA: "Ada Lovelace", nvml.DEVICE_ARCH_HOPPER: "Hopper", nvml.DEVICE_ARCH_BLACKWELL: "Blackwell",
		nvml.DEVICE_ARCH_RUBIN: "Rubin",
	}
	if s, ok := names[a]; ok {
		return s
	}
	return fmt.Sprintf("arch-%d", a)
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

// Probe checks a device end to end: the handle, a memory query, row
// remapping and uncorrected ECC counters (of the parent GPU for a MIG
// device). A check the device does not support is skipped; any other
// failure, a hung call included, makes the device unhealthy.
func (b *Backend) Probe(ctx context.Context, uuid string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(uuid) })
	if err != nil {
		return err
	}
	if _, err := call(b, "GetMemoryInfo", h.GetMemoryInfo); err != nil {
		return err
	}
	if parent := b.migParent(uuid); parent != "" {
		if h, err = call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(parent) }); err != nil {
			return fmt.Errorf("parent GPU %s: %w", parent, err)
		}
	}
	failed, err := call(b, "GetRemappedRows", func() (bool, nvml.Return) {
		_, _, _, failure, ret := h.GetRemappedRows()
		return failure, ret
	})
	if err != nil && !unsupported(err) {
		return err
	}
	if err == nil && failed {
		return errors.New("row remapping failed: the GPU needs a reset or replacement")
	}
	dbe, err := call(b, "GetTotalEccErrors", func() (uint64, nvml.Return) {
		return h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC)
	})
	if err != nil && !unsupported(err) {
		return err
	}
	if err == nil && dbe > 0 {
		return fmt.Errorf("%d uncorrected ECC errors since the last reset", dbe)
	}
	return nil
}

// gpuUUIDs lists the GPUs to watch: those of the last discovery, or what
// NVML enumerates when Watch runs before Discover.
func (b *Backend) gpuUUIDs() ([]string, error) {
	b.mu.Lock()
	node := b.node
	b.mu.Unlock()
	var out []string
	if node != nil {
		for _, g := range node.GPUs {
			out = append(out, g.UUID)
		}
		return out, nil
	}
	count, err := call(b, "DeviceGetCount", b.lib.DeviceGetCount)
	if err != nil {
		return nil, err
	}
	for i := 0; i < count; i++ {
		h, err := call(b, "DeviceGetHandleByIndex", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByIndex(i) })
		if err != nil {
			return nil, err
		}
		u, err := call(b, "GetUUID", h.GetUUID)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

const wantedEvents = uint64(nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError)

// errUnwatchable means a GPU's driver cannot deliver the events Watch needs.
var errUnwatchable = errors.New("the GPU cannot report XID or ECC events")

// retryPause is how long Watch waits before retrying what a wedged driver
// refused.
var retryPause = time.Second

// register adds one GPU's XID and double-bit ECC events to set.
func (b *Backend) register(uuid string, set nvml.EventSet) error {
	h, err := call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(uuid) })
	if err != nil {
		return err
	}
	supported, err := call(b, "GetSupportedEventTypes", h.GetSupportedEventTypes)
	if unsupported(err) {
		return fmt.Errorf("%w: %v", errUnwatchable, err)
	}
	if err != nil {
		return err
	}
	if supported&wantedEvents == 0 {
		return fmt.Errorf("%w: it supports event mask %#x only", errUnwatchable, supported)
	}
	err = b.do("RegisterEvents", func() nvml.Return { return h.RegisterEvents(supported&wantedEvents, set) })
	if unsupported(err) {
		return fmt.Errorf("%w: %v", errUnwatchable, err)
	}
	return err
}

// Watch reports XID and double-bit ECC events for every GPU until ctx ends.
//
// A GPU whose driver cannot deliver these events is logged and left
// healthy: nothing is wrong with it, it is only unwatched. (NVIDIA's plugin
// marks such a GPU unhealthy until the plugin restarts, which is why users of
// vGPU guests turn all its health checks off; here the monitor would re-probe
// it healthy after its quiet period anyway, so the mark would only be an
// outage at every watch start.) A GPU that fails while registering is
// reported unhealthy, and a driver that stops answering makes every GPU
// unhealthy; Watch keeps going and retries once the driver answers again.
func (b *Backend) Watch(ctx context.Context, events chan<- hardware.Event) error {
	send := func(ev hardware.Event) bool {
		select {
		case events <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	pause := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(retryPause):
			return true
		}
	}
	uuids, err := b.gpuUUIDs()
	if err != nil {
		return err
	}
	set, err := call(b, "EventSetCreate", b.lib.EventSetCreate)
	if err != nil {
		return err
	}
	free := true // false once a wait that never returned owns the set
	defer func() {
		if free {
			set.Free()
		}
	}()
	watched := 0
	pending := uuids // to register; those a wedged driver refused stay here
	register := func() bool {
		var retry []string
		for _, uuid := range pending {
			err := b.register(uuid, set)
			switch {
			case err == nil:
				watched++
			case errors.Is(err, errUnwatchable):
				slog.Warn("GPU cannot report XID or ECC events; it stays schedulable but its faults go unnoticed", "device", uuid, "err", err)
			default:
				if !send(hardware.Event{Kind: hardware.EventUnhealthy, UUID: uuid, Reason: "cannot watch the GPU for faults: " + err.Error()}) {
					return false
				}
				if hung(err) != nil {
					retry = append(retry, uuid)
				}
			}
		}
		pending = retry
		return true
	}

	type waitResult struct {
		data nvml.EventData
		ret  nvml.Return
	}
	for ctx.Err() == nil {
		if len(pending) > 0 && b.wedged("RegisterEvents") == nil && !register() {
			return nil
		}
		if watched == 0 && len(pending) == 0 {
			<-ctx.Done() // nothing can be watched
			return nil
		}
		if watched == 0 {
			// Registration waits for a wedged driver to answer again.
			if !pause() {
				return nil
			}
			continue
		}
		done := make(chan waitResult, 1)
		start := time.Now()
		ms := uint32(max(waitTimeout.Milliseconds(), 1))
		go func() {
			data, ret := set.Wait(ms)
			done <- waitResult{data, ret}
		}()
		limit := waitTimeout + CallTimeout
		timer := time.NewTimer(limit)
		var r waitResult
		select {
		case r = <-done:
			timer.Stop()
		case <-ctx.Done():
			timer.Stop()
			free = false
			go func() { <-done; set.Free() }()
			return nil
		case <-timer.C:
			// The driver is wedged: every GPU is unusable until it
			// answers again. The monitor re-probes them afterwards.
			forget := b.markStuck("EventSet.Wait", start)
			reason := fmt.Sprintf("NVML event wait did not return within %s (%s)", limit, errWedged)
			for _, u := range uuids {
				if !send(hardware.Event{Kind: hardware.EventUnhealthy, UUID: u, Reason: reason}) {
					break
				}
			}
			select {
			case r = <-done:
				forget()
			case <-ctx.Done():
				free = false
				go func() { <-done; forget(); set.Free() }()
				return nil
			}
		}
		switch r.ret {
		case nvml.SUCCESS:
		case nvml.ERROR_TIMEOUT:
			continue
		case nvml.ERROR_GPU_IS_LOST:
			if !b.reportLost(uuids, send) {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(lostRetry):
			}
			continue
		default:
			return fmt.Errorf("NVML event wait: %s", nvml.ErrorString(r.ret))
		}
		for _, ev := range b.events(r.data) {
			if !send(ev) {
				return nil
			}
		}
	}
	return nil
}

// events turns one NVML event into gpulet events. An event inside a MIG
// instance is pinned on that instance when the last discovery knows it.
func (b *Backend) events(data nvml.EventData) []hardware.Event {
	ev := hardware.Event{}
	switch {
	case data.EventType&nvml.EventTypeXidCriticalError != 0:
		ev.Kind, ev.XID = hardware.EventXID, data.EventData
	case data.EventType&nvml.EventTypeDoubleBitEccError != 0:
		ev.Kind = hardware.EventECCDoubleBit
	default:
		return nil
	}
	if data.Device != nil {
		u, err := call(b, "GetUUID", data.Device.GetUUID)
		if err != nil {
			ev.Reason = "the device of the event is unknown: " + err.Error()
		}
		ev.UUID = u
	}
	if ev.UUID == "" || data.GpuInstanceId == invalidID {
		return []hardware.Event{ev}
	}
	b.mu.Lock()
	node := b.node
	b.mu.Unlock()
	var out []hardware.Event
	if node != nil {
		if g, _, ok := node.GPUByUUID(ev.UUID); ok && g.MIGEnabled {
			for _, m := range g.MIGDevices {
				if uint32(m.GI) == data.GpuInstanceId && (data.ComputeInstanceId == invalidID || uint32(m.CI) == data.ComputeInstanceId) {
					e := ev
					e.UUID = m.UUID
					out = append(out, e)
				}
			}
		}
	}
	if len(out) == 0 {
		return []hardware.Event{ev}
	}
	return out
}

// reportLost names the GPUs NVML says are lost (Xid 79, fallen off the
// bus). It reports false when ctx ended while sending.
func (b *Backend) reportLost(uuids []string, send func(hardware.Event) bool) bool {
	found := false
	for _, u := range uuids {
		h, err := call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(u) })
		if err == nil {
			_, err = call(b, "GetMemoryInfo", h.GetMemoryInfo)
		}
		if isReturn(err, nvml.ERROR_GPU_IS_LOST) {
			found = true
			if !send(hardware.Event{Kind: hardware.EventXID, UUID: u, XID: 79, Reason: "NVML reports the GPU lost (fallen off the bus)"}) {
				return false
			}
		}
	}
	if !found {
		return send(hardware.Event{Kind: hardware.EventXID, XID: 79, Reason: "NVML reports a GPU lost but no GPU says which"})
	}
	return true
}
