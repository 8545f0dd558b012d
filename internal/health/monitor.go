package health

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

// Monitor applies a Policy to a backend's events and keeps the store's
// health current.
//
// A GPU that a reset-class fault (an XID or ECC/row-remap event the policy
// maps to Reset) took out stays out until it is reset: a passing probe
// proves nothing about the corrupted state such a fault leaves, and NVML
// offers no counter that says a reset happened. It comes back when the
// backend reports it healthy (the simulator's `gpulet sim clear`, the
// simulated reset) or when gpulet restarts, which an operator does after
// resetting the GPU. Other unhealthy devices (Lost, a generic unhealthy
// event) are re-probed once no new fault has arrived for Quiet; a passing
// probe makes them healthy again.
type Monitor struct {
	Backend hardware.Backend
	Store   *inventory.Store
	Policy  *Policy
	Log     *slog.Logger
	// Quiet is how long a device must stay free of new faults before it is
	// re-probed. Zero means 30s.
	Quiet time.Duration
	// ProbeTimeout bounds each probe, so a hung driver call cannot stall the
	// monitor. Zero means 5s.
	ProbeTimeout time.Duration
	// Disabled turns fault handling off: events are logged, devices stay
	// healthy (NVIDIA's DP_DISABLE_HEALTHCHECKS=all).
	Disabled bool
	// Observer, when set, is told every event and health change (metrics).
	Observer Observer

	mu        sync.Mutex
	lastFault map[string]time.Time
	// needsReset holds the devices only a reset brings back.
	needsReset map[string]bool
}

// Observer is told what the monitor sees and decides; it must be fast.
type Observer interface {
	DeviceEvent(ev hardware.Event)
	HealthChanged(uuid string, h inventory.Health)
}

// setHealth records h and tells the observer when it changed.
func (m *Monitor) setHealth(uuid string, h inventory.Health) bool {
	if !m.Store.SetHealth(uuid, h) {
		return false
	}
	if m.Observer != nil {
		m.Observer.HealthChanged(uuid, h)
	}
	return true
}

// Run watches until ctx ends. It returns the backend's watch error if the
// event source fails; the caller decides whether to restart it.
func (m *Monitor) Run(ctx context.Context) error {
	if m.Quiet == 0 {
		m.Quiet = 30 * time.Second
	}
	if m.ProbeTimeout == 0 {
		m.ProbeTimeout = 5 * time.Second
	}
	m.mu.Lock()
	m.lastFault = map[string]time.Time{}
	if m.needsReset == nil {
		m.needsReset = map[string]bool{} // kept across watch restarts
	}
	m.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	events := make(chan hardware.Event, 64)
	watchErr := make(chan error, 1)
	go func() { watchErr <- m.Backend.Watch(ctx, events) }()

	tick := time.NewTicker(recheckEvery(m.Quiet))
	defer tick.Stop()
	m.Log.Info("health watch started", "backend", m.Backend.Name(), "quiet_period", m.Quiet, "disabled", m.Disabled)
	defer m.Log.Info("health watch stopped", "backend", m.Backend.Name())
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-watchErr:
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("%s event watch ended", m.Backend.Name())
			}
			return err
		case ev := <-events:
			m.Handle(ctx, ev)
		case <-tick.C:
			m.recover(ctx)
		}
	}
}

func recheckEvery(quiet time.Duration) time.Duration {
	d := quiet / 4
	if d < 10*time.Millisecond {
		d = 10 * time.Millisecond
	}
	if d > 5*time.Second {
		d = 5 * time.Second
	}
	return d
}

// Handle applies one event. It is exported so tests and the CLI can feed
// events without a backend.
func (m *Monitor) Handle(ctx context.Context, ev hardware.Event) {
	log := m.Log.With("backend", m.Backend.Name())
	if m.Observer != nil {
		m.Observer.DeviceEvent(ev)
	}
	switch ev.Kind {
	case hardware.EventChanged:
		node, err := m.Backend.Discover(ctx)
		if err != nil {
			log.Error("rediscovery after a device change failed; keeping the previous inventory", "err", err)
			return
		}
		before := m.Store.Snapshot().Node
		m.Store.SetNode(node)
		log.Info("devices changed", "reason", ev.Reason, "gpus_before", len(before.GPUs), "gpus_now", len(node.GPUs))
		return
	case hardware.EventHealthy:
		m.mu.Lock()
		delete(m.needsReset, ev.UUID)
		m.mu.Unlock()
		if m.setHealth(ev.UUID, inventory.Health{Healthy: true}) {
			log.Info("device healthy again", "device", ev.UUID, "reason", ev.Reason)
		}
		return
	}
	d := m.Policy.Decide(ev)
	if ev.UUID == "" {
		// An error the driver could not pin on one GPU: taking every GPU
		// away for it is the failure mode users hate most (#669 upstream).
		log.Warn("device event without a device; no GPU marked unhealthy", "kind", ev.Kind, "xid", ev.XID, "reason", d.Reason)
		return
	}
	if d.Action == Ignore {
		log.Info("device event ignored by policy", "device", ev.UUID, "kind", ev.Kind, "xid", ev.XID, "reason", d.Reason)
		return
	}
	if m.Disabled {
		log.Warn("device fault ignored: health checks are disabled", "device", ev.UUID, "xid", ev.XID, "reason", d.Reason)
		return
	}
	reset := d.Action == Reset && ev.Kind != hardware.EventUnhealthy
	reason := d.Reason
	if reset {
		reason += "; reset the GPU, then restart gpulet"
	}
	m.mu.Lock()
	if m.lastFault == nil {
		m.lastFault = map[string]time.Time{}
	}
	if m.needsReset == nil {
		m.needsReset = map[string]bool{}
	}
	m.lastFault[ev.UUID] = time.Now()
	if reset {
		m.needsReset[ev.UUID] = true
	}
	m.mu.Unlock()
	if m.setHealth(ev.UUID, inventory.Health{Healthy: false, Reason: reason, XID: ev.XID}) {
		log.Warn("device unhealthy", "device", ev.UUID, "xid", ev.XID, "action", d.Action, "reason", reason,
			"recovery", map[bool]string{true: "held until reset: the backend reports it healthy or gpulet restarts", false: "re-probed after the quiet period"}[reset])
	}
}

// recover re-probes unhealthy devices whose last fault is older than Quiet.
func (m *Monitor) recover(ctx context.Context) {
	snap := m.Store.Snapshot()
	now := time.Now()
	for uuid := range snap.Health {
		m.mu.Lock()
		last, ok := m.lastFault[uuid]
		held := m.needsReset[uuid]
		m.mu.Unlock()
		if held || (ok && now.Sub(last) < m.Quiet) {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, m.ProbeTimeout)
		err := m.Backend.Probe(pctx, uuid)
		cancel()
		if err != nil {
			// Wait another quiet period before the next try.
			m.mu.Lock()
			m.lastFault[uuid] = now
			m.mu.Unlock()
			continue
		}
		if m.setHealth(uuid, inventory.Health{Healthy: true}) {
			m.Log.Info("device recovered: probe passed after quiet period", "device", uuid, "quiet", m.Quiet)
		}
	}
}
