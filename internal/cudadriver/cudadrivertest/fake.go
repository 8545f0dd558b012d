// Package cudadrivertest builds the stand-in libcuda.so.1 (package
// cudadriver's testdata/fakecuda.c) that the CUDA binding, `gpulet validate`
// and the GPU-check rehearsal are tested against. Tests only.
package cudadrivertest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// ErrNoCompiler says there is no C compiler (cc) to build the stand-in.
var ErrNoCompiler = errors.New("no C compiler (cc) to build the stand-in libcuda.so.1")

// Source is the path of fakecuda.c.
func Source() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(self), "..", "testdata", "fakecuda.c")
}

// Build compiles the stand-in into dir/libcuda.so.1, with extra cc
// arguments such as -DFAKECUDA_DEFAULT_GPUS="...", and returns its path.
// The plain build treats warnings as errors; one with defines does not (a
// node's names with their NUL-separated formats warn by design).
func Build(dir string, ccArgs ...string) (string, error) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		return "", ErrNoCompiler
	}
	lib := filepath.Join(dir, "libcuda.so.1")
	args := []string{"-shared", "-fPIC", "-O1", "-Wall", "-o", lib}
	if len(ccArgs) == 0 {
		args = append(args, "-Werror")
	}
	args = append(args, ccArgs...)
	out, err := exec.Command(cc, append(args, Source())...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build the stand-in libcuda: %v\n%s", err, out)
	}
	return lib, nil
}

var shared struct {
	once sync.Once
	lib  string
	err  error
}

// Shared is the plain stand-in, built once per test binary; it skips tb
// when there is no C compiler.
func Shared(tb testing.TB) string {
	tb.Helper()
	shared.once.Do(func() {
		dir, err := os.MkdirTemp("", "fakecuda")
		if err != nil {
			shared.err = err
			return
		}
		shared.lib, shared.err = Build(dir)
	})
	if errors.Is(shared.err, ErrNoCompiler) {
		tb.Skip("no C compiler (cc): the CUDA binding is tested against a stand-in libcuda built from testdata/fakecuda.c")
	}
	if shared.err != nil {
		tb.Fatal(shared.err)
	}
	return shared.lib
}
