package validate

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/gpulet/gpulet/internal/cudadriver"
)

// fakeClock is read by the bandwidth timing; the fake driver advances it by
// the time each copy would take at the fake GPU's speed.
type fakeClock struct {
	t       time.Time
	elapsed float64 // seconds since t, kept exact between reads
}

func (c *fakeClock) Now() time.Time {
	return c.t.Add(time.Duration(math.Round(c.elapsed * 1e9)))
}
func (c *fakeClock) advance(bytes float64, gbps float64) { c.elapsed += bytes / (gbps * 1e9) }

type fakeGPU struct {
	info          cudadriver.DeviceInfo
	h2d, d2h, d2d float64 // GB/s the copies take; d2d counts read+write
}

// fakeDriver is an in-memory CUDA: device memory is a map, vadd runs in Go.
type fakeDriver struct {
	gpus    []fakeGPU
	clock   *fakeClock
	initErr error
	loadErr error
	// refuseTarget makes PTX for this target fail to load (a driver that
	// dropped it).
	refuseTarget string
	loaded       []string // the targets of the PTX that loaded
	// kernel is "ok", "wrong" (one element off), or "noop" (writes nothing).
	kernel      string
	corruptDtoD bool

	bound   int // ordinal whose context is current, -1 for none
	mem     map[cudadriver.DevicePtr][]byte
	next    cudadriver.DevicePtr
	modules int
	host    int
	binds   int
}

func newFake(gpus ...fakeGPU) *fakeDriver {
	return &fakeDriver{gpus: gpus, clock: &fakeClock{t: time.Unix(1000, 0)}, kernel: "ok", bound: -1,
		mem: map[cudadriver.DevicePtr][]byte{}, next: 0x7f0000000000}
}

func gpu(i int, uuid string) fakeGPU {
	return fakeGPU{
		info: cudadriver.DeviceInfo{Name: fmt.Sprintf("Fake H200 %d", i), UUID: uuid, ComputeCapability: "9.0",
			MemoryBytes: 143771 << 20, PCIBusID: fmt.Sprintf("0000:%02X:00.0", 0x10+i)},
		h2d: 25, d2h: 20, d2d: 2000,
	}
}

func (f *fakeDriver) open() (cudadriver.Driver, error) { return f, nil }

func (f *fakeDriver) Library() string { return "/fake/libcuda.so.1" }
func (f *fakeDriver) Init() error     { return f.initErr }
func (f *fakeDriver) Version() (int, error) {
	return 13000, nil
}
func (f *fakeDriver) DeviceCount() (int, error) { return len(f.gpus), nil }

func (f *fakeDriver) Device(i int) (cudadriver.DeviceInfo, error) {
	if i < 0 || i >= len(f.gpus) {
		return cudadriver.DeviceInfo{}, &cudadriver.CUDAError{Call: "cuDeviceGet", Code: cudadriver.CodeInvalidDevice}
	}
	return f.gpus[i].info, nil
}

func (f *fakeDriver) Bind(i int) (func() error, error) {
	if f.bound >= 0 {
		return nil, fmt.Errorf("fake: GPU %d still bound when binding %d", f.bound, i)
	}
	f.bound = i
	f.binds++
	return func() error {
		f.bound = -1
		f.binds--
		return nil
	}, nil
}

func (f *fakeDriver) ctx(call string) error {
	if f.bound < 0 {
		return &cudadriver.CUDAError{Call: call, Code: 201, Name: "CUDA_ERROR_INVALID_CONTEXT"}
	}
	return nil
}

func (f *fakeDriver) LoadModule(ptx, kernel string) (cudadriver.Module, cudadriver.Function, error) {
	if err := f.ctx("cuModuleLoadDataEx"); err != nil {
		return 0, 0, err
	}
	if f.loadErr != nil {
		return 0, 0, f.loadErr
	}
	if f.refuseTarget != "" && strings.Contains(ptx, "\n.target "+f.refuseTarget+"\n") {
		return 0, 0, &cudadriver.CUDAError{Call: "cuModuleLoadDataEx", Code: cudadriver.CodeUnsupportedPTX}
	}
	for _, l := range strings.Split(ptx, "\n") {
		if strings.HasPrefix(l, ".target ") {
			f.loaded = append(f.loaded, strings.TrimPrefix(l, ".target "))
		}
	}
	if !strings.Contains(ptx, ".entry "+kernel+"(") {
		return 0, 0, &cudadriver.CUDAError{Call: "cuModuleGetFunction", Code: cudadriver.CodeNotFound}
	}
	f.modules++
	return 1, 2, nil
}

func (f *fakeDriver) UnloadModule(cudadriver.Module) error { f.modules--; return nil }

