package sim

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"sync"
	"time"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

// errDriverDown is what every call fails with while `gpulet sim driver
// down` holds: the simulated driver is unloaded.
var errDriverDown = fmt.Errorf("simulated driver unloaded (gpulet sim driver up brings it back): %w", hardware.ErrDriverLost)

var (
	_ hardware.Telemetry  = (*Backend)(nil)
	_ hardware.UsageAware = (*Backend)(nil)
)

// telemetryState is what the simulated counters need to stay plausible
// between samples: which GPUs containers hold, and the energy counters.
type telemetryState struct {
	mu     sync.Mutex
	inUse  map[string]bool
	energy map[string]float64 // mJ
	last   map[string]time.Time
}

// SetInUse tells the simulator which devices containers hold: their GPUs
// look busy, the others idle.
func (b *Backend) SetInUse(uuids []string) {
	m := make(map[string]bool, len(uuids))
	for _, u := range uuids {
		m[u] = true
	}
	b.tel.mu.Lock()
	b.tel.inUse = m
	b.tel.mu.Unlock()
}

// Sample makes up a plausible reading: a held GPU is busy (high
// utilisation, memory, power and clocks), a free one idles; values wobble
// a little over time so graphs move. A faulted GPU still reports (as real
// ones do); a removed one or an unloaded driver fails.
func (b *Backend) Sample(ctx context.Context, uuid string) (hardware.Sample, error) {
	if err := ctx.Err(); err != nil {
		return hardware.Sample{}, err
	}
	f, err := ReadFaults(b.root)
	if err != nil {
		return hardware.Sample{}, err
	}
	if f.DriverDown {
		return hardware.Sample{}, errDriverDown
	}
	gpu, mig, ok := findDevice(b.full, uuid)
	if !ok || f.removed(gpu.UUID) {
		return hardware.Sample{}, fmt.Errorf("simulated device %s: not found", uuid)
	}
	now := time.Now()
	b.tel.mu.Lock()
	defer b.tel.mu.Unlock()
	busy := b.tel.inUse[uuid] || b.tel.inUse[gpu.UUID]
	if mig == nil {
		for _, m := range gpu.MIGDevices {
			busy = busy || b.tel.inUse[m.UUID]
		}
	}
	w := wobble(uuid, now) // in [0,1)
	totalMiB := float64(gpu.MemoryBytes >> 20)
	if mig != nil {
		totalMiB = float64(mig.MemoryBytes >> 20)
	}
	s := hardware.Sample{
		Time: now,
		Have: hardware.FieldGPUUtil | hardware.FieldMemCopyUtil | hardware.FieldFB | hardware.FieldFBReserved | hardware.FieldGPUTemp |
			hardware.FieldPower | hardware.FieldEnergy | hardware.FieldSMClock | hardware.FieldMemClock |
			hardware.FieldPCIeReplays | hardware.FieldRemappedRows | hardware.FieldTensorActive,
		FBReservedMiB: math.Round(totalMiB * 0.006),
		MemClockMHz:   2619,
	}
	if busy {
		s.GPUUtil = math.Round(85 + 15*w)
		s.MemCopyUtil = math.Round(40 + 20*w)
		s.FBUsedMiB = math.Round(totalMiB * (0.6 + 0.2*w))
		s.GPUTempC = math.Round(62 + 8*w)
		s.PowerW = 450 + 200*w
		s.SMClockMHz = 1980
		s.TensorActive = 0.35 + 0.3*w
	} else {
		s.FBUsedMiB = 0
		s.GPUTempC = math.Round(30 + 3*w)
		s.PowerW = 68 + 4*w
		s.SMClockMHz = 345
	}
	if mig != nil {
		s.PowerW = 0 // power is per board; NVML reports none for an instance
		s.Have &^= hardware.FieldPower | hardware.FieldEnergy | hardware.FieldGPUTemp | hardware.FieldPCIeReplays | hardware.FieldRemappedRows
	}
	s.FBFreeMiB = totalMiB - s.FBUsedMiB - s.FBReservedMiB
	if fault, ok := f.GPUs[gpu.UUID]; ok && (fault.XID == 63 || fault.XID == 64) {
		s.RemappedUncorrectable = 1
		s.RowRemapFailure = fault.XID == 64
	}
	if s.Has(hardware.FieldEnergy) {
		if b.tel.energy == nil {
			b.tel.energy, b.tel.last = map[string]float64{}, map[string]time.Time{}
		}
		if last, ok := b.tel.last[uuid]; ok {
			b.tel.energy[uuid] += s.PowerW * 1000 * now.Sub(last).Seconds()
		}
		b.tel.last[uuid] = now
		s.EnergyMJ = math.Round(b.tel.energy[uuid])
	}
	return s, nil
}

// wobble is a per-device value in [0,1) that changes every few seconds.
func wobble(uuid string, now time.Time) float64 {
	h := fnv.New32a()
	fmt.Fprintf(h, "%s/%d", uuid, now.Unix()/5)
	return float64(h.Sum32()%1000) / 1000
}

// findDevice finds a GPU, or a MIG instance and its GPU, by UUID.
func findDevice(n *inventory.Node, uuid string) (inventory.GPU, *inventory.MIGDevice, bool) {
	for _, g := range n.GPUs {
		if g.UUID == uuid {
			return g, nil, true
		}
		for i := range g.MIGDevices {
			if g.MIGDevices[i].UUID == uuid {
				return g, &g.MIGDevices[i], true
			}
		}
	}
	return inventory.GPU{}, nil, false
}
