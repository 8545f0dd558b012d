package daemon

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/metrics"
)

// Backoff of the driver waits: the first retry is quick (a driver
// container finishing its install), later ones settle at the cap.
var (
	driverRetryFirst = time.Second
	driverRetryMax   = 30 * time.Second
)

// driverLostReason marks the devices gpulet took away because the driver
// went; only those come back when it returns.
const driverLostReason = "GPU driver not available"

// retryDriver calls try after driverRetryFirst, then with the wait doubling
// up to driverRetryMax, until it succeeds (true) or ctx ends (false). An
// error unlike the last one (at first lastErr) is logged once, never every
// try.
func retryDriver(ctx context.Context, log *slog.Logger, lastErr string, try func() error) bool {
	backoff := exponential(driverRetryFirst, driverRetryMax)
	for {
		if !sleep(ctx, backoff.Step()) {
			return false
		}
		err := try()
		if err == nil {
			return true
		}
		if msg := err.Error(); msg != lastErr {
			log.Warn("still waiting for the GPU driver", "err", err, "retry_every_up_to", driverRetryMax)
			lastErr = msg
		}
	}
}

// exponential is a backoff that starts at first and doubles up to max.
func exponential(first, max time.Duration) *wait.Backoff {
	return &wait.Backoff{Duration: first, Factor: 2, Cap: max, Steps: math.MaxInt32}
}

// sleep waits d, or returns false when ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// waitForHardware retries discovery until it works or ctx ends (nil
// backend), and says when the GPUs appear.
func waitForHardware(ctx context.Context, open Opener, log *slog.Logger) (hardware.Backend, *inventory.Node) {
	var backend hardware.Backend
	var node *inventory.Node
	if !retryDriver(ctx, log, "", func() (err error) {
		backend, node, err = InitHardware(ctx, open)
		return err
	}) {
		return nil, nil
	}
	log.Info("GPU driver available; serving its GPUs", "gpus", len(node.GPUs))
	return backend, node
}

// healthMonitor keeps the health monitor running until stopped. A failed
// event source is restarted with backoff. A lost driver takes every device
// away (so the kubelet stops placing pods on them) and turns /readyz
// unready; gpulet then re-initialises the backend with backoff and restores
// the devices when the driver answers again.
func (g *gpulet) healthMonitor() component {
	var mon *health.Monitor
	return component{
		name: "health monitor",
		start: func(context.Context) error {
			mon = &health.Monitor{
				Backend: g.backend, Store: g.store, Policy: g.policy, Log: g.log.With("component", "health"),
				Quiet: g.cfg.HealthQuietPeriod, Disabled: HealthDisabled(g.cfg), Observer: g.exp,
			}
			return nil
		},
		run: func(ctx context.Context) error {
			superviseHealth(ctx, mon, g.exp, g.log)
			return nil
		},
	}
}

func superviseHealth(ctx context.Context, mon *health.Monitor, exp *metrics.Exporter, log *slog.Logger) {
	backoff := exponential(time.Second, time.Minute)
	for {
		err := mon.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("health monitor stopped")
		}
		if errors.Is(err, hardware.ErrDriverLost) || driverGone(ctx, mon.Backend) {
			if !waitForDriver(ctx, mon, exp, err, log) {
				return
			}
			backoff = exponential(time.Second, time.Minute)
			continue
		}
		in := backoff.Step()
		log.Error("health watch failed; devices keep their last known health, restarting the watch", "err", err, "in", in)
		if !sleep(ctx, in) {
			return
		}
	}
}

// driverGone checks, after a watch failure, whether the driver still answers.
func driverGone(ctx context.Context, b hardware.Backend) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := b.Discover(ctx)
	return err != nil
}

// waitForDriver marks every device unhealthy, retries until the backend
// discovers the node again, then restores what it took. It returns false
// when ctx ended first.
func waitForDriver(ctx context.Context, mon *health.Monitor, exp *metrics.Exporter, cause error, log *slog.Logger) bool {
	exp.SetDriverUp(false)
	snap := mon.Store.Snapshot()
	for _, uuid := range deviceUUIDs(snap.Node) {
		if snap.Healthy(uuid) {
			mon.Store.SetHealth(uuid, inventory.Health{Healthy: false, Reason: driverLostReason})
		}
	}
	log.Error("GPU driver lost: every device is unhealthy and gpulet is not ready until it is back", "err", cause)
	var node *inventory.Node
	if !retryDriver(ctx, log, cause.Error(), func() (err error) {
		node, err = reconnect(ctx, mon.Backend)
		return err
	}) {
		return false
	}
	mon.Store.SetNode(node)
	snap = mon.Store.Snapshot()
	for uuid, h := range snap.Health {
		if strings.HasPrefix(h.Reason, driverLostReason) {
			mon.Store.SetHealth(uuid, inventory.Health{Healthy: true})
		}
	}
	exp.SetDriverUp(true)
	log.Info("GPU driver back: devices restored", "gpus", len(node.GPUs))
	return true
}

// reconnect re-initialises a backend that can, then discovers the node.
func reconnect(ctx context.Context, b hardware.Backend) (*inventory.Node, error) {
	if r, ok := b.(hardware.Reinitializer); ok {
		if err := r.Reinit(ctx); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return b.Discover(ctx)
}

func deviceUUIDs(n *inventory.Node) []string {
	var out []string
	if n == nil {
		return nil
	}
	for _, g := range n.GPUs {
		out = append(out, g.UUID)
		for _, m := range g.MIGDevices {
			out = append(out, m.UUID)
		}
	}
	return out
}
