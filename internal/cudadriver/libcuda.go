//go:build linux && (amd64 || arm64) && cgo

package cudadriver

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"unsafe"

	"github.com/ebitengine/purego"
)

// LibraryPaths are where Open looks for the CUDA driver library, in order:
// the loader's search path first (LD_LIBRARY_PATH, ld.so.cache), then the
// folders driver installs and GPU operators put it in.
var LibraryPaths = []string{
	"libcuda.so.1",
	"/usr/local/nvidia/lib64/libcuda.so.1",
	"/usr/lib/x86_64-linux-gnu/libcuda.so.1",
	"/usr/lib/aarch64-linux-gnu/libcuda.so.1",
	"/usr/lib64/libcuda.so.1",
	"/run/nvidia/driver/usr/lib/x86_64-linux-gnu/libcuda.so.1",
	"/home/kubernetes/bin/nvidia/lib64/libcuda.so.1",
}

// cuDeviceGetAttribute attributes.
const (
	attrComputeCapabilityMajor = 75
	attrComputeCapabilityMinor = 76
)

// cuModuleLoadDataEx JIT options.
const (
	jitErrorLogBuffer          = 5
	jitErrorLogBufferSizeBytes = 6
)

// jitLogSize is a variable so the log buffer is heap memory, which does not
// move while the driver writes into it.
var jitLogSize = 16 << 10

// libcuda calls the CUDA driver API through purego: no cgo and no CUDA
// headers at build time.
type libcuda struct {
	path string

	cuInit                    func(flags uint32) int32
	cuDriverGetVersion        func(v *int32) int32
	cuDeviceGetCount          func(n *int32) int32
	cuDeviceGet               func(dev *int32, ordinal int32) int32
	cuDeviceGetName           func(name *byte, size int32, dev int32) int32
	cuDeviceGetUuid           func(uuid *[16]byte, dev int32) int32
	cuDeviceGetAttribute      func(v *int32, attr int32, dev int32) int32
	cuDeviceTotalMem          func(bytes *uintptr, dev int32) int32
	cuDeviceGetPCIBusID       func(bus *byte, size int32, dev int32) int32
	cuDevicePrimaryCtxRetain  func(ctx *uintptr, dev int32) int32
	cuDevicePrimaryCtxRelease func(dev int32) int32
	cuCtxSetCurrent           func(ctx uintptr) int32
	cuCtxSynchronize          func() int32
	cuModuleLoadDataEx        func(mod *uintptr, image *byte, n uint32, opts *int32, vals *uintptr) int32
	cuModuleGetFunction       func(fn *uintptr, mod uintptr, name string) int32
	cuModuleUnload            func(mod uintptr) int32
	cuMemAlloc                func(p *uint64, bytes uintptr) int32
	cuMemFree                 func(p uint64) int32
	cuMemAllocHost            func(p *unsafe.Pointer, bytes uintptr) int32
	cuMemFreeHost             func(p unsafe.Pointer) int32
	cuMemcpyHtoD              func(dst uint64, src unsafe.Pointer, bytes uintptr) int32
	cuMemcpyDtoH              func(dst unsafe.Pointer, src uint64, bytes uintptr) int32
	cuMemcpyDtoD              func(dst, src uint64, bytes uintptr) int32
	cuLaunchKernel            func(f uintptr, gx, gy, gz, bx, by, bz, shared uint32, stream uintptr, params unsafe.Pointer, extra unsafe.Pointer) int32
	cuGetErrorName            func(code int32, s **byte) int32
	cuGetErrorString          func(code int32, s **byte) int32
}

// Open loads the CUDA driver library from LibraryPaths.
func Open() (Driver, error) { return OpenLibrary(LibraryPaths...) }

