package validate

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/gpulet/gpulet/internal/cudadriver"
)

//go:embed vadd.ptx
var vaddPTX string

// VaddPTX is the kernel validate runs: c[i] = a[i] + b[i].
func VaddPTX() string { return vaddPTX }

// Options size the checks; the zero value gives the defaults.
type Options struct {
	// CopyBytes is the size of one bandwidth copy (default 128 MiB).
	CopyBytes int
	// Iterations is how many timed copies each direction makes (default 10).
	Iterations int
	// KernelElems is the vector length of the kernel check (default 1Mi).
	KernelElems int
	// Now reads the clock for bandwidth timing (default time.Now).
	Now func() time.Time
	// Step, if set, hears the step about to run, so a caller can say where
	// a hung driver call hangs.
	Step func(string)
}

func (o Options) withDefaults() Options {
	if o.CopyBytes <= 0 {
		o.CopyBytes = 128 << 20
	}
	if o.Iterations <= 0 {
		o.Iterations = 10
	}
	if o.KernelElems <= 0 {
		o.KernelElems = 1 << 20
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Step == nil {
		o.Step = func(string) {}
	}
	return o
}

// Report is the outcome of a validation, printed as a table or JSON.
type Report struct {
	Library string `json:"library,omitempty"`
	// DriverVersion is the CUDA version the driver supports, e.g. 13.0.
	DriverVersion string  `json:"cudaDriverVersion,omitempty"`
	Env           EnvPlan `json:"env"`
	// DeviceCount is how many devices CUDA sees under this environment;
	// nil when CUDA could not be asked.
	DeviceCount *int           `json:"cudaDeviceCount"`
	Devices     []DeviceResult `json:"devices"`
	// Visibility says how the devices CUDA sees differ from the ones the
	// environment names; empty when they agree or nothing was named.
	Visibility string `json:"visibilityError,omitempty"`
	// Error is why no device could be validated at all.
	Error string `json:"error,omitempty"`
	Pass  bool   `json:"pass"`
}

// DeviceResult is the outcome on one device.
type DeviceResult struct {
	cudadriver.DeviceInfo
	KernelOK bool `json:"kernelOK"`
	// PTXTarget is the PTX target the driver JIT-compiled: sm_50, or the
	// device's own when the driver refused sm_50.
	PTXTarget string `json:"ptxTarget,omitempty"`
	CopyOK    bool   `json:"copyOK"`
	// Pinned says whether host buffers were page-locked; pageable memory
	// makes host copies slower than the link allows.
	Pinned bool `json:"pinnedHostMemory"`
	// Bandwidths in GB/s (1e9 bytes per second). D2D counts the bytes read
	// plus the bytes written, as CUDA's bandwidthTest does.
	H2DGBps float64 `json:"h2dGBps"`
	D2HGBps float64 `json:"d2hGBps"`
	D2DGBps float64 `json:"d2dGBps"`
	Error   string  `json:"error,omitempty"`
	Pass    bool    `json:"pass"`
}

// Err is nil when the report passed, else what failed, in one line.
func (r *Report) Err() error {
	if r.Pass {
		return nil
	}
	if r.Error != "" {
		return errors.New(r.Error)
	}
	var parts []string
	if r.Visibility != "" {
		parts = append(parts, r.Visibility)
	}
	failed := 0
	for _, d := range r.Devices {
		if !d.Pass {
			failed++
			parts = append(parts, fmt.Sprintf("GPU %d (%s): %s", d.Ordinal, d.UUID, d.Error))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "no GPU was validated")
	}
	return fmt.Errorf("validation failed (%d of %d GPUs failed): %s", failed, len(r.Devices), strings.Join(parts, "; "))
}

// Validate opens the driver with open, then checks every device CUDA sees.
// The environment must already be as plan says (see EnvPlan.Apply). The
// report is never nil; Report.Err tells whether it passed.
func Validate(open func() (cudadriver.Driver, error), plan EnvPlan, opts Options) *Report {
	opts = opts.withDefaults()
	r := &Report{Env: plan, Devices: []DeviceResult{}}
	opts.Step("load libcuda.so.1")
	drv, err := open()
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.Library = drv.Library()
	opts.Step("cuInit")
	if err := drv.Init(); err != nil {
		if cudadriver.Code(err) == cudadriver.CodeNoDevice {
			zero := 0
			r.DeviceCount = &zero
		}
		r.Error = initFailure(err, plan)
		return r
	}
	if v, err := drv.Version(); err == nil {
		r.DriverVersion = fmt.Sprintf("%d.%d", v/1000, (v%1000)/10)
	}
	opts.Step("cuDeviceGetCount")
	n, err := drv.DeviceCount()
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.DeviceCount = &n
	if n == 0 {
		r.Error = "CUDA initialised but sees no device under this environment (" + envWords(plan) + ")"
		return r
	}
	pass := true
	for i := 0; i < n; i++ {
		d := checkDevice(drv, i, plan, opts)
		pass = pass && d.Pass
		r.Devices = append(r.Devices, d)
	}
	r.Visibility = visibility(plan, r.Devices)
	r.Pass = pass && r.Visibility == ""
	return r
}

// visibility compares the devices CUDA sees with the UUIDs the environment
// names: they must be the same set.
func visibility(plan EnvPlan, devs []DeviceResult) string {
	if plan.Expected == nil {
		return ""
	}
	want := map[string]bool{}
	for _, id := range plan.Expected {
		want[uuidBody(id)] = true
	}
	var extra []string
	seen := map[string]bool{}
	for _, d := range devs {
		b := uuidBody(d.UUID)
		if d.UUID == "" || !want[b] {
			extra = append(extra, fmt.Sprintf("%d (%s)", d.Ordinal, orDash(d.UUID)))
		}
		seen[b] = true
	}
	var missing []string
	for _, id := range plan.Expected {
		if !seen[uuidBody(id)] {
			missing = append(missing, id)
		}
	}
	if len(extra) == 0 && len(missing) == 0 && len(devs) == len(plan.Expected) {
		return ""
	}
	msg := fmt.Sprintf("the environment names %d GPU(s) (%s) but CUDA sees %d", len(plan.Expected), strings.Join(plan.Expected, ","), len(devs))
	if len(extra) > 0 {
		msg += "; not named: " + strings.Join(extra, ", ")
	}
	if len(missing) > 0 {
		msg += "; not visible: " + strings.Join(missing, ", ")
	}
	return msg
}

// uuidBody is a UUID without its GPU- or MIG- prefix: CUDA reports the
// bytes, not which kind of device they name.
func uuidBody(id string) string {
	if i := strings.IndexByte(id, '-'); i >= 0 && isUUID(id) {
		return strings.ToLower(id[i+1:])
	}
	return strings.ToLower(id)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func envWords(p EnvPlan) string {
	nv := "unset"
	if p.NvidiaSet {
		nv = quote(p.NvidiaVisible)
	}
	cv := "unset"
	switch {
	case p.Set:
		cv = quote(p.SetCUDAVisible) + " (set by gpulet validate)"
	case p.CUDASet:
		cv = quote(p.CUDAVisible)
	}
	return "NVIDIA_VISIBLE_DEVICES=" + nv + ", CUDA_VISIBLE_DEVICES=" + cv
}

// initFailure explains a failed cuInit: what is missing and what to check.
func initFailure(err error, plan EnvPlan) string {
	env := envWords(plan)
	switch cudadriver.Code(err) {
	case cudadriver.CodeNoDevice:
		return err.Error() + ": the CUDA driver loaded but this process sees no GPU (" + env + "). " +
			"In a pod, check that it requests nvidia.com/gpu, that the node runs the NVIDIA container runtime (or CDI) and that /dev/nvidia* exist in the container; " +
			"on a host, check `nvidia-smi -L` and that the UUIDs in NVIDIA_VISIBLE_DEVICES are listed there"
	case cudadriver.CodeInsufficientDrv, cudadriver.CodeSystemDrvMismat, cudadriver.CodeCompatNotSupport:
		return err.Error() + ": the libcuda.so.1 this process loaded does not match the kernel driver; " +
			"check that the container gets the host's driver libraries (NVIDIA container toolkit) rather than a copy in the image, and compare `nvidia-smi` with /proc/driver/nvidia/version"
	case cudadriver.CodeDevicesUnavail:
		return err.Error() + ": every visible GPU is busy or in exclusive-process compute mode; check `nvidia-smi -q -d COMPUTE` and the processes using the GPUs"
	case cudadriver.CodeOperatingSystem, cudadriver.CodeUnknown:
		return err.Error() + ": the driver could not open the GPU (" + env + "); check that /dev/nvidiactl, /dev/nvidia-uvm and /dev/nvidiaN exist and are readable and writable here, and the kernel log (dmesg) for NVRM or Xid errors"
	}
	return err.Error() + " (" + env + ")"
}

// checkDevice runs the kernel and copy checks on one device. It holds its
// OS thread, because the device's context is current on that thread only.
func checkDevice(drv cudadriver.Driver, ordinal int, plan EnvPlan, opts Options) (res DeviceResult) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	res.Ordinal = ordinal
	opts.Step(fmt.Sprintf("GPU %d: read device", ordinal))
	info, err := drv.Device(ordinal)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	info.Ordinal = ordinal
	info.UUID = displayUUID(info.UUID, plan.Expected)
	res.DeviceInfo = info
	opts.Step(fmt.Sprintf("GPU %d: create context", ordinal))
	unbind, err := drv.Bind(ordinal)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer func() {
		if err := unbind(); err != nil && res.Error == "" {
			res.Error = "release context: " + err.Error()
			res.Pass = false
		}
	}()
	var errs []string
	if err := runKernel(drv, ordinal, info.ComputeCapability, opts, &res.PTXTarget); err != nil {
		errs = append(errs, "kernel: "+err.Error())
	} else {
		res.KernelOK = true
	}
	if err := measureCopies(drv, ordinal, opts, &res); err != nil {
		errs = append(errs, "copies: "+err.Error())
	}
	res.Error = strings.Join(errs, "; ")
	res.Pass = res.KernelOK && res.CopyOK && res.Error == ""
	return res
}

// displayUUID writes CUDA's UUID with the prefix the environment used for
// it (MIG- for a MIG device); GPU- otherwise.
func displayUUID(uuid string, expected []string) string {
	for _, e := range expected {
		if uuidBody(e) == uuidBody(uuid) {
			return e
		}
	}
	return uuid
}

// cleanup collects release errors so the first failure is reported.
type cleanup struct{ fns []func() error }

func (c *cleanup) add(f func() error) { c.fns = append(c.fns, f) }
func (c *cleanup) run() error {
	var errs []error
	for i := len(c.fns) - 1; i >= 0; i-- {
		if err := c.fns[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// runKernel adds two vectors on the GPU and checks every element. cc is
// the device's compute capability; ptxTarget hears the target that loaded.
func runKernel(drv cudadriver.Driver, ordinal int, cc string, opts Options, ptxTarget *string) (err error) {
	var c cleanup
	defer func() {
		if cerr := c.run(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	n := opts.KernelElems
	size := 4 * n
	step := func(s string) { opts.Step(fmt.Sprintf("GPU %d: kernel: %s", ordinal, s)) }

	step("load PTX module")
	mod, fn, target, err := loadVadd(drv, cc)
	if err != nil {
		return err
	}
	*ptxTarget = target
	c.add(func() error { return drv.UnloadModule(mod) })
	step("allocate")
	host, err := drv.HostAlloc(3 * size)
	if err != nil {
		return err
	}
	c.add(host.Free)
	a, b, out := host.Bytes[:size], host.Bytes[size:2*size], host.Bytes[2*size:3*size]
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint32(a[4*i:], math.Float32bits(float32(i)))
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(float32(i%1024)*0.5))
		// NaN in the output buffer: a kernel that writes nothing fails.
		binary.LittleEndian.PutUint32(out[4*i:], 0xffffffff)
	}
	var dev [3]cudadriver.DevicePtr
	for i := range dev {
		if dev[i], err = drv.Alloc(size); err != nil {
			return err
		}
		p := dev[i]
		c.add(func() error { return drv.Free(p) })
	}
	step("copy inputs")
	for i, src := range [][]byte{a, b, out} {
		if err := drv.CopyHtoD(dev[i], src); err != nil {
			return err
		}
	}
	step("launch")
	const block = 256
	grid := uint32((n + block - 1) / block)
	if err := drv.Launch(fn, grid, block, dev[0], dev[1], dev[2], uint32(n)); err != nil {
		return err
	}
	if err := drv.Synchronize(); err != nil {
		return err
	}
	step("copy result")
	if err := drv.CopyDtoH(out, dev[2]); err != nil {
		return err
	}
	return checkSum(a, b, out)
}

// ptxVersions is the PTX ISA version that introduced a target, where it
// is newer than the kernel's own 7.0.
var ptxVersions = map[string]string{
	"sm_86": "7.1", "sm_87": "7.4", "sm_89": "7.8", "sm_90": "7.8",
	"sm_100": "8.6", "sm_101": "8.6", "sm_103": "8.8", "sm_110": "9.0",
	"sm_120": "8.7", "sm_121": "8.8",
}

var (
	versionLine = regexp.MustCompile(`(?m)^\.version [0-9.]+$`)
	targetLine  = regexp.MustCompile(`(?m)^\.target sm_[0-9a-z]+$`)
)

// RetargetPTX rewrites the kernel for the device of compute capability cc
// (e.g. 9.0: .target sm_90 with the PTX version that has it).
func RetargetPTX(ptx, cc string) (string, string, error) {
	major, minor, ok := strings.Cut(cc, ".")
	m, err1 := strconv.Atoi(major)
	n, err2 := strconv.Atoi(minor)
	if !ok || err1 != nil || err2 != nil || m < 5 || n < 0 || n > 9 {
		return "", "", fmt.Errorf("compute capability %q is not major.minor", cc)
	}
	target := fmt.Sprintf("sm_%d%d", m, n)
	version, ok := ptxVersions[target]
	switch {
	case ok:
	case m < 9:
		version = "7.0"
	default:
		version = "9.0" // a target newer than this table: the newest ISA the table knows
	}
	ptx = versionLine.ReplaceAllString(ptx, ".version "+version)
	ptx = targetLine.ReplaceAllString(ptx, ".target "+target)
	return ptx, target, nil
}

// loadVadd loads the kernel for sm_50, which the driver JIT-compiles for
// any newer GPU; if this driver refuses so old a target, for the device's
// own.
func loadVadd(drv cudadriver.Driver, cc string) (cudadriver.Module, cudadriver.Function, string, error) {
	mod, fn, err := drv.LoadModule(vaddPTX, "vadd")
	if err == nil {
		return mod, fn, "sm_50", nil
	}
	ptx, target, rerr := RetargetPTX(vaddPTX, cc)
	if rerr != nil || target == "sm_50" {
		return 0, 0, "", err
	}
	mod, fn, err2 := drv.LoadModule(ptx, "vadd")
	if err2 != nil {
		return 0, 0, "", fmt.Errorf("as sm_50: %w; as %s: %v", err, target, err2)
	}
	return mod, fn, target, nil
}

// checkSum checks out = a + b element by element (float32, little endian).
func checkSum(a, b, out []byte) error {
	n := len(out) / 4
	bad, first := 0, -1
	for i := 0; i < n; i++ {
		x := math.Float32frombits(binary.LittleEndian.Uint32(a[4*i:]))
		y := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		z := math.Float32frombits(binary.LittleEndian.Uint32(out[4*i:]))
		if z != x+y {
			if first < 0 {
				first = i
			}
			bad++
		}
	}
	if bad == 0 {
		return nil
	}
	x := math.Float32frombits(binary.LittleEndian.Uint32(a[4*first:]))
	y := math.Float32frombits(binary.LittleEndian.Uint32(b[4*first:]))
	z := math.Float32frombits(binary.LittleEndian.Uint32(out[4*first:]))
	return fmt.Errorf("wrong result in %d of %d elements; first c[%d] = %g, want %g + %g = %g", bad, n, first, z, x, y, x+y)
}

// measureCopies checks that data survives host→device→device→host intact,
// then times each direction.
func measureCopies(drv cudadriver.Driver, ordinal int, opts Options, res *DeviceResult) (err error) {
	var c cleanup
	defer func() {
		if cerr := c.run(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	size, iters := opts.CopyBytes, opts.Iterations
	step := func(s string) { opts.Step(fmt.Sprintf("GPU %d: copies: %s", ordinal, s)) }

	step("allocate")
	src, err := drv.HostAlloc(size)
	if err != nil {
		return err
	}
	c.add(src.Free)
	dst, err := drv.HostAlloc(size)
	if err != nil {
		return err
	}
	c.add(dst.Free)
	res.Pinned = src.Pinned && dst.Pinned
	var d1, d2 cudadriver.DevicePtr
	for _, p := range []*cudadriver.DevicePtr{&d1, &d2} {
		if *p, err = drv.Alloc(size); err != nil {
			return err
		}
		ptr := *p
		c.add(func() error { return drv.Free(ptr) })
	}
	fillPattern(src.Bytes, uint64(ordinal)+1)
	clear(dst.Bytes)

	step("integrity")
	if err := drv.CopyHtoD(d1, src.Bytes); err != nil {
		return err
	}
	if err := drv.CopyDtoD(d2, d1, size); err != nil {
		return err
	}
	if err := drv.Synchronize(); err != nil {
		return err
	}
	if err := drv.CopyDtoH(dst.Bytes, d2); err != nil {
		return err
	}
	if i := firstDiff(src.Bytes, dst.Bytes); i >= 0 {
		return fmt.Errorf("data changed on the way host→device→device→host: first different byte at offset %d of %d", i, size)
	}
	res.CopyOK = true

	timed := func(what string, factor float64, copy func() error) (float64, error) {
		step(what)
		if err := drv.Synchronize(); err != nil {
			return 0, err
		}
		start := opts.Now()
		for i := 0; i < iters; i++ {
			if err := copy(); err != nil {
				return 0, err
			}
		}
		if err := drv.Synchronize(); err != nil {
			return 0, err
		}
		return gbps(factor*float64(size)*float64(iters), opts.Now().Sub(start)), nil
	}
	if res.H2DGBps, err = timed("host to device", 1, func() error { return drv.CopyHtoD(d1, src.Bytes) }); err != nil {
		return err
	}
	if res.D2HGBps, err = timed("device to host", 1, func() error { return drv.CopyDtoH(dst.Bytes, d1) }); err != nil {
		return err
	}
	if res.D2DGBps, err = timed("device to device", 2, func() error { return drv.CopyDtoD(d2, d1, size) }); err != nil {
		return err
	}
	return nil
}

// gbps is bytes over d in GB/s; 0 when no time was measured.
func gbps(bytes float64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return bytes / d.Seconds() / 1e9
}

// fillPattern writes a pattern that differs at every 8-byte word, so a
// dropped, repeated or shifted block shows.
func fillPattern(b []byte, seed uint64) {
	x := seed * 0x9e3779b97f4a7c15
	i := 0
	for ; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	for ; i < len(b); i++ {
		b[i] = byte(x >> (8 * (i % 8)))
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return len(a)
}
