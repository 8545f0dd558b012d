//go:build cgo && linux

package nvml

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpulet/gpulet/internal/hardware"
)

// waitTimeout is how long one event wait blocks inside NVML. Watch does not
// need it to notice cancellation; it bounds how long a wait may take before
// the driver counts as wedged (waitTimeout + CallTimeout).
var waitTimeout = time.Second

// lostRetry is how long Watch pauses after NVML reports a lost GPU, so a GPU
// that stays lost is reported again without a busy loop.
var lostRetry = 5 * time.Second

// sweepEvery is how often Watch checks every GPU's handle and volatile
// uncorrected ECC counter between events (see sweep).
var sweepEvery = 5 * time.Second

// invalidID is NVML's GPU/compute instance ID of an event outside MIG.
const invalidID = 0xFFFFFFFF

// gpuUUIDs lists the GPUs to watch: those of the last discovery, or what
// NVML enumerates when Watch runs before Discover.
func (b *Backend) gpuUUIDs() ([]string, error) {
	b.mu.Lock()
	node := b.node
	b.mu.Unlock()
	var out []string
	if node != nil {
		for _, g := range node.GPUs {
			out = append(out, g.UUID)
		}
		return out, nil
	}
	count, err := call(b, "DeviceGetCount", b.lib.DeviceGetCount)
	if err != nil {
		return nil, err
	}
	for i := 0; i < count; i++ {
		h, err := call(b, "DeviceGetHandleByIndex", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByIndex(i) })
		if err != nil {
			return nil, err
		}
		u, err := call(b, "GetUUID", h.GetUUID)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

const wantedEvents = uint64(nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError)

// errUnwatchable means a GPU's driver cannot deliver the events Watch needs.
var errUnwatchable = errors.New("the GPU cannot report XID or ECC events")

// retryPause is how long Watch waits before retrying what a wedged driver
// refused.
var retryPause = time.Second

// register adds one GPU's XID and double-bit ECC events to set.
func (b *Backend) register(uuid string, set nvml.EventSet) error {
	h, err := call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(uuid) })
	if err != nil {
		return err
	}
	supported, err := call(b, "GetSupportedEventTypes", h.GetSupportedEventTypes)
	if unsupported(err) {
		return fmt.Errorf("%w: %v", errUnwatchable, err)
	}
	if err != nil {
		return err
	}
	if supported&wantedEvents == 0 {
		return fmt.Errorf("%w: it supports event mask %#x only", errUnwatchable, supported)
	}
	err = b.do("RegisterEvents", func() nvml.Return { return h.RegisterEvents(supported&wantedEvents, set) })
	if unsupported(err) {
		return fmt.Errorf("%w: %v", errUnwatchable, err)
	}
	return err
}