// OpenLibrary loads the first of paths that loads. A missing library gives
// an error wrapping ErrNoLibrary that says where it looked and what to
// check.
func OpenLibrary(paths ...string) (Driver, error) {
	var tried []string
	for _, p := range paths {
		if strings.HasPrefix(p, "/") {
			if _, err := os.Stat(p); err != nil {
				tried = append(tried, p+" (absent)")
				continue
			}
		}
		h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s (%v)", p, err))
			continue
		}
		l := &libcuda{path: p}
		if err := l.bind(h); err != nil {
			return nil, fmt.Errorf("%s loaded but is not a usable CUDA driver: %w; the NVIDIA driver is probably older than CUDA 11, or this is not NVIDIA's libcuda", p, err)
		}
		if !strings.HasPrefix(p, "/") {
			if real := mappedPath("libcuda.so"); real != "" {
				l.path = real
			}
		}
		return l, nil
	}
	return nil, fmt.Errorf("%w (tried %s): this process sees no NVIDIA driver. "+
		"In a pod, check that the container requests nvidia.com/gpu and that the node's container runtime is the NVIDIA runtime (or CDI), which mounts the driver libraries; "+
		"on a host, check that `nvidia-smi` works and that libcuda.so.1 is on the loader path (LD_LIBRARY_PATH, e.g. /usr/local/nvidia/lib64)",
		ErrNoLibrary, strings.Join(tried, "; "))
}

// bind resolves every function; the optional ones may be missing.
func (l *libcuda) bind(h uintptr) error {
	sym := func(fptr any, optional bool, names ...string) error {
		for _, n := range names {
			if addr, err := purego.Dlsym(h, n); err == nil && addr != 0 {
				purego.RegisterFunc(fptr, addr)
				return nil
			}
		}
		if optional {
			return nil
		}
		return fmt.Errorf("it has no %s", names[0])
	}
	return errors.Join(
		sym(&l.cuInit, false, "cuInit"),
		sym(&l.cuDriverGetVersion, false, "cuDriverGetVersion"),
		sym(&l.cuDeviceGetCount, false, "cuDeviceGetCount"),
		sym(&l.cuDeviceGet, false, "cuDeviceGet"),
		sym(&l.cuDeviceGetName, false, "cuDeviceGetName"),
		// _v2 reports a MIG device's own UUID.
		sym(&l.cuDeviceGetUuid, false, "cuDeviceGetUuid_v2", "cuDeviceGetUuid"),
		sym(&l.cuDeviceGetAttribute, false, "cuDeviceGetAttribute"),
		sym(&l.cuDeviceTotalMem, false, "cuDeviceTotalMem_v2"),
		sym(&l.cuDeviceGetPCIBusID, true, "cuDeviceGetPCIBusId"),
		sym(&l.cuDevicePrimaryCtxRetain, false, "cuDevicePrimaryCtxRetain"),
		sym(&l.cuDevicePrimaryCtxRelease, false, "cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"),
		sym(&l.cuCtxSetCurrent, false, "cuCtxSetCurrent"),
		sym(&l.cuCtxSynchronize, false, "cuCtxSynchronize"),
		sym(&l.cuModuleLoadDataEx, false, "cuModuleLoadDataEx"),
		sym(&l.cuModuleGetFunction, false, "cuModuleGetFunction"),
		sym(&l.cuModuleUnload, false, "cuModuleUnload"),
		sym(&l.cuMemAlloc, false, "cuMemAlloc_v2"),
		sym(&l.cuMemFree, false, "cuMemFree_v2"),
		sym(&l.cuMemAllocHost, true, "cuMemAllocHost_v2"),
		sym(&l.cuMemFreeHost, true, "cuMemFreeHost"),
		sym(&l.cuMemcpyHtoD, false, "cuMemcpyHtoD_v2"),
		sym(&l.cuMemcpyDtoH, false, "cuMemcpyDtoH_v2"),
		sym(&l.cuMemcpyDtoD, false, "cuMemcpyDtoD_v2"),
		sym(&l.cuLaunchKernel, false, "cuLaunchKernel"),
		sym(&l.cuGetErrorName, true, "cuGetErrorName"),
		sym(&l.cuGetErrorString, true, "cuGetErrorString"),
	)
}

// mappedPath finds the file of a loaded library in /proc/self/maps.
func mappedPath(name string) string {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 6 && strings.Contains(fields[len(fields)-1], "/"+name) {
			return fields[len(fields)-1]
		}
	}
	return ""
}

