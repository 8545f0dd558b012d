// Package cudadriver binds the part of the CUDA driver API (libcuda.so.1)
// that `gpulet validate` uses. The library is loaded at run time through
// purego, so building gpulet needs no CUDA toolkit; builds without cgo (or
// off linux/amd64 and linux/arm64) get an Open that explains why it cannot
// load the driver. Driver is the seam: validate's logic is tested against
// fakes, the binding here against a stand-in library (testdata/fakecuda.c).
package cudadriver

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

// NewHostBuffer is a HostBuffer that free releases, for Driver
// implementations outside this package (test drivers).
func NewHostBuffer(b []byte, pinned bool, free func() error) HostBuffer {
	return HostBuffer{Bytes: b, Pinned: pinned, free: free}
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
	CodeSuccess          = 0
	CodeNotInitialized   = 3
	CodeInsufficientDrv  = 35
	CodeDevicesUnavail   = 46
	CodeNoDevice         = 100
	CodeInvalidDevice    = 101
	CodeInvalidPTX       = 218
	CodeNoBinaryForGPU   = 209
	CodeUnsupportedPTX   = 222
	CodeOperatingSystem  = 304
	CodeNotFound         = 500
	CodeSystemDrvMismat  = 803
	CodeCompatNotSupport = 804
	CodeUnknown          = 999
)

// errorNames names the codes a user is likely to meet, for when the
// library's cuGetErrorName is missing (and for test drivers).
var errorNames = map[int]string{
	CodeSuccess:          "CUDA_SUCCESS",
	1:                    "CUDA_ERROR_INVALID_VALUE",
	2:                    "CUDA_ERROR_OUT_OF_MEMORY",
	CodeNotInitialized:   "CUDA_ERROR_NOT_INITIALIZED",
	4:                    "CUDA_ERROR_DEINITIALIZED",
	CodeInsufficientDrv:  "CUDA_ERROR_INSUFFICIENT_DRIVER",
	CodeDevicesUnavail:   "CUDA_ERROR_DEVICES_UNAVAILABLE",
	CodeNoDevice:         "CUDA_ERROR_NO_DEVICE",
	CodeInvalidDevice:    "CUDA_ERROR_INVALID_DEVICE",
	CodeNoBinaryForGPU:   "CUDA_ERROR_NO_BINARY_FOR_GPU",
	CodeInvalidPTX:       "CUDA_ERROR_INVALID_PTX",
	CodeUnsupportedPTX:   "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
	CodeOperatingSystem:  "CUDA_ERROR_OPERATING_SYSTEM",
	CodeNotFound:         "CUDA_ERROR_NOT_FOUND",
	700:                  "CUDA_ERROR_ILLEGAL_ADDRESS",
	719:                  "CUDA_ERROR_LAUNCH_FAILED",
	CodeSystemDrvMismat:  "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
	CodeCompatNotSupport: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
	CodeUnknown:          "CUDA_ERROR_UNKNOWN",
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
