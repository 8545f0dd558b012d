//go:build cgo && linux

package nvml

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/gpulet/gpulet/internal/hardware"
)

// allFields is every field NVML telemetry fills (tensor activity needs DCGM
// profiling and is never read through NVML).
const allFields = hardware.FieldGPUUtil | hardware.FieldMemCopyUtil | hardware.FieldFB | hardware.FieldFBReserved |
	hardware.FieldGPUTemp | hardware.FieldPower | hardware.FieldEnergy | hardware.FieldSMClock | hardware.FieldMemClock |
	hardware.FieldPCIeReplays | hardware.FieldRemappedRows

// withTelemetry gives device d known answers to every telemetry query, in
// NVML's units; wantSample is what Sample must make of them.
func withTelemetry(d *server.Device) {
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{Gpu: 87, Memory: 41}, nvml.SUCCESS }
	d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
		return nvml.Memory_v2{Total: 143771 << 20, Reserved: 528<<20 + 4095, Free: 133000<<20 + 1, Used: 10243 << 20}, nvml.SUCCESS
	}
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		return nvml.Memory{Total: 143771 << 20, Free: 133000 << 20, Used: 10771 << 20}, nvml.SUCCESS
	}
	d.GetTemperatureFunc = func(s nvml.TemperatureSensors) (uint32, nvml.Return) {
		if s != nvml.TEMPERATURE_GPU {
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
		return 54, nvml.SUCCESS
	}
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 312456, nvml.SUCCESS }                 // mW
	d.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) { return 9876543210, nvml.SUCCESS } // mJ
	d.GetClockInfoFunc = func(c nvml.ClockType) (uint32, nvml.Return) {
		switch c {
		case nvml.CLOCK_SM:
			return 1980, nvml.SUCCESS
		case nvml.CLOCK_MEM:
			return 2619, nvml.SUCCESS
		}
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	d.GetPcieReplayCounterFunc = func() (int, nvml.Return) { return 3, nvml.SUCCESS }
	d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 2, 1, true, false, nvml.SUCCESS }
}

// wantSample is withTelemetry's answers in the units of hardware.Sample
// (the dcgm-exporter series': %, MiB, °C, W, mJ, MHz).
var wantSample = hardware.Sample{
	Have:    allFields,
	GPUUtil: 87, MemCopyUtil: 41,
	FBUsedMiB: 10243, FBFreeMiB: 133000, FBReservedMiB: 528,
	GPUTempC: 54, PowerW: 312.456, EnergyMJ: 9876543210,
	SMClockMHz: 1980, MemClockMHz: 2619,
	PCIeReplays:         3,
	RemappedCorrectable: 2, RemappedUncorrectable: 1,
}

// values keeps only the fields s has, so two samples compare on what they
// claim to know.
func values(s hardware.Sample) hardware.Sample {
	out := hardware.Sample{Have: s.Have}
	if s.Has(hardware.FieldGPUUtil) {
		out.GPUUtil = s.GPUUtil
	}
	if s.Has(hardware.FieldMemCopyUtil) {
		out.MemCopyUtil = s.MemCopyUtil
	}
	if s.Has(hardware.FieldFB) {
		out.FBUsedMiB, out.FBFreeMiB = s.FBUsedMiB, s.FBFreeMiB
	}
	if s.Has(hardware.FieldFBReserved) {
		out.FBReservedMiB = s.FBReservedMiB
	}
	if s.Has(hardware.FieldGPUTemp) {
		out.GPUTempC = s.GPUTempC
	}
	if s.Has(hardware.FieldPower) {
		out.PowerW = s.PowerW
	}
	if s.Has(hardware.FieldEnergy) {
		out.EnergyMJ = s.EnergyMJ
	}
	if s.Has(hardware.FieldSMClock) {
		out.SMClockMHz = s.SMClockMHz
	}
	if s.Has(hardware.FieldMemClock) {
		out.MemClockMHz = s.MemClockMHz
	}
	if s.Has(hardware.FieldPCIeReplays) {
		out.PCIeReplays = s.PCIeReplays
	}
	if s.Has(hardware.FieldRemappedRows) {
		out.RemappedCorrectable, out.RemappedUncorrectable, out.RowRemapFailure = s.RemappedCorrectable, s.RemappedUncorrectable, s.RowRemapFailure
	}
	return out
}

