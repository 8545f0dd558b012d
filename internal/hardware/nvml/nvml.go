//go:build cgo && linux

// Package nvml is the real-GPU backend: discovery, topology and device
// events through NVIDIA's NVML (github.com/NVIDIA/go-nvml), which loads
// libnvidia-ml.so.1 at run time. Every NVML call that can hang runs under a
// deadline, so a wedged driver marks devices unhealthy instead of stalling
// gpulet. By concern: guard.go (call deadlines), discovery.go, mig.go (MIG
// devices and their names), topology.go (links), probe.go (the recovery
// probe) and watch.go (device events).
package nvml

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

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

// ErrLibraryNotFound means no NVML library could be loaded.
var ErrLibraryNotFound = errors.New("libnvidia-ml.so.1 not found")

// Backend reads real GPUs through NVML.
type Backend struct {
	lib     nvml.Interface
	libPath string
	sysRoot string // "/" normally; tests point it elsewhere
	devRoot string // host folder of the nvidia* device nodes
	// driverRoot is where the driver is installed (nvidia-smi is there).
	driverRoot string

	mu      sync.Mutex
	stuck   map[uint64]stuckCall // NVML calls that outlived CallTimeout and have not returned
	stuckID uint64
	node    *inventory.Node // the last discovery, for Watch and Probe

	observer hardware.CallObserver // metrics of every guarded call; may be nil
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
		b.driverRoot = opts.DriverRoot
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

var _ hardware.ComputePolicy = (*Backend)(nil)

// SetComputeMode runs nvidia-smi (hardware.NvidiaSMI) with the NVML
// library gpulet loaded.
func (b *Backend) SetComputeMode(ctx context.Context, uuid string, mode hardware.ComputeMode) error {
	return b.smi().SetComputeMode(ctx, uuid, mode)
}

// SetTimeSlice runs nvidia-smi compute-policy (hardware.NvidiaSMI).
func (b *Backend) SetTimeSlice(ctx context.Context, uuid string, interval int) error {
	return b.smi().SetTimeSlice(ctx, uuid, interval)
}

func (b *Backend) smi() hardware.NvidiaSMI {
	lib := b.libPath
	if !strings.HasPrefix(lib, "/") {
		lib = "" // found by the loader's own search: nvidia-smi finds it too
	}
	return hardware.NvidiaSMI{Path: hardware.FindNvidiaSMI(b.driverRoot), Library: lib}
}