func (f *fakeDriver) Alloc(n int) (cudadriver.DevicePtr, error) {
	if err := f.ctx("cuMemAlloc"); err != nil {
		return 0, err
	}
	p := f.next
	f.next += cudadriver.DevicePtr(n+0xfff) &^ 0xfff
	f.mem[p] = make([]byte, n)
	return p, nil
}

func (f *fakeDriver) Free(p cudadriver.DevicePtr) error {
	if _, ok := f.mem[p]; !ok {
		return fmt.Errorf("fake: free of unknown pointer %#x", p)
	}
	delete(f.mem, p)
	return nil
}

func (f *fakeDriver) HostAlloc(n int) (cudadriver.HostBuffer, error) {
	f.host++
	return cudadriver.NewHostBuffer(make([]byte, n), true, func() error { f.host--; return nil }), nil
}

func (f *fakeDriver) buf(p cudadriver.DevicePtr, n int) ([]byte, error) {
	b, ok := f.mem[p]
	if !ok || len(b) < n {
		return nil, fmt.Errorf("fake: %d bytes at %#x are not allocated", n, p)
	}
	return b[:n], nil
}

func (f *fakeDriver) CopyHtoD(dst cudadriver.DevicePtr, src []byte) error {
	if err := f.ctx("cuMemcpyHtoD"); err != nil {
		return err
	}
	d, err := f.buf(dst, len(src))
	if err != nil {
		return err
	}
	copy(d, src)
	f.clock.advance(float64(len(src)), f.gpus[f.bound].h2d)
	return nil
}

func (f *fakeDriver) CopyDtoH(dst []byte, src cudadriver.DevicePtr) error {
	if err := f.ctx("cuMemcpyDtoH"); err != nil {
		return err
	}
	s, err := f.buf(src, len(dst))
	if err != nil {
		return err
	}
	copy(dst, s)
	f.clock.advance(float64(len(dst)), f.gpus[f.bound].d2h)
	return nil
}

func (f *fakeDriver) CopyDtoD(dst, src cudadriver.DevicePtr, n int) error {
	if err := f.ctx("cuMemcpyDtoD"); err != nil {
		return err
	}
	d, err := f.buf(dst, n)
	if err != nil {
		return err
	}
	s, err := f.buf(src, n)
	if err != nil {
		return err
	}
	copy(d, s)
	if f.corruptDtoD {
		d[n/2] ^= 0x40
	}
	f.clock.advance(2*float64(n), f.gpus[f.bound].d2d)
	return nil
}

func (f *fakeDriver) Launch(fn cudadriver.Function, grid, block uint32, args ...any) error {
	if err := f.ctx("cuLaunchKernel"); err != nil {
		return err
	}
	if fn != 2 || len(args) != 4 {
		return &cudadriver.CUDAError{Call: "cuLaunchKernel", Code: 1}
	}
	n, ok := args[3].(uint32)
	if !ok {
		return fmt.Errorf("fake: n is %T, want uint32", args[3])
	}
	if uint64(grid)*uint64(block) < uint64(n) {
		return fmt.Errorf("fake: grid %d x block %d does not cover %d elements", grid, block, n)
	}
	var v [3][]byte
	for i := range v {
		p, ok := args[i].(cudadriver.DevicePtr)
		if !ok {
			return fmt.Errorf("fake: argument %d is %T, want cudadriver.DevicePtr", i, args[i])
		}
		b, err := f.buf(p, 4*int(n))
		if err != nil {
			return err
		}
		v[i] = b
	}
	if f.kernel == "noop" {
		return nil
	}
	for i := 0; i < int(n); i++ {
		x := math.Float32frombits(binary.LittleEndian.Uint32(v[0][4*i:]))
		y := math.Float32frombits(binary.LittleEndian.Uint32(v[1][4*i:]))
		z := x + y
		if f.kernel == "wrong" && i == 5 {
			z++
		}
		binary.LittleEndian.PutUint32(v[2][4*i:], math.Float32bits(z))
	}
	return nil
}

func (f *fakeDriver) Synchronize() error { return f.ctx("cuCtxSynchronize") }

// leaks says what the run left behind.
func (f *fakeDriver) leaks() string {
	var l []string
	if len(f.mem) > 0 {
		l = append(l, fmt.Sprintf("%d device allocations", len(f.mem)))
	}
	if f.host != 0 {
		l = append(l, fmt.Sprintf("%d host buffers", f.host))
	}
	if f.modules != 0 {
		l = append(l, fmt.Sprintf("%d modules", f.modules))
	}
	if f.binds != 0 || f.bound >= 0 {
		l = append(l, "a bound context")
	}
	return strings.Join(l, ", ")
}
