//go:build cgo && linux

package nvml

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"

	"github.com/gpulet/gpulet/internal/hardware"
)

// eventFeed is a mock event set whose Wait returns what the test sends, or
// ERROR_TIMEOUT after a few milliseconds.
type eventFeed struct {
	set   *mock.EventSet
	ch    chan nvml.EventData
	rets  chan nvml.Return
	mu    sync.Mutex
	freed bool
}

func newEventFeed(f *fixture) *eventFeed {
	e := &eventFeed{ch: make(chan nvml.EventData), rets: make(chan nvml.Return)}
	e.set = &mock.EventSet{
		WaitFunc: func(uint32) (nvml.EventData, nvml.Return) {
			select {
			case d := <-e.ch:
				return d, nvml.SUCCESS
			case r := <-e.rets:
				return nvml.EventData{}, r
			case <-time.After(2 * time.Millisecond):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return {
			e.mu.Lock()
			e.freed = true
			e.mu.Unlock()
			return nvml.SUCCESS
		},
	}
	f.srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return e.set, nvml.SUCCESS }
	return e
}

func (e *eventFeed) isFreed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.freed
}

func xid(d nvml.Device, code uint64) nvml.EventData {
	return nvml.EventData{Device: d, EventType: nvml.EventTypeXidCriticalError, EventData: code, GpuInstanceId: invalidID, ComputeInstanceId: invalidID}
}

type watcher struct {
	events chan hardware.Event
	errc   chan error
	cancel context.CancelFunc
}

// startWatch runs Watch until the test ends.
func startWatch(t *testing.T, b *Backend) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{events: make(chan hardware.Event, 32), errc: make(chan error, 1), cancel: cancel}
	go func() { w.errc <- b.Watch(ctx, w.events) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.errc:
		case <-time.After(2 * time.Second):
			t.Error("Watch did not end after its context was cancelled")
		}
	})
	return w
}

func (w *watcher) next(t *testing.T) hardware.Event {
	t.Helper()
	select {
	case ev := <-w.events:
		return ev
	case err := <-w.errc:
		t.Fatalf("Watch ended: %v", err)
	case <-time.After(2 * time.Second):
		t.Fatal("no event within 2s")
	}
	return hardware.Event{}
}

