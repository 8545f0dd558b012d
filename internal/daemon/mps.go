package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/mps"
	"github.com/gpulet/gpulet/internal/plugin"
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

// startMPS checks the sharing config against the node and, with MPS
// sharing, starts (or connects to) a control daemon per shared GPU and
// hands Allocate the manager. The simulator's stand-in replaces the binary
// on a simulated node. The returned func quits the daemons it started.
func startMPS(ctx context.Context, cfg *config.Config, backend hardware.Backend, snap inventory.Snapshot, opts *plugin.Options, log *slog.Logger) (func(), error) {
	rc := ResourcesConfig(cfg)
	unmatched, err := resources.CheckShares(snap, rc)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	for _, n := range unmatched {
		log.Warn("sharing names a resource this node does not have; skipped, as NVIDIA's plugin skips it", "resource", n)
	}
	if !rc.MPS {
		return func() {}, nil
	}
	var control mps.Control = mps.Exec{Path: cfg.MPSControl}
	if fi, ok := backend.(hardware.FaultInjector); ok {
		control = &sim.MPSControl{Root: fi.Root()}
		log.Info("simulated node: MPS control daemons are simulated", "log", sim.MPSLogPath(fi.Root()))
	}
	m := &mps.Manager{Root: cfg.MPSRoot, Control: control, Log: log.With("component", "mps")}
	if err := m.Start(ctx, mpsGPUs(snap, rc)); err != nil {
		return nil, err
	}
	opts.MPS = m
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := m.Stop(sctx); err != nil {
			log.Error("stopping MPS control daemons", "err", err)
		}
	}, nil
}