func (l *libcuda) check(call string, code int32) error {
	if code == 0 {
		return nil
	}
	e := &CUDAError{Call: call, Code: int(code)}
	var s *byte
	if l.cuGetErrorName != nil && l.cuGetErrorName(code, &s) == 0 {
		e.Name = cString(s)
	}
	s = nil
	if l.cuGetErrorString != nil && l.cuGetErrorString(code, &s) == 0 {
		e.Text = cString(s)
	}
	return e
}

// cString copies a NUL-terminated string the driver owns.
func cString(p *byte) string {
	if p == nil {
		return ""
	}
	var b []byte
	for i := 0; i < 4096; i++ {
		c := *(*byte)(unsafe.Add(unsafe.Pointer(p), i))
		if c == 0 {
			break
		}
		b = append(b, c)
	}
	return string(b)
}

func goString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func (l *libcuda) Library() string { return l.path }

func (l *libcuda) Init() error { return l.check("cuInit", l.cuInit(0)) }

func (l *libcuda) Version() (int, error) {
	var v int32
	err := l.check("cuDriverGetVersion", l.cuDriverGetVersion(&v))
	return int(v), err
}

func (l *libcuda) DeviceCount() (int, error) {
	var n int32
	err := l.check("cuDeviceGetCount", l.cuDeviceGetCount(&n))
	return int(n), err
}

func (l *libcuda) device(ordinal int) (int32, error) {
	var dev int32
	err := l.check(fmt.Sprintf("cuDeviceGet(%d)", ordinal), l.cuDeviceGet(&dev, int32(ordinal)))
	return dev, err
}

func (l *libcuda) Device(ordinal int) (DeviceInfo, error) {
	info := DeviceInfo{Ordinal: ordinal}
	dev, err := l.device(ordinal)
	if err != nil {
		return info, err
	}
	name := make([]byte, 256)
	if err := l.check("cuDeviceGetName", l.cuDeviceGetName(&name[0], int32(len(name)), dev)); err != nil {
		return info, err
	}
	info.Name = goString(name)
	var uuid [16]byte
	if err := l.check("cuDeviceGetUuid", l.cuDeviceGetUuid(&uuid, dev)); err != nil {
		return info, err
	}
	info.UUID = FormatUUID(uuid)
	var major, minor int32
	if err := l.check("cuDeviceGetAttribute", l.cuDeviceGetAttribute(&major, attrComputeCapabilityMajor, dev)); err != nil {
		return info, err
	}
	if err := l.check("cuDeviceGetAttribute", l.cuDeviceGetAttribute(&minor, attrComputeCapabilityMinor, dev)); err != nil {
		return info, err
	}
	info.ComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	var mem uintptr
	if err := l.check("cuDeviceTotalMem", l.cuDeviceTotalMem(&mem, dev)); err != nil {
		return info, err
	}
	info.MemoryBytes = uint64(mem)
	if l.cuDeviceGetPCIBusID != nil {
		bus := make([]byte, 64)
		if l.cuDeviceGetPCIBusID(&bus[0], int32(len(bus)), dev) == 0 {
			info.PCIBusID = goString(bus)
		}
	}
	return info, nil
}