func TestWatchEvents(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	w := startWatch(t, f.b)

	send := func(d nvml.EventData) {
		select {
		case feed.ch <- d:
		case <-time.After(2 * time.Second):
			t.Fatal("Watch is not waiting for events")
		}
	}
	send(xid(f.devs[2], 48))
	if ev, want := w.next(t), (hardware.Event{Kind: hardware.EventXID, UUID: f.devs[2].UUID, XID: 48}); ev != want {
		t.Errorf("got %+v, want %+v", ev, want)
	}
	send(nvml.EventData{Device: f.devs[5], EventType: nvml.EventTypeDoubleBitEccError, GpuInstanceId: invalidID, ComputeInstanceId: invalidID})
	if ev, want := w.next(t), (hardware.Event{Kind: hardware.EventECCDoubleBit, UUID: f.devs[5].UUID}); ev != want {
		t.Errorf("got %+v, want %+v", ev, want)
	}
	send(nvml.EventData{Device: f.devs[1], EventType: nvml.EventTypePState}) // not a fault
	send(xid(nil, 79))
	if ev, want := w.next(t), (hardware.Event{Kind: hardware.EventXID, XID: 79}); ev != want {
		t.Errorf("got %+v, want %+v (a P-state event is no fault; an XID without a device has no UUID)", ev, want)
	}
	// ERROR_TIMEOUT loops: many waits have come and gone.
	deadline := time.Now().Add(2 * time.Second)
	for len(feed.set.WaitCalls()) < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d waits: ERROR_TIMEOUT does not loop", len(feed.set.WaitCalls()))
		}
		time.Sleep(time.Millisecond)
	}
	for i, d := range f.devs {
		calls := d.RegisterEventsCalls()
		if len(calls) != 1 || calls[0].V != nvml.EventTypeXidCriticalError|nvml.EventTypeDoubleBitEccError || calls[0].EventSet != feed.set {
			t.Errorf("GPU %d registrations: %+v; want one for XID and double-bit ECC on the set", i, calls)
		}
	}

	start := time.Now()
	w.cancel()
	select {
	case err := <-w.errc:
		if err != nil {
			t.Errorf("Watch after cancel: %v", err)
		}
		w.errc <- err // for the cleanup
	case <-time.After(time.Second):
		t.Fatal("Watch did not end within 1s of cancel")
	}
	if el := time.Since(start); el > 200*time.Millisecond {
		t.Errorf("Watch took %v to end after cancel", el)
	}
	deadline = time.Now().Add(time.Second)
	for !feed.isFreed() {
		if time.Now().After(deadline) {
			t.Fatal("the event set was never freed")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWatchCancelDuringWait: NVML's wait cannot be interrupted, yet cancel
// ends Watch at once, and the event set is freed only after the wait returns.
func TestWatchCancelDuringWait(t *testing.T) {
	setTimeouts(t, time.Second)
	waitTimeout = 600 * time.Millisecond
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	var mu sync.Mutex
	waiting, freedEarly := false, false
	entered := make(chan struct{}, 1)
	feed.set.WaitFunc = func(ms uint32) (nvml.EventData, nvml.Return) {
		mu.Lock()
		waiting = true
		mu.Unlock()
		select {
		case entered <- struct{}{}:
		default:
		}
		time.Sleep(time.Duration(ms) * time.Millisecond) // as NVML does
		mu.Lock()
		waiting = false
		mu.Unlock()
		return nvml.EventData{}, nvml.ERROR_TIMEOUT
	}
	free := feed.set.FreeFunc
	feed.set.FreeFunc = func() nvml.Return {
		mu.Lock()
		freedEarly = freedEarly || waiting
		mu.Unlock()
		return free()
	}
	w := startWatch(t, f.b)
	<-entered
	start := time.Now()
	w.cancel()
	select {
	case err := <-w.errc:
		if err != nil {
			t.Errorf("Watch after cancel: %v", err)
		}
		w.errc <- err
	case <-time.After(2 * time.Second):
		t.Fatal("Watch did not end after cancel")
	}
	if el := time.Since(start); el > 200*time.Millisecond {
		t.Errorf("Watch took %v to end after cancel, during a %v NVML wait", el, waitTimeout)
	}
	deadline := time.Now().Add(2 * time.Second)
	for !feed.isFreed() {
		if time.Now().After(deadline) {
			t.Fatal("the event set was never freed")
		}
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if freedEarly {
		t.Error("the event set was freed while NVML was still waiting on it")
	}
}

func TestWatchRegistration(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	f.devs[0].GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return nvml.EventTypeXidCriticalError, nvml.SUCCESS } // no ECC (GeForce)
	f.devs[1].GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	f.devs[3].GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return nvml.EventTypePState, nvml.SUCCESS }
	f.devs[4].GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
	f.devs[6].RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.ERROR_NOT_SUPPORTED }
	w := startWatch(t, f.b)

	// Registration ends before the first wait, so every registration event
	// comes before this XID.
	select {
	case feed.ch <- xid(f.devs[0], 31):
	case <-time.After(2 * time.Second):
		t.Fatal("Watch is not waiting for events")
	}
	var got []hardware.Event
	for {
		ev := w.next(t)
		if ev.Kind == hardware.EventXID {
			break
		}
		got = append(got, ev)
	}
	if len(got) != 1 || got[0].Kind != hardware.EventUnhealthy || got[0].UUID != f.devs[4].UUID || !strings.Contains(got[0].Reason, "ERROR_UNKNOWN") {
		t.Errorf("registration events %+v; want only GPU 4 unhealthy with its NVML error (GPUs that cannot report events stay healthy)", got)
	}
	if c := f.devs[0].RegisterEventsCalls(); len(c) != 1 || c[0].V != nvml.EventTypeXidCriticalError {
		t.Errorf("GPU 0 without ECC events registered %+v, want XID only", c)
	}
	for _, i := range []int{1, 3, 4} {
		if c := f.devs[i].RegisterEventsCalls(); len(c) != 0 {
			t.Errorf("GPU %d registered %+v, want nothing", i, c)
		}
	}
}

