package health

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/waittest"
)

func TestPolicyTable(t *testing.T) {
	p, err := NewPolicy(nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		ev   hardware.Event
		want Action
	}{
		{hardware.Event{Kind: hardware.EventXID, XID: 13}, Ignore},
		{hardware.Event{Kind: hardware.EventXID, XID: 31}, Ignore},
		{hardware.Event{Kind: hardware.EventXID, XID: 43}, Ignore},
		{hardware.Event{Kind: hardware.EventXID, XID: 45}, Ignore},
		{hardware.Event{Kind: hardware.EventXID, XID: 68}, Ignore},
		{hardware.Event{Kind: hardware.EventXID, XID: 109}, Ignore},
		{hardware.Event{Kind: hardware.EventXID, XID: 48}, Reset},
		{hardware.Event{Kind: hardware.EventXID, XID: 79}, Lost},
		{hardware.Event{Kind: hardware.EventXID, XID: 9999}, Reset}, // unknown XIDs are not ignored
		{hardware.Event{Kind: hardware.EventECCDoubleBit}, Reset},
		{hardware.Event{Kind: hardware.EventRowRemapFailure}, Reset},
		{hardware.Event{Kind: hardware.EventUnhealthy, Reason: "x"}, Reset},
		{hardware.Event{Kind: hardware.EventHealthy}, Ignore},
	}
	for _, tc := range cases {
		if d := p.Decide(tc.ev); d.Action != tc.want {
			t.Errorf("%+v: %s (%s), want %s", tc.ev, d.Action, d.Reason, tc.want)
		}
	}
	if d := p.Decide(hardware.Event{Kind: hardware.EventXID, XID: 79}); !strings.Contains(d.Reason, "XID 79") || !strings.Contains(d.Reason, "fallen off the bus") {
		t.Errorf("reason %q should name the XID and what it means", d.Reason)
	}
}

func TestPolicyOverrides(t *testing.T) {
	p, err := NewPolicy(map[uint64]Action{13: Reset, 48: Ignore, 500: Lost})
	if err != nil {
		t.Fatal(err)
	}
	for xid, want := range map[uint64]Action{13: Reset, 48: Ignore, 500: Lost, 31: Ignore} {
		if got := p.Decide(hardware.Event{Kind: hardware.EventXID, XID: xid}).Action; got != want {
			t.Errorf("XID %d: %s, want %s", xid, got, want)
		}
	}
	if _, err := NewPolicy(map[uint64]Action{13: "explode"}); err == nil || !strings.Contains(err.Error(), "explode") {
		t.Errorf("bad action accepted: %v", err)
	}
}

func TestParseXIDList(t *testing.T) {
	xids, all, err := ParseXIDList(" 13, 31,,43 ")
	if err != nil || all || len(xids) != 3 || xids[2] != 43 {
		t.Errorf("%v %v %v", xids, all, err)
	}
	if _, all, _ := ParseXIDList("all"); !all {
		t.Error("all not recognised")
	}
	if _, _, err := ParseXIDList("13,abc"); err == nil || !strings.Contains(err.Error(), "abc") {
		t.Errorf("bad list: %v", err)
	}
}

// fakeBackend is a hardware backend driven by the test.
type fakeBackend struct {
	events chan hardware.Event
	mu     sync.Mutex
	broken map[string]bool
	node   *inventory.Node
	probes int
}

func (f *fakeBackend) Name() string { return "fake" }
func (f *fakeBackend) Close() error { return nil }
func (f *fakeBackend) Discover(context.Context) (*inventory.Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.node, nil
}
func (f *fakeBackend) Watch(ctx context.Context, out chan<- hardware.Event) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-f.events:
			out <- ev
		}
	}
}
func (f *fakeBackend) Probe(_ context.Context, uuid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probes++
	if f.broken[uuid] {
		return errors.New("still broken")
	}
	return nil
}
func (f *fakeBackend) setBroken(uuid string, b bool) {
	f.mu.Lock()
	f.broken[uuid] = b
	f.mu.Unlock()
}