// recorder is a CallObserver that keeps every report.
type recorder struct {
	mu    sync.Mutex
	calls []observed
}

type observed struct {
	what     string
	took     time.Duration
	timedOut bool
}

func (r *recorder) DriverCall(what string, took time.Duration, timedOut bool) {
	r.mu.Lock()
	r.calls = append(r.calls, observed{what, took, timedOut})
	r.mu.Unlock()
}

func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.calls {
		out = append(out, c.what)
	}
	return out
}

func (r *recorder) timeouts() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.calls {
		if c.timedOut {
			out = append(out, c.what)
		}
	}
	return out
}

func TestSample(t *testing.T) {
	f := newFixture(t, dgxh100.New())
	withTelemetry(f.devs[3])
	rec := &recorder{}
	f.b.SetCallObserver(rec)
	before := time.Now()
	s, err := f.b.Sample(context.Background(), f.devs[3].UUID)
	if err != nil {
		t.Fatal(err)
	}
	if s.Time.Before(before) || s.Time.After(time.Now()) {
		t.Errorf("sample time %v is not now", s.Time)
	}
	if s.Have != allFields {
		t.Errorf("Have = %b, want %b", s.Have, allFields)
	}
	s.Time = time.Time{}
	if s != wantSample {
		t.Errorf("Sample =\n%+v\nwant\n%+v", s, wantSample)
	}
	// Every query goes through the guard, so each is timed and can time out.
	want := []string{"DeviceGetHandleByUUID", "GetUtilizationRates", "GetMemoryInfo_v2", "GetTemperature", "GetPowerUsage",
		"GetTotalEnergyConsumption", "GetClockInfo", "GetClockInfo", "GetPcieReplayCounter", "GetRemappedRows"}
	if got := rec.names(); !reflect.DeepEqual(got, want) {
		t.Errorf("observed calls %v, want %v", got, want)
	}
	if to := rec.timeouts(); len(to) != 0 {
		t.Errorf("timeouts reported: %v", to)
	}
}

func TestSampleRowRemapFailure(t *testing.T) {
	f := newFixture(t, dgxh100.New())
	withTelemetry(f.devs[0])
	f.devs[0].GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 7, false, true, nvml.SUCCESS }
	s, err := f.b.Sample(context.Background(), f.devs[0].UUID)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Has(hardware.FieldRemappedRows) || s.RemappedCorrectable != 0 || s.RemappedUncorrectable != 7 || !s.RowRemapFailure {
		t.Errorf("remapped rows: %+v", s)
	}
}