func TestWatchNothingToWatch(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	for _, d := range f.devs {
		d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	}
	w := startWatch(t, f.b)
	select {
	case ev := <-w.events:
		t.Fatalf("unexpected event %+v", ev)
	case err := <-w.errc:
		t.Fatalf("Watch ended early: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if n := len(feed.set.WaitCalls()); n != 0 {
		t.Errorf("%d waits on an empty event set", n)
	}
}

func TestWatchMIGEvents(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.NewWithGPUs(gpus.H100_SXM5_80GB, gpus.H100_SXM5_80GB))
	enableMIG(t, f.devs[0], h100Slots)
	feed := newEventFeed(f)
	n, err := f.b.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mig := n.GPUs[0].MIGDevices
	w := startWatch(t, f.b)
	for _, tc := range []struct {
		name   string
		gi, ci uint32
		want   []string
	}{
		{"one compute instance", 3, 1, []string{mig[4].UUID}},
		{"a whole GPU instance", 3, invalidID, []string{mig[3].UUID, mig[4].UUID}},
		{"outside MIG", invalidID, invalidID, []string{n.GPUs[0].UUID}},
		{"an instance discovery did not see", 6, 0, []string{n.GPUs[0].UUID}},
	} {
		ev := xid(f.devs[0], 94)
		ev.GpuInstanceId, ev.ComputeInstanceId = tc.gi, tc.ci
		select {
		case feed.ch <- ev:
		case <-time.After(2 * time.Second):
			t.Fatal("Watch is not waiting for events")
		}
		for _, want := range tc.want {
			if got := w.next(t); got.Kind != hardware.EventXID || got.XID != 94 || got.UUID != want {
				t.Errorf("%s: got %+v, want XID 94 on %s", tc.name, got, want)
			}
		}
	}
}

func TestWatchGPULost(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	f.devs[7].GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST }
	w := startWatch(t, f.b)
	feed.rets <- nvml.ERROR_GPU_IS_LOST
	if ev := w.next(t); ev.Kind != hardware.EventXID || ev.XID != 79 || ev.UUID != f.devs[7].UUID {
		t.Errorf("got %+v, want XID 79 on GPU 7", ev)
	}
	feed.ch <- xid(f.devs[1], 48) // and the watch goes on
	if ev := w.next(t); ev.UUID != f.devs[1].UUID || ev.XID != 48 {
		t.Errorf("got %+v, want XID 48 on GPU 1", ev)
	}
}

func TestWatchWaitError(t *testing.T) {
	setTimeouts(t, time.Second)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	w := startWatch(t, f.b)
	feed.rets <- nvml.ERROR_UNKNOWN
	select {
	case err := <-w.errc:
		if err == nil || !strings.Contains(err.Error(), "event wait") {
			t.Errorf("Watch = %v, want an event wait error", err)
		}
		w.errc <- err
	case <-time.After(2 * time.Second):
		t.Fatal("Watch goes on after a failed wait")
	}
}

func TestWatchWedgedWait(t *testing.T) {
	setTimeouts(t, 200*time.Millisecond)
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	block := newBlocker(t)
	first := true
	var mu sync.Mutex
	wait := feed.set.WaitFunc
	feed.set.WaitFunc = func(ms uint32) (nvml.EventData, nvml.Return) {
		mu.Lock()
		hang := first
		first = false
		mu.Unlock()
		if hang {
			block.wait()
		}
		return wait(ms)
	}
	w := startWatch(t, f.b)
	seen := map[string]bool{}
	for range f.devs {
		ev := w.next(t)
		if ev.Kind != hardware.EventUnhealthy || !strings.Contains(ev.Reason, "did not return within") {
			t.Errorf("got %+v, want an unhealthy device with a reason", ev)
		}
		seen[ev.UUID] = true
	}
	if len(seen) != len(f.devs) {
		t.Errorf("%d of %d GPUs marked unhealthy by a hung event wait", len(seen), len(f.devs))
	}
	start := time.Now()
	if err := f.b.Probe(context.Background(), f.devs[0].UUID); !errors.Is(err, errWedged) || time.Since(start) > CallTimeout/2 {
		t.Errorf("Probe while the wait hangs = %v after %v, want a fast wedged error", err, time.Since(start))
	}
	block.release()
	waitUnwedged(t, f.b)
	feed.ch <- xid(f.devs[3], 48)
	if ev := w.next(t); ev.UUID != f.devs[3].UUID || ev.XID != 48 {
		t.Errorf("after the driver answered again: got %+v, want XID 48 on GPU 3", ev)
	}
	if err := f.b.Probe(context.Background(), f.devs[0].UUID); err != nil {
		t.Errorf("Probe after the driver answered again: %v", err)
	}
}

