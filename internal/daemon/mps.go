package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/mps"
	"github.com/gpulet/gpulet/internal/resources"
)

// mpsGPUs lists the GPUs whose replicas are shared through MPS.
func mpsGPUs(snap inventory.Snapshot, rc resources.Config) []mps.GPU {
	mem := map[string]uint64{}
	for _, g := range snap.Node.GPUs {
		mem[g.UUID] = g.MemoryBytes
	}
	seen := map[string]bool{}
	var out []mps.GPU
	for _, r := range resources.Build(snap, rc) {
		if !r.MPS {
			continue
		}
		for _, d := range r.Devices {
			if d.Replicas > 0 && !seen[d.UUID] {
				seen[d.UUID] = true
				out = append(out, mps.GPU{UUID: d.UUID, MemoryBytes: mem[d.UUID], Replicas: d.Replicas})
			}
		}
	}
	return out
}

// mpsDaemons checks the sharing config against the node and, with MPS
// sharing, runs a control daemon per GPU the device plugin shares through
// MPS (none for the GPUs DRA owns) until stopped; Allocate hands them out.
func (g *gpulet) mpsDaemons() component {
	return component{
		name: "MPS",
		start: func(ctx context.Context) (err error) {
			if err := checkShares(g.cfg, g.store.Snapshot(), g.log); err != nil {
				return err
			}
			g.mps, err = startMPS(ctx, g.cfg, g.backend, g.pluginStore.Snapshot(), g.log)
			return err
		},
		run: func(ctx context.Context) error {
			if g.mps == nil {
				return nil
			}
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := g.mps.Stop(sctx); err != nil {
				g.log.Error("stopping MPS control daemons", "err", err)
			}
			return nil
		},
	}
}

// checkShares refuses sharing the node cannot have and warns of sharing
// that names resources it lacks.
func checkShares(cfg *config.Config, snap inventory.Snapshot, log *slog.Logger) error {
	unmatched, err := resources.CheckShares(snap, ResourcesConfig(cfg))
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	for _, n := range unmatched {
		log.Warn("sharing names a resource this node does not have; skipped, as NVIDIA's plugin skips it", "resource", n)
	}
	for _, line := range SharingSummary(cfg) {
		log.Info("sharing applied", "what", line)
	}
	return nil
}

// startMPS, with MPS sharing, starts (or connects to) a control daemon per
// shared GPU in snap and returns their manager; nil without MPS sharing.
// A backend with its own MPS control (the simulator's stand-in) replaces
// the binary.
func startMPS(ctx context.Context, cfg *config.Config, backend hardware.Backend, snap inventory.Snapshot, log *slog.Logger) (*mps.Manager, error) {
	rc := ResourcesConfig(cfg)
	if !rc.MPS {
		return nil, nil
	}
	var control mps.Control = mps.Exec{Path: cfg.MPSControl}
	if c, ok := backend.(hardware.MPSControlled); ok {
		control = c.MPSControl()
		log.Info("MPS control daemons are the backend's own", "backend", backend.Name())
	} else if err := mps.CheckHost(cfg.MPSRoot, cfg.MPSControl, "", ""); err != nil {
		return nil, err // *mps.HostError: `gpulet run` waits with the reason instead of crash-looping
	}
	m := &mps.Manager{Root: cfg.MPSRoot, Control: control, Log: log.With("component", "mps")}
	if err := m.Start(ctx, mpsGPUs(snap, rc)); err != nil {
		return nil, err
	}
	return m, nil
}
