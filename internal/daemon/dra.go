package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/dra"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/labels/publish"
)

// DRAOwns returns which GPUs DRA owns under cfg, checked against node: all
// of them by default, or the listed indexes. Without --dra it owns none.
// A GPU is DRA's or the device plugin's, never both: each side is handed a
// view of the inventory with only its own GPUs.
func DRAOwns(cfg *config.Config, node *inventory.Node) (func(inventory.GPU) bool, error) {
	if !cfg.DRA.Enabled {
		return func(inventory.GPU) bool { return false }, nil
	}
	indexes, all, err := cfg.DRA.DRAIndexes()
	if err != nil {
		return nil, err
	}
	if all {
		return func(inventory.GPU) bool { return true }, nil
	}
	var have []int
	for _, g := range node.GPUs {
		have = append(have, g.Index)
	}
	for _, i := range indexes {
		if !slices.Contains(have, i) {
			return nil, fmt.Errorf("dra-devices names GPU %d, but this node has GPUs %v; fix --dra-devices / GPULET_DRA_DEVICES", i, have)
		}
	}
	return func(g inventory.GPU) bool { return slices.Contains(indexes, g.Index) }, nil
}

// splitStores returns the views of store the device plugin and DRA serve,
// kept in step with it until ctx ends; wait blocks until they have stopped.
func splitStores(ctx context.Context, cfg *config.Config, store *inventory.Store) (pluginStore, draStore *inventory.Store, wait func(), err error) {
	owns, err := DRAOwns(cfg, store.Snapshot().Node)
	if err != nil {
		return nil, nil, nil, err
	}
	pluginStore, pluginWait := inventory.View(ctx, store, func(g inventory.GPU) bool { return !owns(g) })
	draStore, draWait := inventory.View(ctx, store, owns)
	return pluginStore, draStore, func() { pluginWait(); draWait() }, nil
}

// startDRA splits the inventory between the device plugin and DRA and, with
// --dra, starts the DRA driver on its part until ctx ends. It returns the
// store the device plugin serves (store itself without DRA), and a wait that
// blocks until DRA has stopped and returns what stopped it early, if
// anything; such an error also cancels stopAll so the daemon ends with it.
func startDRA(ctx context.Context, cfg *config.Config, backend hardware.Backend, store *inventory.Store,
	stopAll context.CancelFunc, log *slog.Logger) (pluginStore *inventory.Store, wait func() error, err error) {
	if !cfg.DRA.Enabled {
		return store, func() error { return nil }, nil
	}
	viewsCtx, stopViews := context.WithCancel(ctx)
	pluginStore, draStore, waitViews, err := splitStores(viewsCtx, cfg, store)
	if err != nil {
		stopViews()
		return nil, nil, err
	}
	viewsWait := func() { stopViews(); waitViews() }
	log = log.With("component", "dra")
	log.Info("GPUs split between DRA and the device plugin", "dra", len(draStore.Snapshot().Node.GPUs),
		"device_plugin", len(pluginStore.Snapshot().Node.GPUs), "dra_devices", cfg.DRA.Devices)

	client, err := publish.Client("")
	if err != nil {
		viewsWait()
		return nil, nil, fmt.Errorf("DRA needs the Kubernetes API: %w", err)
	}
	o := dra.Options{
		NodeName: cfg.Labels.NodeName, Client: client, Store: draStore,
		CDI: DRACDIWriter(cfg, backend, log), PluginDir: cfg.DRA.PluginDir, RegistrarDir: cfg.DRA.RegistrarDir,
		Log: log,
	}
	if _, simulated := backend.(hardware.FaultInjector); !simulated {
		o.Devices.PCIeRoot = dra.SysfsPCIeRoot // a simulated GPU's bus ID is not the host's
	}
	d, err := dra.Start(ctx, o)
	if err != nil {
		viewsWait()
		return nil, nil, err
	}
	done := make(chan error, 1)
	go func() {
		select {
		case <-d.Done():
			if err := d.Err(); err != nil {
				stopAll()
				done <- fmt.Errorf("DRA driver: %w", err)
				return
			}
		case <-ctx.Done():
		}
		done <- d.Stop()
	}()
	return pluginStore, func() error {
		err := <-done
		viewsWait()
		return err
	}, nil
}

// DRACDIWriter returns the writer of the per-claim CDI specs: in
// --cdi-spec-dir, of NVIDIA's DRA kind, with the same device nodes and
// driver files as the device plugin's spec.
func DRACDIWriter(cfg *config.Config, backend hardware.Backend, log *slog.Logger) *cdispec.Writer {
	return NewCDIWriter(cfg, backend, cdispec.Options{Kind: cdispec.ClaimKind}, log)
}