// TestWatchSweep checks the faults Watch finds by query between events: a
// rise in a GPU's volatile uncorrected ECC count (once, until a reset zeroes
// it) and a GPU NVML calls lost (once while it stays lost).
func TestWatchSweep(t *testing.T) {
	setTimeouts(t, time.Second)
	old := sweepEvery
	sweepEvery = time.Millisecond
	t.Cleanup(func() { sweepEvery = old })
	f := newFixture(t, dgxh100.New())
	feed := newEventFeed(f)
	var mu sync.Mutex
	ecc := map[int]uint64{}
	lost := map[int]bool{}
	reads := map[int]int{}
	eccOff, memLost := map[int]bool{}, map[int]bool{}
	for i, d := range f.devs {
		d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
			mu.Lock()
			defer mu.Unlock()
			reads[i]++
			switch {
			case eccOff[i]:
				return 0, nvml.ERROR_NOT_SUPPORTED
			case lost[i]:
				return 0, nvml.ERROR_GPU_IS_LOST
			}
			return ecc[i], nvml.SUCCESS
		}
		d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
			mu.Lock()
			defer mu.Unlock()
			if memLost[i] {
				return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST
			}
			return nvml.Memory{Total: 80 << 30}, nvml.SUCCESS
		}
	}
	set := func(f func()) {
		mu.Lock()
		f()
		mu.Unlock()
	}
	// swept waits until GPU i's counter has been read twice more: a whole
	// sweep saw the state set before it.
	swept := func(i int) {
		t.Helper()
		mu.Lock()
		from := reads[i]
		mu.Unlock()
		deadline := time.Now().Add(2 * time.Second)
		for {
			mu.Lock()
			n := reads[i]
			mu.Unlock()
			if n >= from+2 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("GPU %d not swept within 2s", i)
			}
			time.Sleep(time.Millisecond)
		}
	}
	w := startWatch(t, f.b)
	swept(3)
	set(func() { ecc[3] = 2 })
	if ev := w.next(t); ev.Kind != hardware.EventECCDoubleBit || ev.UUID != f.devs[3].UUID || !strings.Contains(ev.Reason, "2 uncorrected ECC errors") {
		t.Fatalf("got %+v, want an uncorrectable-ECC event on GPU 3", ev)
	}
	set(func() { ecc[3] = 5; lost[2] = true }) // still rising: already reported
	if ev := w.next(t); ev.Kind != hardware.EventXID || ev.XID != 79 || ev.UUID != f.devs[2].UUID {
		t.Fatalf("got %+v, want XID 79 (lost) on GPU 2", ev)
	}
	swept(2)
	swept(3)
	feed.ch <- xid(f.devs[1], 48) // nothing else came before it: lost and ECC were reported once
	if ev := w.next(t); ev.XID != 48 || ev.UUID != f.devs[1].UUID {
		t.Fatalf("got %+v, want XID 48 on GPU 1", ev)
	}
	set(func() { ecc[3] = 0; lost[2] = false }) // both reset
	swept(2)
	swept(3)
	set(func() { ecc[3] = 1; lost[2] = true })
	got := map[hardware.EventKind]string{}
	for range 2 {
		ev := w.next(t)
		got[ev.Kind] = ev.UUID
	}
	if got[hardware.EventECCDoubleBit] != f.devs[3].UUID || got[hardware.EventXID] != f.devs[2].UUID {
		t.Errorf("after a reset, got %v, want ECC on GPU 3 and lost on GPU 2 reported again", got)
	}
	// A GPU with ECC off: its memory query tells it is lost.
	set(func() { eccOff[5], memLost[5] = true, true })
	if ev := w.next(t); ev.Kind != hardware.EventXID || ev.XID != 79 || ev.UUID != f.devs[5].UUID {
		t.Errorf("got %+v, want XID 79 (lost) on GPU 5, whose ECC is off", ev)
	}
}
