//go:build !(linux && (amd64 || arm64) && cgo)

package cudadriver

import (
	"errors"
	"runtime"
	"strings"
	"testing"
)

func TestOpenWithoutBinding(t *testing.T) {
	_, err := Open()
	want := "gpulet validate loads the CUDA driver on linux/amd64 and linux/arm64 only"
	if runtime.GOOS == "linux" && (runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64") {
		want = "built without cgo (CGO_ENABLED=0)"
	}
	if !errors.Is(err, ErrNoLibrary) || !strings.Contains(err.Error(), want) {
		t.Errorf("Open() = %v, want ErrNoLibrary saying %q", err, want)
	}
}
