//go:build linux && (amd64 || arm64) && cgo

package cudadriver

import (
	"errors"
	"github.com/gpulet/gpulet/internal/cudadriver/cudadrivertest"
	"os"
	"strings"
	"testing"
)

func TestOpenLibraryMissing(t *testing.T) {
	_, err := OpenLibrary("/nonexistent/lib64/libcuda.so.1", "libcuda-not-installed-here.so.1")
	if !errors.Is(err, ErrNoLibrary) {
		t.Fatalf("err = %v, want ErrNoLibrary", err)
	}
	for _, s := range []string{
		"/nonexistent/lib64/libcuda.so.1 (absent)",
		"libcuda-not-installed-here.so.1 (",
		"requests nvidia.com/gpu", "NVIDIA runtime", "nvidia-smi", "LD_LIBRARY_PATH",
	} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q:\n%v", s, err)
		}
	}
}

func TestOpenLibraryNotCUDA(t *testing.T) {
	// libc loads, but it is no CUDA driver: say so instead of crashing.
	_, err := OpenLibrary("libc.so.6")
	if err == nil || errors.Is(err, ErrNoLibrary) || !strings.Contains(err.Error(), "it has no cuInit") {
		t.Errorf("err = %v, want a 'not a usable CUDA driver' error naming cuInit", err)
	}
}

// unsetenv unsets k for the test and restores it after.
func unsetenv(t *testing.T, k string) {
	t.Setenv(k, "")
	os.Unsetenv(k)
}

// vaddPTX is enough of a module for the stand-in library, which looks for
// its .entry; validate's real kernel is tested in that package.
const vaddPTX = ".version 7.0\n.target sm_50\n.address_size 64\n\n.visible .entry vadd()\n{\n\tret;\n}\n"

func TestLibcudaJITLog(t *testing.T) {
	lib := cudadrivertest.Shared(t)
	unsetenv(t, "CUDA_VISIBLE_DEVICES")
	unsetenv(t, "FAKECUDA_INIT_ERROR")
	d, err := OpenLibrary(lib)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(); err != nil {
		t.Fatal(err)
	}
	unbind, err := d.Bind(0)
	if err != nil {
		t.Fatal(err)
	}
	defer unbind()
	tests := []struct {
		name, ptx, kernel string
		code              int
		errHas            string
	}{
		{"bad PTX carries the JIT log", ".version 7.0\n", "vadd", CodeInvalidPTX,
			"cuModuleLoadDataEx: CUDA_ERROR_INVALID_PTX (a PTX JIT compilation failed): JIT log: fake: no .entry vadd in the image"},
		{"unknown kernel", vaddPTX, "vsub", CodeNotFound, "cuModuleGetFunction(vsub): CUDA_ERROR_NOT_FOUND"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := d.LoadModule(tt.ptx, tt.kernel)
			if Code(err) != tt.code || !strings.Contains(err.Error(), tt.errHas) {
				t.Errorf("err = %v (code %d), want code %d containing %q", err, Code(err), tt.code, tt.errHas)
			}
		})
	}
	if err := d.Launch(1, 1, 1, "not a pointer"); err == nil || !strings.Contains(err.Error(), "unsupported type string") {
		t.Errorf("Launch with a string argument: %v", err)
	}
}