// A query the device cannot answer leaves its field out of the sample (so
// no series is exported), never a 0 that reads as a measurement.
func TestSampleUnsupportedLeavesFieldOut(t *testing.T) {
	notSupported := func(d *server.Device, which string) {
		switch which {
		case "util":
			d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED }
		case "temp":
			d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
		case "power":
			d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
		case "energy":
			d.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
		case "clocks":
			d.GetClockInfoFunc = func(nvml.ClockType) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
		case "replays":
			d.GetPcieReplayCounterFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
		case "remap":
			d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, nvml.ERROR_NOT_SUPPORTED }
		case "memory":
			d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) { return nvml.Memory_v2{}, nvml.ERROR_NOT_SUPPORTED }
			d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_NOT_SUPPORTED }
		case "memory v2":
			d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) { return nvml.Memory_v2{}, nvml.ERROR_FUNCTION_NOT_FOUND }
		default:
			panic(which)
		}
	}
	for _, tc := range []struct {
		name    string
		queries []string
		absent  hardware.Field
		check   func(t *testing.T, s hardware.Sample)
	}{
		{name: "utilisation", queries: []string{"util"}, absent: hardware.FieldGPUUtil | hardware.FieldMemCopyUtil},
		{name: "temperature", queries: []string{"temp"}, absent: hardware.FieldGPUTemp},
		{name: "power", queries: []string{"power"}, absent: hardware.FieldPower},
		{name: "energy", queries: []string{"energy"}, absent: hardware.FieldEnergy},
		{name: "clocks", queries: []string{"clocks"}, absent: hardware.FieldSMClock | hardware.FieldMemClock},
		{name: "PCIe replays", queries: []string{"replays"}, absent: hardware.FieldPCIeReplays},
		{name: "remapped rows (before Ampere)", queries: []string{"remap"}, absent: hardware.FieldRemappedRows},
		{name: "memory", queries: []string{"memory"}, absent: hardware.FieldFB | hardware.FieldFBReserved},
		{
			// A driver before the v2 query: used and free come from v1
			// (whose used includes the reserved memory); reserved is unknown.
			name: "memory v2 (old driver)", queries: []string{"memory v2"}, absent: hardware.FieldFBReserved,
			check: func(t *testing.T, s hardware.Sample) {
				if s.FBUsedMiB != 10771 || s.FBFreeMiB != 133000 {
					t.Errorf("v1 memory: used %v free %v MiB, want 10771 133000", s.FBUsedMiB, s.FBFreeMiB)
				}
			},
		},
		{
			// A MIG device's handle answers memory queries and little else.
			name: "MIG device", queries: []string{"util", "temp", "power", "energy", "clocks", "replays", "remap"},
			absent: allFields &^ (hardware.FieldFB | hardware.FieldFBReserved),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, dgxh100.New())
			withTelemetry(f.devs[1])
			for _, q := range tc.queries {
				notSupported(f.devs[1], q)
			}
			s, err := f.b.Sample(context.Background(), f.devs[1].UUID)
			if err != nil {
				t.Fatalf("Sample with unsupported %v: %v; want a partial sample", tc.queries, err)
			}
			if want := allFields &^ tc.absent; s.Have != want {
				t.Errorf("Have = %b, want %b (missing %b, extra %b)", s.Have, want, want&^s.Have, s.Have&^want)
			}
			// What is there is still right.
			want := wantSample
			want.Have = allFields &^ tc.absent
			if tc.check == nil {
				if got, want := values(s), values(want); got != want {
					t.Errorf("Sample =\n%+v\nwant\n%+v", got, want)
				}
			} else {
				tc.check(t, s)
			}
		})
	}
}

// Other failures of one query (a transient NVML error) leave that field
// out too; only a lost driver or a hung call fails the whole sample.
func TestSampleOtherErrorLeavesFieldOut(t *testing.T) {
	f := newFixture(t, dgxh100.New())
	withTelemetry(f.devs[2])
	f.devs[2].GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
	s, err := f.b.Sample(context.Background(), f.devs[2].UUID)
	if err != nil {
		t.Fatal(err)
	}
	if s.Has(hardware.FieldPower) || s.Have != allFields&^hardware.FieldPower {
		t.Errorf("Have = %b, want every field but power", s.Have)
	}
}

func TestSampleUnknownDevice(t *testing.T) {
	f := newFixture(t, dgxh100.New())
	_, err := f.b.Sample(context.Background(), "GPU-00000000-0000-0000-0000-000000000000")
	if err == nil || errors.Is(err, hardware.ErrDriverLost) {
		t.Fatalf("Sample of an unknown UUID = %v; want an error that is not a lost driver", err)
	}
}

func TestSampleCancelled(t *testing.T) {
	f := newFixture(t, dgxh100.New())
	withTelemetry(f.devs[0])
	rec := &recorder{}
	f.b.SetCallObserver(rec)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.b.Sample(ctx, f.devs[0].UUID); !errors.Is(err, context.Canceled) {
		t.Errorf("Sample with a cancelled context = %v", err)
	}
	if n := rec.names(); len(n) != 0 {
		t.Errorf("a cancelled Sample called NVML: %v", n)
	}
}

