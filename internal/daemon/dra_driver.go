//go:build !nokube

package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/dra"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/mps"
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
			o.Sharing = DRASharing(g.cfg, g.backend, log)
			if o.DynamicMIG, err = DynamicMIGWants(g.cfg, g.draStore.Snapshot().Node); err != nil {
				return err
			}
			o.MIG, _ = g.backend.(hardware.DynamicMIG)
			o.MIGWholeWhenIdle = g.cfg.DRA.DynamicMIGWholeWhenIdle
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

// DRASharing is what applies claims' sharing configs on this node: the
// backend's compute policy (nvidia-smi on NVML, the simulator's record),
// and MPS control daemons per claim with their folders in
// <--dra-plugin-dir>/mps (a host folder the DRA DaemonSet mounts, as
// NVIDIA's driver keeps them there), run by --mps-control or the
// backend's stand-in. With the real binary, each MPS Prepare first checks
// the host can serve it (mps.CheckHost: the binary, a host folder, and
// gpulet's /dev/shm being <root>/shm).
func DRASharing(cfg *config.Config, backend hardware.Backend, log *slog.Logger) dra.SharingControl {
	var s dra.SharingControl
	if p, ok := backend.(hardware.ComputePolicy); ok {
		s.Policy = p
	}
	dir := cfg.DRA.PluginDir
	if dir == "" {
		dir = dra.DefaultPluginDir
	}
	root := filepath.Join(dir, "mps")
	var control mps.Control = mps.Exec{Path: cfg.MPSControl}
	if c, ok := backend.(hardware.MPSControlled); ok {
		control = c.MPSControl()
	} else {
		s.MPSReady = func() error {
			var he *mps.HostError
			if err := mps.CheckHost(root, cfg.MPSControl, "", ""); errors.As(err, &he) {
				return fmt.Errorf("gpulet cannot run MPS control daemons for claims in this container: %s", strings.Join(he.Problems, "; "))
			} else if err != nil {
				return err
			}
			return nil
		}
	}
	s.MPS = &mps.Manager{Root: root, Control: control, Log: log.With("component", "mps")}
	return s
}
