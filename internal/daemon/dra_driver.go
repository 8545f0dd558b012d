//go:build !nokube

package daemon

import (
	"context"
	"fmt"

	"github.com/gpulet/gpulet/internal/dra"
)

// draDriver serves DRA's GPUs with --dra: ResourceSlices, and claims the
// kubelet prepares. A driver that stops on its own, or fails to start,
// stops gpulet. The driver starts in Run, not Start: the DRA helper waits
// for its ResourceSlice informer in one-second steps, and the device plugin
// (started after) must not register a second late for it (bench-sbs).
func (g *gpulet) draDriver() component {
	if !g.cfg.DRA.Enabled {
		return component{}
	}
	var o dra.Options
	return component{
		name: "DRA driver",
		start: func(context.Context) error {
			log := g.log.With("component", "dra")
			client, err := g.kubeClient()
			if err != nil {
				return fmt.Errorf("DRA needs the Kubernetes API: %w", err)
			}
			o = dra.Options{
				NodeName: Identity(g.cfg).Node, Client: client, Store: g.draStore,
				CDI: DRACDIWriter(g.cfg, g.backend, log), PluginDir: g.cfg.DRA.PluginDir, RegistrarDir: g.cfg.DRA.RegistrarDir,
				Log: log,
			}
			o.Devices.PCIeRoot = PCIeRoot(g.backend)
			o.Devices.ConsumableCapacity = g.cfg.DRA.ConsumableCapacity
			return nil
		},
		run: func(ctx context.Context) error {
			d, err := dra.Start(ctx, o)
			if err != nil {
				return err
			}
			select {
			case <-d.Done():
				return d.Err()
			case <-ctx.Done():
				return d.Stop()
			}
		},
	}
}