// A lost driver fails the sample with hardware.ErrDriverLost (the daemon
// then takes every device away and reconnects); a lost GPU fails it too,
// but is one device's fault (Xid 79, reported by Watch and Probe), not the
// driver's.
func TestSampleDriverLost(t *testing.T) {
	for _, tc := range []struct {
		ret        nvml.Return
		driverLost bool
	}{
		{nvml.ERROR_DRIVER_NOT_LOADED, true},
		{nvml.ERROR_UNINITIALIZED, true},
		{nvml.ERROR_LIB_RM_VERSION_MISMATCH, true},
		{nvml.ERROR_GPU_IS_LOST, false},
	} {
		for _, where := range []string{"DeviceGetHandleByUUID", "GetUtilizationRates", "GetMemoryInfo_v2", "GetPowerUsage", "GetRemappedRows"} {
			t.Run(fmt.Sprintf("%s/%s", nvml.ErrorString(tc.ret), where), func(t *testing.T) {
				f := newFixture(t, dgxh100.New())
				d := f.devs[4]
				withTelemetry(d)
				switch where {
				case "DeviceGetHandleByUUID":
					f.srv.DeviceGetHandleByUUIDFunc = func(string) (nvml.Device, nvml.Return) { return nil, tc.ret }
				case "GetUtilizationRates":
					d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, tc.ret }
				case "GetMemoryInfo_v2":
					d.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) { return nvml.Memory_v2{}, tc.ret }
				case "GetPowerUsage":
					d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, tc.ret }
				case "GetRemappedRows":
					d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, tc.ret }
				}
				_, err := f.b.Sample(context.Background(), d.UUID)
				if err == nil {
					t.Fatalf("Sample with %s from %s succeeded", nvml.ErrorString(tc.ret), where)
				}
				if got := errors.Is(err, hardware.ErrDriverLost); got != tc.driverLost {
					t.Errorf("Sample = %v; errors.Is(ErrDriverLost) = %v, want %v", err, got, tc.driverLost)
				}
				if !strings.Contains(err.Error(), where) || !strings.Contains(err.Error(), nvml.ErrorString(tc.ret)) {
					t.Errorf("error %q does not name the call and NVML's answer", err)
				}
			})
		}
	}
}

// A hung query times out through the guard: the sample fails after
// CallTimeout with the wedged error, the observer hears of the timeout, and
// the calls after it are refused at once instead of hanging in turn.
func TestSampleHungCall(t *testing.T) {
	for _, tc := range []struct {
		what string
		hang func(f *fixture, d *server.Device, wait func())
	}{
		{"DeviceGetHandleByUUID", func(f *fixture, d *server.Device, wait func()) {
			orig := f.srv.DeviceGetHandleByUUIDFunc
			f.srv.DeviceGetHandleByUUIDFunc = func(u string) (nvml.Device, nvml.Return) { wait(); return orig(u) }
		}},
		{"GetUtilizationRates", func(f *fixture, d *server.Device, wait func()) {
			orig := d.GetUtilizationRatesFunc
			d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { wait(); return orig() }
		}},
		{"GetPowerUsage", func(f *fixture, d *server.Device, wait func()) {
			orig := d.GetPowerUsageFunc
			d.GetPowerUsageFunc = func() (uint32, nvml.Return) { wait(); return orig() }
		}},
		{"GetRemappedRows", func(f *fixture, d *server.Device, wait func()) {
			orig := d.GetRemappedRowsFunc
			d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { wait(); return orig() }
		}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			const timeout = 100 * time.Millisecond
			setTimeouts(t, timeout)
			f := newFixture(t, dgxh100.New())
			d := f.devs[6]
			withTelemetry(d)
			rec := &recorder{}
			f.b.SetCallObserver(rec)
			block := newBlocker(t)
			tc.hang(f, d, block.wait)

			start := time.Now()
			_, err := f.b.Sample(context.Background(), d.UUID)
			el := time.Since(start)
			if !errors.Is(err, errWedged) || !strings.Contains(err.Error(), tc.what+" did not return within") {
				t.Fatalf("Sample with a hung %s = %v; want a 'did not return within' error", tc.what, err)
			}
			if errors.Is(err, hardware.ErrDriverLost) {
				t.Errorf("a hung call is not a lost driver: %v", err)
			}
			if el < timeout || el > timeout+time.Second {
				t.Errorf("Sample returned after %v, want about %v", el, timeout)
			}
			if to := rec.timeouts(); !reflect.DeepEqual(to, []string{tc.what}) {
				t.Errorf("timeouts observed %v, want [%s]", to, tc.what)
			}
			rec.mu.Lock()
			for _, c := range rec.calls {
				if c.timedOut && c.took != timeout {
					t.Errorf("timed-out %s observed as taking %v, want the deadline %v", c.what, c.took, timeout)
				}
			}
			rec.mu.Unlock()

			// Wedged: the next sample fails at once.
			start = time.Now()
			if _, err := f.b.Sample(context.Background(), f.devs[7].UUID); !errors.Is(err, errWedged) || !strings.Contains(err.Error(), tc.what+" has not returned") {
				t.Errorf("Sample while wedged = %v", err)
			}
			if el := time.Since(start); el > timeout/2 {
				t.Errorf("Sample while wedged took %v", el)
			}

			block.release()
			waitUnwedged(t, f.b)
			s, err := f.b.Sample(context.Background(), d.UUID)
			if err != nil {
				t.Fatalf("Sample after the hung call returned: %v", err)
			}
			if s.Have != allFields {
				t.Errorf("Have = %b after recovery", s.Have)
			}
		})
	}
}