// FormatUUID writes CUDA's 16 UUID bytes as NVML does.
func FormatUUID(u [16]byte) string {
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func (l *libcuda) Bind(ordinal int) (func() error, error) {
	dev, err := l.device(ordinal)
	if err != nil {
		return nil, err
	}
	var ctx uintptr
	if err := l.check("cuDevicePrimaryCtxRetain", l.cuDevicePrimaryCtxRetain(&ctx, dev)); err != nil {
		return nil, err
	}
	if err := l.check("cuCtxSetCurrent", l.cuCtxSetCurrent(ctx)); err != nil {
		l.cuDevicePrimaryCtxRelease(dev)
		return nil, err
	}
	return func() error {
		return errors.Join(
			l.check("cuCtxSetCurrent", l.cuCtxSetCurrent(0)),
			l.check("cuDevicePrimaryCtxRelease", l.cuDevicePrimaryCtxRelease(dev)))
	}, nil
}

func (l *libcuda) LoadModule(ptx, kernel string) (Module, Function, error) {
	image := append([]byte(ptx), 0)
	log := make([]byte, jitLogSize)
	opts := []int32{jitErrorLogBuffer, jitErrorLogBufferSizeBytes}
	vals := []uintptr{uintptr(unsafe.Pointer(&log[0])), uintptr(len(log))}
	var mod uintptr
	code := l.cuModuleLoadDataEx(&mod, &image[0], uint32(len(opts)), &opts[0], &vals[0])
	runtime.KeepAlive(log)
	runtime.KeepAlive(image)
	if err := l.check("cuModuleLoadDataEx", code); err != nil {
		if msg := strings.TrimSpace(goString(log)); msg != "" {
			err = fmt.Errorf("%w: JIT log: %s", err, msg)
		}
		return 0, 0, err
	}
	var fn uintptr
	if err := l.check("cuModuleGetFunction("+kernel+")", l.cuModuleGetFunction(&fn, mod, kernel)); err != nil {
		l.cuModuleUnload(mod)
		return 0, 0, err
	}
	return Module(mod), Function(fn), nil
}

func (l *libcuda) UnloadModule(m Module) error {
	return l.check("cuModuleUnload", l.cuModuleUnload(uintptr(m)))
}

func (l *libcuda) Alloc(bytes int) (DevicePtr, error) {
	var p uint64
	err := l.check(fmt.Sprintf("cuMemAlloc(%d bytes)", bytes), l.cuMemAlloc(&p, uintptr(bytes)))
	return DevicePtr(p), err
}

func (l *libcuda) Free(p DevicePtr) error { return l.check("cuMemFree", l.cuMemFree(uint64(p))) }

// HostAlloc pins host memory, or falls back to Go memory if the driver
// cannot (a memlock limit, say).
func (l *libcuda) HostAlloc(bytes int) (HostBuffer, error) {
	if l.cuMemAllocHost != nil && l.cuMemFreeHost != nil {
		var p unsafe.Pointer
		if l.cuMemAllocHost(&p, uintptr(bytes)) == 0 && p != nil {
			return HostBuffer{
				Bytes:  unsafe.Slice((*byte)(p), bytes),
				Pinned: true,
				free:   func() error { return l.check("cuMemFreeHost", l.cuMemFreeHost(p)) },
			}, nil
		}
	}
	return HostBuffer{Bytes: make([]byte, bytes)}, nil
}

func (l *libcuda) CopyHtoD(dst DevicePtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	code := l.cuMemcpyHtoD(uint64(dst), unsafe.Pointer(&src[0]), uintptr(len(src)))
	runtime.KeepAlive(src)
	return l.check("cuMemcpyHtoD", code)
}

func (l *libcuda) CopyDtoH(dst []byte, src DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	code := l.cuMemcpyDtoH(unsafe.Pointer(&dst[0]), uint64(src), uintptr(len(dst)))
	runtime.KeepAlive(dst)
	return l.check("cuMemcpyDtoH", code)
}

func (l *libcuda) CopyDtoD(dst, src DevicePtr, bytes int) error {
	return l.check("cuMemcpyDtoD", l.cuMemcpyDtoD(uint64(dst), uint64(src), uintptr(bytes)))
}

// Launch passes each argument through an 8-byte slot: a DevicePtr fills
// it, a uint32 fills its first four bytes (these builds are little endian).
func (l *libcuda) Launch(f Function, grid, block uint32, args ...any) error {
	vals := make([]uint64, len(args)+1)
	ptrs := make([]uintptr, len(args)+1)
	for i, a := range args {
		switch v := a.(type) {
		case DevicePtr:
			vals[i] = uint64(v)
		case uint32:
			vals[i] = uint64(v)
		default:
			return fmt.Errorf("cuLaunchKernel: argument %d has unsupported type %T", i, a)
		}
		ptrs[i] = uintptr(unsafe.Pointer(&vals[i]))
	}
	code := l.cuLaunchKernel(uintptr(f), grid, 1, 1, block, 1, 1, 0, 0, unsafe.Pointer(&ptrs[0]), nil)
	runtime.KeepAlive(vals)
	runtime.KeepAlive(ptrs)
	return l.check("cuLaunchKernel", code)
}

func (l *libcuda) Synchronize() error { return l.check("cuCtxSynchronize", l.cuCtxSynchronize()) }