// Watch reports XID and double-bit ECC events for every GPU until ctx ends.
//
// A GPU whose driver cannot deliver these events is logged and left
// healthy: nothing is wrong with it, it is only unwatched. (NVIDIA's plugin
// marks such a GPU unhealthy until the plugin restarts, which is why users of
// vGPU guests turn all its health checks off; here the monitor would re-probe
// it healthy after its quiet period anyway, so the mark would only be an
// outage at every watch start.) A GPU that fails while registering is
// reported unhealthy, and a driver that stops answering makes every GPU
// unhealthy; Watch keeps going and retries once the driver answers again.
func (b *Backend) Watch(ctx context.Context, events chan<- hardware.Event) error {
	send := func(ev hardware.Event) bool {
		select {
		case events <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	pause := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(retryPause):
			return true
		}
	}
	uuids, err := b.gpuUUIDs()
	if err != nil {
		return err
	}
	set, err := call(b, "EventSetCreate", b.lib.EventSetCreate)
	if err != nil {
		return err
	}
	free := true // false once a wait that never returned owns the set
	defer func() {
		if free {
			set.Free()
		}
	}()
	watched := 0
	pending := uuids // to register; those a wedged driver refused stay here
	register := func() bool {
		var retry []string
		for _, uuid := range pending {
			err := b.register(uuid, set)
			switch {
			case err == nil:
				watched++
			case errors.Is(err, errUnwatchable):
				slog.Warn("GPU cannot report XID or ECC events; it stays schedulable but its faults go unnoticed", "device", uuid, "err", err)
			default:
				if !send(hardware.Event{Kind: hardware.EventUnhealthy, UUID: uuid, Reason: "cannot watch the GPU for faults: " + err.Error()}) {
					return false
				}
				if hung(err) != nil {
					retry = append(retry, uuid)
				}
			}
		}
		pending = retry
		return true
	}

	type waitResult struct {
		data nvml.EventData
		ret  nvml.Return
	}
	sw := newSweepState()
	var lastSweep time.Time
	for ctx.Err() == nil {
		if len(pending) > 0 && b.wedged("RegisterEvents") == nil && !register() {
			return nil
		}
		if time.Since(lastSweep) >= sweepEvery && b.wedged("sweep") == nil {
			lastSweep = time.Now()
			if !b.sweep(uuids, sw, send) {
				return nil
			}
		}
		if watched == 0 && len(pending) == 0 {
			<-ctx.Done() // nothing can be watched
			return nil
		}
		if watched == 0 {
			// Registration waits for a wedged driver to answer again.
			if !pause() {
				return nil
			}
			continue
		}
		done := make(chan waitResult, 1)
		start := time.Now()
		ms := uint32(max(waitTimeout.Milliseconds(), 1))
		go func() {
			data, ret := set.Wait(ms)
			done <- waitResult{data, ret}
		}()
		limit := waitTimeout + CallTimeout
		timer := time.NewTimer(limit)
		var r waitResult
		select {
		case r = <-done:
			timer.Stop()
		case <-ctx.Done():
			timer.Stop()
			free = false
			go func() { <-done; set.Free() }()
			return nil
		case <-timer.C:
			// The driver is wedged: every GPU is unusable until it
			// answers again. The monitor re-probes them afterwards.
			forget := b.markStuck("EventSet.Wait", start)
			reason := fmt.Sprintf("NVML event wait did not return within %s (%s)", limit, errWedged)
			for _, u := range uuids {
				if !send(hardware.Event{Kind: hardware.EventUnhealthy, UUID: u, Reason: reason}) {
					break
				}
			}
			select {
			case r = <-done:
				forget()
			case <-ctx.Done():
				free = false
				go func() { <-done; forget(); set.Free() }()
				return nil
			}
		}
		switch r.ret {
		case nvml.SUCCESS:
		case nvml.ERROR_TIMEOUT:
			continue
		case nvml.ERROR_GPU_IS_LOST:
			if !b.reportLost(uuids, send) {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(lostRetry):
			}
			continue
		default:
			return fmt.Errorf("NVML event wait: %s", nvml.ErrorString(r.ret))
		}
		for _, ev := range b.events(r.data) {
			if !send(ev) {
				return nil
			}
		}
	}
	return nil
}

// events turns one NVML event into gpulet events. An event inside a MIG
// instance is pinned on that instance when the last discovery knows it.
func (b *Backend) events(data nvml.EventData) []hardware.Event {
	ev := hardware.Event{}
	switch {
	case data.EventType&nvml.EventTypeXidCriticalError != 0:
		ev.Kind, ev.XID = hardware.EventXID, data.EventData
	case data.EventType&nvml.EventTypeDoubleBitEccError != 0:
		ev.Kind = hardware.EventECCDoubleBit
	default:
		return nil
	}
	if data.Device != nil {
		u, err := call(b, "GetUUID", data.Device.GetUUID)
		if err != nil {
			ev.Reason = "the device of the event is unknown: " + err.Error()
		}
		ev.UUID = u
	}
	if ev.UUID == "" || data.GpuInstanceId == invalidID {
		return []hardware.Event{ev}
	}
	b.mu.Lock()
	node := b.node
	b.mu.Unlock()
	var out []hardware.Event
	if node != nil {
		if g, _, ok := node.GPUByUUID(ev.UUID); ok && g.MIGEnabled {
			for _, m := range g.MIGDevices {
				if uint32(m.GI) == data.GpuInstanceId && (data.ComputeInstanceId == invalidID || uint32(m.CI) == data.ComputeInstanceId) {
					e := ev
					e.UUID = m.UUID
					out = append(out, e)
				}
			}
		}
	}
	if len(out) == 0 {
		return []hardware.Event{ev}
	}
	return out
}