// driver models the kernel driver under a go-nvml mock: it can be unloaded
// and loaded again, and NVML's session must be re-initialised after.
type driver struct {
	mu      sync.Mutex
	loaded  bool
	session bool // NVML initialised against the loaded driver
	inits   int
}

// withDriver makes f's mock answer like NVML over d: Init fails while the
// driver is away, and every query fails without a live session.
func withDriver(f *fixture) *driver {
	d := &driver{loaded: true, session: true}
	f.srv.InitFunc = func() nvml.Return {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.inits++
		if !d.loaded {
			return nvml.ERROR_DRIVER_NOT_LOADED
		}
		d.session = true
		return nvml.SUCCESS
	}
	f.srv.ShutdownFunc = func() nvml.Return {
		d.mu.Lock()
		defer d.mu.Unlock()
		if !d.session {
			return nvml.ERROR_UNINITIALIZED
		}
		d.session = false
		return nvml.SUCCESS
	}
	gate := func() nvml.Return {
		d.mu.Lock()
		defer d.mu.Unlock()
		switch {
		case !d.loaded:
			return nvml.ERROR_DRIVER_NOT_LOADED
		case !d.session:
			return nvml.ERROR_UNINITIALIZED
		}
		return nvml.SUCCESS
	}
	byUUID, byIndex, version, count := f.srv.DeviceGetHandleByUUIDFunc, f.srv.DeviceGetHandleByIndexFunc, f.srv.SystemGetDriverVersionFunc, f.srv.DeviceGetCountFunc
	f.srv.DeviceGetHandleByUUIDFunc = func(u string) (nvml.Device, nvml.Return) {
		if r := gate(); r != nvml.SUCCESS {
			return nil, r
		}
		return byUUID(u)
	}
	f.srv.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if r := gate(); r != nvml.SUCCESS {
			return nil, r
		}
		return byIndex(i)
	}
	f.srv.SystemGetDriverVersionFunc = func() (string, nvml.Return) {
		if r := gate(); r != nvml.SUCCESS {
			return "", r
		}
		return version()
	}
	f.srv.DeviceGetCountFunc = func() (int, nvml.Return) {
		if r := gate(); r != nvml.SUCCESS {
			return 0, r
		}
		return count()
	}
	for _, dev := range f.devs {
		util := dev.GetUtilizationRatesFunc
		dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			if r := gate(); r != nvml.SUCCESS {
				return nvml.Utilization{}, r
			}
			return util()
		}
	}
	return d
}

func (d *driver) unload() {
	d.mu.Lock()
	d.loaded, d.session = false, false
	d.mu.Unlock()
}

func (d *driver) load() {
	d.mu.Lock()
	d.loaded = true
	d.mu.Unlock()
}

