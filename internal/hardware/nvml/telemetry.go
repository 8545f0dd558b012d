//go:build cgo && linux

package nvml

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpulet/gpulet/internal/hardware"
)

var (
	_ hardware.Telemetry     = (*Backend)(nil)
	_ hardware.Reinitializer = (*Backend)(nil)
	_ hardware.CallObserved  = (*Backend)(nil)
)

// SetCallObserver reports every guarded NVML call to o (metrics).
func (b *Backend) SetCallObserver(o hardware.CallObserver) {
	b.mu.Lock()
	b.observer = o
	b.mu.Unlock()
}

func (b *Backend) observeCall(what string, took time.Duration, timedOut bool) {
	b.mu.Lock()
	o := b.observer
	b.mu.Unlock()
	if o != nil {
		o.DriverCall(what, took, timedOut)
	}
}

// Sample reads the counters dcgm-exporter's default set takes from NVML,
// each through the guard. A query the device does not support leaves its
// field out; a hung call or a lost driver fails the sample.
func (b *Backend) Sample(ctx context.Context, uuid string) (hardware.Sample, error) {
	s := hardware.Sample{Time: time.Now()}
	if err := ctx.Err(); err != nil {
		return s, err
	}
	h, err := call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(uuid) })
	if err != nil {
		return s, driverErr(err)
	}
	// keep records a query's result; only a wedged or lost driver is an error.
	var failed error
	keep := func(f hardware.Field, err error, set func()) {
		switch {
		case err == nil:
			s.Have |= f
			set()
		case errors.Is(err, errWedged) || lost(err):
			failed = errors.Join(failed, err)
		}
	}
	u, err := call(b, "GetUtilizationRates", h.GetUtilizationRates)
	keep(hardware.FieldGPUUtil|hardware.FieldMemCopyUtil, err, func() { s.GPUUtil, s.MemCopyUtil = float64(u.Gpu), float64(u.Memory) })
	m2, err := call(b, "GetMemoryInfo_v2", h.GetMemoryInfo_v2)
	if err == nil { // its errors are kept once, with FieldFB's below
		s.Have |= hardware.FieldFBReserved
		s.FBReservedMiB = float64(m2.Reserved >> 20)
	}
	if err != nil && unsupported(err) { // drivers before the v2 query: reserved memory is unknown
		var m nvml.Memory
		m, err = call(b, "GetMemoryInfo", h.GetMemoryInfo)
		m2 = nvml.Memory_v2{Total: m.Total, Free: m.Free, Used: m.Used}
	}
	keep(hardware.FieldFB, err, func() { s.FBUsedMiB, s.FBFreeMiB = float64(m2.Used>>20), float64(m2.Free>>20) })
	t, err := call(b, "GetTemperature", func() (uint32, nvml.Return) { return h.GetTemperature(nvml.TEMPERATURE_GPU) })
	keep(hardware.FieldGPUTemp, err, func() { s.GPUTempC = float64(t) })
	p, err := call(b, "GetPowerUsage", h.GetPowerUsage)
	keep(hardware.FieldPower, err, func() { s.PowerW = float64(p) / 1000 })
	e, err := call(b, "GetTotalEnergyConsumption", h.GetTotalEnergyConsumption)
	keep(hardware.FieldEnergy, err, func() { s.EnergyMJ = float64(e) })
	sm, err := call(b, "GetClockInfo", func() (uint32, nvml.Return) { return h.GetClockInfo(nvml.CLOCK_SM) })
	keep(hardware.FieldSMClock, err, func() { s.SMClockMHz = float64(sm) })
	mc, err := call(b, "GetClockInfo", func() (uint32, nvml.Return) { return h.GetClockInfo(nvml.CLOCK_MEM) })
	keep(hardware.FieldMemClock, err, func() { s.MemClockMHz = float64(mc) })
	r, err := call(b, "GetPcieReplayCounter", h.GetPcieReplayCounter)
	keep(hardware.FieldPCIeReplays, err, func() { s.PCIeReplays = float64(r) })
	type remap struct {
		corr, unc int
		failure   bool
	}
	rm, err := call(b, "GetRemappedRows", func() (remap, nvml.Return) {
		c, u, _, f, ret := h.GetRemappedRows()
		return remap{c, u, f}, ret
	})
	keep(hardware.FieldRemappedRows, err, func() {
		s.RemappedCorrectable, s.RemappedUncorrectable, s.RowRemapFailure = float64(rm.corr), float64(rm.unc), rm.failure
	})
	if failed != nil {
		return s, driverErr(failed)
	}
	return s, nil
}

// lost reports an NVML answer that means the driver or the GPU is gone.
func lost(err error) bool {
	return isReturn(err, nvml.ERROR_DRIVER_NOT_LOADED) || isReturn(err, nvml.ERROR_UNINITIALIZED) ||
		isReturn(err, nvml.ERROR_LIB_RM_VERSION_MISMATCH) || isReturn(err, nvml.ERROR_GPU_IS_LOST)
}

// driverErr marks the errors of an unloaded or mismatched driver as
// hardware.ErrDriverLost, so the daemon waits for it to come back.
func driverErr(err error) error {
	if isReturn(err, nvml.ERROR_DRIVER_NOT_LOADED) || isReturn(err, nvml.ERROR_UNINITIALIZED) || isReturn(err, nvml.ERROR_LIB_RM_VERSION_MISMATCH) {
		return fmt.Errorf("%w: %w", hardware.ErrDriverLost, err)
	}
	return err
}

// Reinit shuts NVML down and initialises it again: after a driver reload
// or upgrade the old session's handles are stale.
func (b *Backend) Reinit(context.Context) error {
	_ = b.do("Shutdown", b.lib.Shutdown) // the old session may already be gone
	if err := b.do("Init", b.lib.Init); err != nil {
		return fmt.Errorf("NVML re-init: %w", driverErr(err))
	}
	return nil
}