// reportLost names the GPUs NVML says are lost (Xid 79, fallen off the
// bus). It reports false when ctx ended while sending.
func (b *Backend) reportLost(uuids []string, send func(hardware.Event) bool) bool {
	found := false
	for _, u := range uuids {
		h, err := call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(u) })
		if err == nil {
			_, err = call(b, "GetMemoryInfo", h.GetMemoryInfo)
		}
		if isReturn(err, nvml.ERROR_GPU_IS_LOST) {
			found = true
			if !send(hardware.Event{Kind: hardware.EventXID, UUID: u, XID: 79, Reason: "NVML reports the GPU lost (fallen off the bus)"}) {
				return false
			}
		}
	}
	if !found {
		return send(hardware.Event{Kind: hardware.EventXID, XID: 79, Reason: "NVML reports a GPU lost but no GPU says which"})
	}
	return true
}

// sweepState is what the sweeps remember between runs: which GPUs were
// reported lost, each GPU's last uncorrected ECC count, and which GPUs were
// reported for a rise in it.
type sweepState struct {
	lost        map[string]bool
	ecc         map[string]uint64
	eccReported map[string]bool
}

func newSweepState() *sweepState {
	return &sweepState{lost: map[string]bool{}, ecc: map[string]uint64{}, eccReported: map[string]bool{}}
}

// sweep checks every GPU between events, for the faults a driver may
// report only through queries: a GPU NVML now calls lost (fallen off the
// bus, reported as XID 79 once when it goes, again if it comes back and goes
// again), and a volatile uncorrected ECC count that rose since the last
// sweep (an uncorrectable-ECC event, reported once: the GPU is then held
// until a reset, which zeroes the volatile count and re-arms the check).
// The first sweep only records the counts. It reports false when ctx ended
// while sending; a wedged driver ends the sweep early (the event wait
// reports that).
func (b *Backend) sweep(uuids []string, st *sweepState, send func(hardware.Event) bool) bool {
	for _, u := range uuids {
		h, err := call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(u) })
		var count uint64
		noECC := false
		if err == nil {
			count, err = call(b, "GetTotalEccErrors", func() (uint64, nvml.Return) {
				return h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC)
			})
			if unsupported(err) { // ECC off: a memory query still tells a lost GPU
				noECC = true
				_, err = call(b, "GetMemoryInfo", h.GetMemoryInfo)
			}
		}
		switch {
		case hung(err) != nil:
			return true
		case isReturn(err, nvml.ERROR_GPU_IS_LOST):
			if !st.lost[u] {
				st.lost[u] = true
				if !send(hardware.Event{Kind: hardware.EventXID, UUID: u, XID: 79, Reason: "NVML reports the GPU lost (fallen off the bus)"}) {
					return false
				}
			}
			continue
		case err != nil:
			continue // a transient failure
		}
		delete(st.lost, u)
		if noECC {
			continue
		}
		last, seen := st.ecc[u]
		st.ecc[u] = count
		if count < last {
			delete(st.eccReported, u) // the GPU was reset
		}
		if seen && count > last && !st.eccReported[u] {
			st.eccReported[u] = true
			reason := fmt.Sprintf("%d uncorrected ECC errors since the last reset (%d more)", count, count-last)
			if !send(hardware.Event{Kind: hardware.EventECCDoubleBit, UUID: u, Reason: reason}) {
				return false
			}
		}
	}
	return true
}