// TestReinit walks a driver reload: the sample fails with ErrDriverLost,
// reconnecting fails the same way while the driver is away, and after it
// returns Reinit opens a new session and discovery and telemetry work.
func TestReinit(t *testing.T) {
	f := newFixture(t, dgxh100.New())
	for _, d := range f.devs {
		withTelemetry(d)
	}
	drv := withDriver(f)
	ctx := context.Background()
	uuid := f.devs[0].UUID
	if _, err := f.b.Sample(ctx, uuid); err != nil {
		t.Fatal(err)
	}

	drv.unload()
	if _, err := f.b.Sample(ctx, uuid); !errors.Is(err, hardware.ErrDriverLost) {
		t.Fatalf("Sample with the driver unloaded = %v; want ErrDriverLost", err)
	}
	for i := 0; i < 3; i++ { // the daemon retries with backoff
		err := f.b.Reinit(ctx)
		if !errors.Is(err, hardware.ErrDriverLost) || !strings.Contains(err.Error(), "re-init") {
			t.Fatalf("Reinit with the driver away = %v; want an ErrDriverLost re-init error", err)
		}
	}
	if _, err := f.b.Discover(ctx); err == nil {
		t.Fatal("Discover with the driver away succeeded")
	}

	drv.load()
	// The driver is back but this process's NVML session is not: queries
	// fail until Reinit.
	if _, err := f.b.Sample(ctx, uuid); !errors.Is(err, hardware.ErrDriverLost) {
		t.Fatalf("Sample before Reinit = %v; want ErrDriverLost", err)
	}
	shutdowns := len(f.srv.ShutdownCalls())
	if err := f.b.Reinit(ctx); err != nil {
		t.Fatalf("Reinit with the driver back: %v", err)
	}
	if n := len(f.srv.ShutdownCalls()) - shutdowns; n != 1 {
		t.Errorf("Reinit made %d Shutdown calls, want 1 (the old session first)", n)
	}
	n, err := f.b.Discover(ctx)
	if err != nil {
		t.Fatalf("Discover after Reinit: %v", err)
	}
	if len(n.GPUs) != len(f.devs) {
		t.Errorf("%d GPUs after Reinit, want %d", len(n.GPUs), len(f.devs))
	}
	s, err := f.b.Sample(ctx, uuid)
	if err != nil {
		t.Fatalf("Sample after Reinit: %v", err)
	}
	if s.Have != allFields {
		t.Errorf("Have = %b after Reinit", s.Have)
	}

	// Reinit on a live driver (the daemon's retry racing a recovery) ends
	// with one working session.
	if err := f.b.Reinit(ctx); err != nil {
		t.Fatalf("Reinit on a live driver: %v", err)
	}
	if _, err := f.b.Sample(ctx, uuid); err != nil {
		t.Fatalf("Sample after a second Reinit: %v", err)
	}
}

// A driver whose Init hangs does not hang the reconnect loop.
func TestReinitHungInit(t *testing.T) {
	const timeout = 100 * time.Millisecond
	setTimeouts(t, timeout)
	f := newFixture(t, dgxh100.New())
	block := newBlocker(t)
	f.srv.InitFunc = func() nvml.Return { block.wait(); return nvml.SUCCESS }
	rec := &recorder{}
	f.b.SetCallObserver(rec)
	start := time.Now()
	err := f.b.Reinit(context.Background())
	if !errors.Is(err, errWedged) || !strings.Contains(err.Error(), "re-init") {
		t.Fatalf("Reinit with a hung Init = %v", err)
	}
	if el := time.Since(start); el > timeout+time.Second {
		t.Errorf("Reinit took %v", el)
	}
	if to := rec.timeouts(); !reflect.DeepEqual(to, []string{"Init"}) {
		t.Errorf("timeouts observed %v, want [Init]", to)
	}
	// Until Init returns, the next try fails at once.
	start = time.Now()
	if err := f.b.Reinit(context.Background()); !errors.Is(err, errWedged) {
		t.Errorf("second Reinit = %v", err)
	}
	if el := time.Since(start); el > timeout/2 {
		t.Errorf("second Reinit took %v", el)
	}
	block.release()
	waitUnwedged(t, f.b)
	if err := f.b.Reinit(context.Background()); err != nil {
		t.Errorf("Reinit after Init returned: %v", err)
	}
}
