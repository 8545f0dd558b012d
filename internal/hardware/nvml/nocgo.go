//go:build !cgo || !linux

// Package nvml is the real-GPU backend. This build has no cgo, so NVML
// cannot be loaded; the simulated backend works as usual.
package nvml

import (
	"errors"

	"github.com/gpulet/gpulet/internal/hardware"
)

// ErrLibraryNotFound means no NVML library could be loaded.
var ErrLibraryNotFound = errors.New("libnvidia-ml.so.1 not found")

// Options say where the driver lives on the host (unused without cgo).
type Options struct {
	DriverRoot string
	DevRoot    string
}

// New explains that this binary cannot talk to GPUs.
func New(Options) (hardware.Backend, error) {
	return nil, errors.New("this gpulet binary was built without cgo, so it cannot load NVML (libnvidia-ml.so.1): use the release image or build with CGO_ENABLED=1; on a machine without GPUs use --backend=sim")
}
