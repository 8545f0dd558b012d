//go:build linux && (amd64 || arm64) && cgo

package validate

import (
	"bytes"
	"github.com/gpulet/gpulet/internal/cudadriver/cudadrivertest"
	"os"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/cudadriver"
)

// TestValidateWithoutGPU runs the real path of `gpulet validate` on this
// machine: with no NVIDIA driver, it must fail and say what is missing.
func TestValidateWithoutGPU(t *testing.T) {
	if d, err := cudadriver.Open(); err == nil {
		t.Skipf("this machine has a CUDA driver (%s); the no-driver path cannot be tested here", d.Library())
	}
	plan := PlanEnv(func(string) (string, bool) { return "", false }, ReadDeviceDir)
	r := Validate(cudadriver.Open, plan, Options{})
	if r.Pass || r.DeviceCount != nil || r.Library != "" {
		t.Errorf("report = %+v, want a failure with no library and no count", r)
	}
	var b bytes.Buffer
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"CUDA driver:  - (not loaded)", "FAIL: the CUDA driver library libcuda.so.1 could not be loaded",
		"/usr/local/nvidia/lib64/libcuda.so.1 (absent)", "nvidia-smi"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, b.String())
		}
	}
}

// unsetenv unsets k for the test and restores it after.
func unsetenv(t *testing.T, k string) {
	t.Setenv(k, "")
	os.Unsetenv(k)
}

// TestLibcudaBinding drives the purego binding against the stand-in
// library: argument passing, strings, UUID bytes, the kernel parameter
// block, the JIT log and errors, and that CUDA_VISIBLE_DEVICES set from Go
// reaches the library's getenv.
func TestLibcudaBinding(t *testing.T) {
	lib := cudadrivertest.Shared(t)
	open := func() (cudadriver.Driver, error) { return cudadriver.OpenLibrary("/nonexistent/libcuda.so.1", lib) }
	type dev struct{ uuid, name, bus string }
	devA := dev{uuidA, "Fake GPU 0", "0000:10:00.0"}
	devB := dev{uuidB, "Fake GPU 1", "0000:11:00.0"}
	tests := []struct {
		name    string
		env     map[string]string
		pass    bool
		count   int // -1: unknown
		devs    []dev
		pinned  bool
		errHas  string
		kernel  bool
		visible string
	}{
		{name: "every GPU", pass: true, count: 2, devs: []dev{devA, devB}, pinned: true, kernel: true},
		{
			name: "the plugin's UUID restricts CUDA to that GPU",
			env:  map[string]string{NvidiaVisibleDevices: uuidB},
			pass: true, count: 1, devs: []dev{devB}, pinned: true, kernel: true,
		},
		{
			name: "two UUIDs in the plugin's order",
			env:  map[string]string{NvidiaVisibleDevices: uuidB + "," + uuidA},
			pass: true, count: 2, devs: []dev{devB, devA}, pinned: true, kernel: true,
		},
		{
			name:   "an unknown UUID leaves CUDA no device",
			env:    map[string]string{NvidiaVisibleDevices: "GPU-00000000-0000-0000-0000-000000000000"},
			count:  0,
			errHas: "cuInit: CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected): the CUDA driver loaded but this process sees no GPU",
		},
		{
			name:   "none",
			env:    map[string]string{NvidiaVisibleDevices: "none"},
			count:  0,
			errHas: `CUDA_VISIBLE_DEVICES="" (set by gpulet validate)`,
		},
		{
			name:  "a wrong kernel result",
			env:   map[string]string{"FAKECUDA_BAD_KERNEL": "1", NvidiaVisibleDevices: uuidA},
			count: 1, devs: []dev{devA}, pinned: true,
			errHas: "kernel: wrong result in 1 of 4096 elements; first c[7] = 11.5, want 7 + 3.5 = 10.5",
		},
		{
			name: "pinning refused: pageable memory, still a pass",
			env:  map[string]string{"FAKECUDA_NO_PIN": "1", NvidiaVisibleDevices: uuidA},
			pass: true, count: 1, devs: []dev{devA}, kernel: true,
		},
		{
			name:   "driver mismatch",
			env:    map[string]string{"FAKECUDA_INIT_ERROR": "804"},
			count:  -1,
			errHas: "cuInit: CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE: the libcuda.so.1 this process loaded does not match the kernel driver",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{NvidiaVisibleDevices, CUDAVisibleDevices, "FAKECUDA_BAD_KERNEL", "FAKECUDA_NO_PIN", "FAKECUDA_INIT_ERROR", "FAKECUDA_GPUS"} {
				unsetenv(t, k)
			}
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			plan := PlanEnv(os.LookupEnv, ReadDeviceDir)
			if err := plan.Apply(os.Setenv); err != nil {
				t.Fatal(err)
			}
			r := Validate(open, plan, Options{CopyBytes: 1<<20 + 8, Iterations: 2, KernelElems: 4096})
			if r.Library != lib {
				t.Errorf("Library = %q, want %q", r.Library, lib)
			}
			if r.Pass != tt.pass {
				t.Errorf("Pass = %v, want %v: %v", r.Pass, tt.pass, r.Err())
			}
			switch {
			case tt.count < 0 && r.DeviceCount != nil:
				t.Errorf("DeviceCount = %d, want unknown", *r.DeviceCount)
			case tt.count >= 0 && (r.DeviceCount == nil || *r.DeviceCount != tt.count):
				t.Errorf("DeviceCount = %v, want %d", r.DeviceCount, tt.count)
			}
			if tt.errHas != "" {
				if err := r.Err(); err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Errorf("Err() = %v\nwant it to contain %q", err, tt.errHas)
				}
			}
			if len(r.Devices) != len(tt.devs) {
				t.Fatalf("%d devices, want %d", len(r.Devices), len(tt.devs))
			}
			for i, d := range r.Devices {
				w := tt.devs[i]
				if d.UUID != w.uuid || d.Name != w.name || d.PCIBusID != w.bus || d.ComputeCapability != "9.0" || d.MemoryBytes != 143771<<20 {
					t.Errorf("GPU %d = %s %q %s cc %s mem %d, want %s %q %s cc 9.0 mem %d",
						i, d.UUID, d.Name, d.PCIBusID, d.ComputeCapability, d.MemoryBytes, w.uuid, w.name, w.bus, uint64(143771<<20))
				}
				if d.KernelOK != tt.kernel || !d.CopyOK || d.Pinned != tt.pinned {
					t.Errorf("GPU %d: kernel %v copy %v pinned %v, want %v true %v (%s)", i, d.KernelOK, d.CopyOK, d.Pinned, tt.kernel, tt.pinned, d.Error)
				}
				if d.H2DGBps <= 0 || d.D2HGBps <= 0 || d.D2DGBps <= 0 {
					t.Errorf("GPU %d: bandwidth not measured: %v %v %v", i, d.H2DGBps, d.D2HGBps, d.D2DGBps)
				}
			}
		})
	}
}
