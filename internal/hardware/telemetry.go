package hardware

import (
	"context"
	"errors"
	"time"
)

// Telemetry is a Backend that can read a device's live counters (NVML's
// utilisation, memory, temperature, power, clocks, ...). The metrics
// exporter samples it in the background; a scrape never calls it.
type Telemetry interface {
	// Sample reads one device (a GPU or MIG instance UUID) now. Fields the
	// device cannot report are left out of Sample.Have, not zeroed as if read.
	Sample(ctx context.Context, uuid string) (Sample, error)
}

// UsageAware is a Telemetry source that must be told which devices
// containers hold: the simulator, whose GPUs are busy while held.
type UsageAware interface {
	SetInUse(uuids []string)
}

// Reinitializer is a Backend that can reconnect to its driver after losing
// it (NVML shutdown and init after a driver reload).
type Reinitializer interface {
	Reinit(ctx context.Context) error
}

// CallObserved is a Backend that reports every driver call it makes, for
// latency and timeout metrics.
type CallObserved interface {
	SetCallObserver(CallObserver)
}

// CallObserver receives one report per driver call; timedOut means the
// call outlived its deadline (took is then the deadline).
type CallObserver interface {
	DriverCall(what string, took time.Duration, timedOut bool)
}

// ErrDriverLost is wrapped by the errors of a backend whose driver is gone
// (unloaded, being upgraded): every device is unusable until it returns.
var ErrDriverLost = errors.New("GPU driver not available")

// Field is one telemetry value of a Sample.
type Field uint32

// The fields, named after the dcgm-exporter counters they feed.
const (
	FieldGPUUtil      Field = 1 << iota // DCGM_FI_DEV_GPU_UTIL, %
	FieldMemCopyUtil                    // DCGM_FI_DEV_MEM_COPY_UTIL, %
	FieldFB                             // DCGM_FI_DEV_FB_USED|FREE, MiB
	FieldGPUTemp                        // DCGM_FI_DEV_GPU_TEMP, °C
	FieldPower                          // DCGM_FI_DEV_POWER_USAGE, W
	FieldEnergy                         // DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, mJ
	FieldSMClock                        // DCGM_FI_DEV_SM_CLOCK, MHz
	FieldMemClock                       // DCGM_FI_DEV_MEM_CLOCK, MHz
	FieldPCIeReplays                    // DCGM_FI_DEV_PCIE_REPLAY_COUNTER
	FieldRemappedRows                   // DCGM_FI_DEV_{UN,}CORRECTABLE_REMAPPED_ROWS, ROW_REMAP_FAILURE
	FieldTensorActive                   // DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, ratio
	FieldFBReserved                     // DCGM_FI_DEV_FB_RESERVED, MiB (drivers before NVML's v2 memory query cannot tell)
)

// Sample is one reading of a device. Have says which fields were read.
type Sample struct {
	Have Field
	Time time.Time

	GPUUtil, MemCopyUtil                float64
	FBUsedMiB, FBFreeMiB, FBReservedMiB float64
	GPUTempC, PowerW, EnergyMJ          float64
	SMClockMHz, MemClockMHz             float64
	PCIeReplays                         float64
	RemappedCorrectable                 float64
	RemappedUncorrectable               float64
	RowRemapFailure                     bool
	TensorActive                        float64
}

// Has reports whether the sample holds field f.
func (s Sample) Has(f Field) bool { return s.Have&f != 0 }
