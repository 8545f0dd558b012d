// Package validate is `gpulet validate`: it proves that the GPUs a process
// was given work. Through the CUDA driver API (libcuda.so.1, loaded at run
// time, so no CUDA toolkit is needed to build gpulet) it runs a small kernel
// on each visible GPU, checks its result, measures copy bandwidth and tells
// how many devices CUDA sees under the process's environment: the check
// that the plugin's NVIDIA_VISIBLE_DEVICES gives a container exactly the
// GPUs it was allocated.
//
// The CUDA calls sit behind Driver; the logic above it (environment,
// checks, bandwidth arithmetic, the report) is tested without a GPU.
package validate

import (
	"errors"
	"fmt"
)

// DevicePtr is a CUDA device address (CUdeviceptr).
type DevicePtr uint64

// Module is a loaded CUDA module (CUmodule).
type Module uintptr

// Function is a kernel of a loaded module (CUfunction).
type Function uintptr

// DeviceInfo is what CUDA says about one device.
type DeviceInfo struct {
	Ordinal           int    `json:"index"`
	Name              string `json:"name"`
	UUID              string `json:"uuid"`
	ComputeCapability string `json:"computeCapability"`
	MemoryBytes       uint64 `json:"memoryBytes"`
	PCIBusID          string `json:"pciBusID,omitempty"`
}

// HostBuffer is host memory for copies: page-locked when the driver could
// pin it (copies then run at the link's speed), ordinary Go memory if not.
type HostBuffer struct {
	Bytes  []byte
	Pinned bool
	free   func() error
}

// Free releases the buffer.
func (h HostBuffer) Free() error {
	if h.free == nil {
		return nil
	}
	return h.free()
}

// Driver is the part of the CUDA driver API that validate uses. Calls that
// act on "the current context" act on the context Bind made current on the
// calling OS thread, so a caller locks its goroutine to its thread
// (runtime.LockOSThread) from Bind until it unbinds.
type Driver interface {
	// Library is where the driver library was loaded from.
	Library() string
	// Init is cuInit(0). The environment (CUDA_VISIBLE_DEVICES) must be
	// final before it is called: CUDA reads it once.
	Init() error
	// Version is cuDriverGetVersion: 13000 for CUDA 13.0.
	Version() (int, error)
	DeviceCount() (int, error)
	Device(ordinal int) (DeviceInfo, error)
	// Bind retains the device's primary context and makes it current.
	Bind(ordinal int) (unbind func() error, err error)
	// LoadModule loads PTX (JIT-compiled by the driver) and returns the
	// kernel of that name.
	LoadModule(ptx, kernel string) (Module, Function, error)
	UnloadModule(Module) error
	Alloc(bytes int) (DevicePtr, error)
	Free(DevicePtr) error
	HostAlloc(bytes int) (HostBuffer, error)
	CopyHtoD(dst DevicePtr, src []byte) error
	CopyDtoH(dst []byte, src DevicePtr) error
	CopyDtoD(dst, src DevicePtr, bytes int) error
	// Launch runs f on a 1-D grid. Each argument is a DevicePtr or a uint32.
	Launch(f Function, grid, block uint32, args ...any) error
	Synchronize() error
}

// CUDA result codes that change what validate tells the user.
const (
	cudaSuccess               = 0
	cudaErrorNotInitialized   = 3
	cudaErrorInsufficientDrv  = 35
	cudaErrorDevicesUnavail   = 46
	cudaErrorNoDevice         = 100
	cudaErrorInvalidDevice    = 101
	cudaErrorInvalidPTX       = 218
	cudaErrorNoBinaryForGPU   = 209
	cudaErrorUnsupportedPTX   = 222
	cudaErrorOperatingSystem  = 304
	cudaErrorNotFound         = 500
	cudaErrorSystemDrvMismat  = 803
	cudaErrorCompatNotSupport = 804
	cudaErrorUnknown          = 999
)

// errorNames names the codes a user is likely to meet, for when the
// library's cuGetErrorName is missing (and for test drivers).
var errorNames = map[int]string{
	cudaSuccess:               "CUDA_SUCCESS",
	1:                         "CUDA_ERROR_INVALID_VALUE",
	2:                         "CUDA_ERROR_OUT_OF_MEMORY",
	cudaErrorNotInitialized:   "CUDA_ERROR_NOT_INITIALIZED",
	4:                         "CUDA_ERROR_DEINITIALIZED",
	cudaErrorInsufficientDrv:  "CUDA_ERROR_INSUFFICIENT_DRIVER",
	cudaErrorDevicesUnavail:   "CUDA_ERROR_DEVICES_UNAVAILABLE",
	cudaErrorNoDevice:         "CUDA_ERROR_NO_DEVICE",
	cudaErrorInvalidDevice:    "CUDA_ERROR_INVALID_DEVICE",
	cudaErrorNoBinaryForGPU:   "CUDA_ERROR_NO_BINARY_FOR_GPU",
	cudaErrorInvalidPTX:       "CUDA_ERROR_INVALID_PTX",
	cudaErrorUnsupportedPTX:   "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
	cudaErrorOperatingSystem:  "CUDA_ERROR_OPERATING_SYSTEM",
	cudaErrorNotFound:         "CUDA_ERROR_NOT_FOUND",
	700:                       "CUDA_ERROR_ILLEGAL_ADDRESS",
	719:                       "CUDA_ERROR_LAUNCH_FAILED",
	cudaErrorSystemDrvMismat:  "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
	cudaErrorCompatNotSupport: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
	cudaErrorUnknown:          "CUDA_ERROR_UNKNOWN",
}

// CUDAError is a failed driver call.
type CUDAError struct {
	Call string // e.g. cuInit
	Code int
	Name string // e.g. CUDA_ERROR_NO_DEVICE
	Text string // cuGetErrorString's words, if any
}

func (e *CUDAError) Error() string {
	name := e.Name
	if name == "" {
		name = errorNames[e.Code]
	}
	if name == "" {
		name = fmt.Sprintf("CUDA error %d", e.Code)
	}
	if e.Text != "" {
		return fmt.Sprintf("%s: %s (%s)", e.Call, name, e.Text)
	}
	return fmt.Sprintf("%s: %s", e.Call, name)
}

// Code returns the CUDA result code in err, or -1 if err is no CUDAError.
func Code(err error) int {
	var ce *CUDAError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

// ErrNoLibrary means libcuda.so.1 could not be loaded.
var ErrNoLibrary = errors.New("the CUDA driver library libcuda.so.1 could not be loaded")