func twoGPUs() *inventory.Node {
	return &inventory.Node{GPUs: []inventory.GPU{{UUID: "GPU-a", Minor: 0}, {UUID: "GPU-b", Index: 1, Minor: 1}}}
}

// syncBuffer is a log sink the monitor writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func startMonitor(t *testing.T, quiet time.Duration, disabled bool) (*fakeBackend, *inventory.Store, *syncBuffer) {
	t.Helper()
	fb := &fakeBackend{events: make(chan hardware.Event), broken: map[string]bool{}, node: twoGPUs()}
	store := inventory.NewStore(fb.node)
	p, _ := NewPolicy(nil)
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	m := &Monitor{Backend: fb, Store: store, Policy: p, Log: log, Quiet: quiet, Disabled: disabled}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return fb, store, logs
}

func TestMonitorProbesBackAfterQuietPeriod(t *testing.T) {
	fb, store, logs := startMonitor(t, 100*time.Millisecond, false)
	fb.setBroken("GPU-a", true)
	fb.events <- hardware.Event{Kind: hardware.EventUnhealthy, UUID: "GPU-a", Reason: "thermal"}
	waittest.Until(t, 5*time.Second, "GPU-a unhealthy", func() bool { return !store.Snapshot().Healthy("GPU-a") })
	if !store.Snapshot().Healthy("GPU-b") {
		t.Error("a fault on one GPU took another")
	}
	// Still broken: probes fail, the GPU stays unhealthy.
	waittest.Until(t, 5*time.Second, "a failing probe", func() bool { fb.mu.Lock(); defer fb.mu.Unlock(); return fb.probes > 0 })
	if store.Snapshot().Healthy("GPU-a") {
		t.Fatal("recovered although the probe fails")
	}
	// The condition clears: after the quiet period the probe passes.
	fb.setBroken("GPU-a", false)
	waittest.Until(t, 5*time.Second, "GPU-a healthy again", func() bool { return store.Snapshot().Healthy("GPU-a") })
	if !strings.Contains(logs.String(), "device recovered") {
		t.Errorf("recovery not logged:\n%s", logs)
	}
}

// TestMonitorHoldsResetClassFaultsUntilReset: a passing probe does not
// bring back a GPU a reset-class fault took; the backend reporting it
// healthy (the simulator's clear, a simulated reset) does.
func TestMonitorHoldsResetClassFaultsUntilReset(t *testing.T) {
	// In a synctest bubble: the quiet periods pass on the fake clock, after
	// every re-probe due in them has run.
	synctest.Test(t, func(t *testing.T) {
		for _, ev := range []hardware.Event{
			{Kind: hardware.EventXID, UUID: "GPU-a", XID: 48},
			{Kind: hardware.EventXID, UUID: "GPU-a", XID: 999}, // unknown XIDs are reset-class
			{Kind: hardware.EventECCDoubleBit, UUID: "GPU-a"},
			{Kind: hardware.EventRowRemapFailure, UUID: "GPU-a"},
		} {
			fb, store, logs := startMonitor(t, 20*time.Millisecond, false)
			fb.events <- ev
			waittest.Until(t, 5*time.Second, "GPU-a unhealthy", func() bool { return !store.Snapshot().Healthy("GPU-a") })
			h := store.Snapshot().Health["GPU-a"]
			if !strings.Contains(h.Reason, "reset the GPU, then restart gpulet") {
				t.Errorf("%v: reason %q does not say what to do", ev, h.Reason)
			}
			// Probes would pass; many quiet periods go by.
			time.Sleep(200 * time.Millisecond)
			if store.Snapshot().Healthy("GPU-a") {
				t.Fatalf("%v: a passing probe brought back a GPU that needs a reset", ev)
			}
			fb.events <- hardware.Event{Kind: hardware.EventHealthy, UUID: "GPU-a", Reason: "injected fault cleared"}
			waittest.Until(t, 5*time.Second, "healthy after reset", func() bool { return store.Snapshot().Healthy("GPU-a") })
			// Held no more: a later transient fault is probed back again.
			fb.events <- hardware.Event{Kind: hardware.EventUnhealthy, UUID: "GPU-a", Reason: "x"}
			waittest.Until(t, 5*time.Second, "unhealthy", func() bool { return !store.Snapshot().Healthy("GPU-a") })
			waittest.Until(t, 5*time.Second, "probed back", func() bool { return store.Snapshot().Healthy("GPU-a") })
			if !strings.Contains(logs.String(), "held until reset") {
				t.Errorf("log does not say the GPU is held:\n%s", logs)
			}
		}
	})
}

func TestMonitorIgnoresApplicationXIDsAndUnattributedEvents(t *testing.T) {
	fb, store, logs := startMonitor(t, time.Hour, false)
	fb.events <- hardware.Event{Kind: hardware.EventXID, UUID: "GPU-a", XID: 13}
	fb.events <- hardware.Event{Kind: hardware.EventXID, XID: 48} // no device
	fb.events <- hardware.Event{Kind: hardware.EventXID, UUID: "GPU-b", XID: 79}
	waittest.Until(t, 5*time.Second, "GPU-b lost", func() bool { return !store.Snapshot().Healthy("GPU-b") })
	s := store.Snapshot()
	if !s.Healthy("GPU-a") || len(s.Health) != 1 {
		t.Errorf("health %+v: an application XID or an unattributed event took a GPU", s.Health)
	}
	if !strings.Contains(logs.String(), "ignored by policy") || !strings.Contains(logs.String(), "without a device") {
		t.Errorf("logs:\n%s", logs)
	}
}

func TestMonitorHealthyEventAndDisabledChecks(t *testing.T) {
	fb, store, _ := startMonitor(t, time.Hour, false)
	fb.events <- hardware.Event{Kind: hardware.EventUnhealthy, UUID: "GPU-a", Reason: "fan"}
	waittest.Until(t, 5*time.Second, "unhealthy", func() bool { return !store.Snapshot().Healthy("GPU-a") })
	fb.events <- hardware.Event{Kind: hardware.EventHealthy, UUID: "GPU-a"}
	waittest.Until(t, 5*time.Second, "healthy", func() bool { return store.Snapshot().Healthy("GPU-a") })

	fb2, store2, logs := startMonitor(t, time.Hour, true)
	fb2.events <- hardware.Event{Kind: hardware.EventXID, UUID: "GPU-a", XID: 48}
	waittest.Until(t, 5*time.Second, "the disabled fault logged", func() bool { return strings.Contains(logs.String(), "health checks are disabled") })
	if !store2.Snapshot().Healthy("GPU-a") {
		t.Error("health checks disabled, yet a GPU went unhealthy")
	}
}

func TestMonitorRediscoversOnChange(t *testing.T) {
	fb, store, _ := startMonitor(t, time.Hour, false)
	fb.events <- hardware.Event{Kind: hardware.EventUnhealthy, UUID: "GPU-b", Reason: "x"}
	waittest.Until(t, 5*time.Second, "unhealthy", func() bool { return !store.Snapshot().Healthy("GPU-b") })
	fb.mu.Lock()
	fb.node = &inventory.Node{GPUs: []inventory.GPU{{UUID: "GPU-a"}}}
	fb.mu.Unlock()
	fb.events <- hardware.Event{Kind: hardware.EventChanged}
	waittest.Until(t, 5*time.Second, "one GPU left", func() bool { return len(store.Snapshot().Node.GPUs) == 1 })
	if len(store.Snapshot().Health) != 0 {
		t.Error("health of a vanished GPU kept")
	}
}
