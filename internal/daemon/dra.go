package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
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
	return gpusNamed(node, indexes, all, "dra-devices names GPU %d, but this node has GPUs %v; fix --dra-devices / GPULET_DRA_DEVICES")
}

// gpusNamed selects every GPU (all) or those with the given indexes, each
// of which node must have; notFound formats the error (index, the node's).
func gpusNamed(node *inventory.Node, indexes []int, all bool, notFound string) (func(inventory.GPU) bool, error) {
	if all {
		return func(inventory.GPU) bool { return true }, nil
	}
	var have []int
	for _, g := range node.GPUs {
		have = append(have, g.Index)
	}
	for _, i := range indexes {
		if !slices.Contains(have, i) {
			return nil, fmt.Errorf(notFound, i, have)
		}
	}
	return func(g inventory.GPU) bool { return slices.Contains(indexes, g.Index) }, nil
}

// DynamicMIGWants returns which GPUs --dra-dynamic-mig gives to dynamic
// MIG (nil: none), checked against node.
func DynamicMIGWants(cfg *config.Config, node *inventory.Node) (func(inventory.GPU) bool, error) {
	indexes, all, err := cfg.DRA.DynamicMIGIndexes()
	if err != nil || (!all && len(indexes) == 0) {
		return nil, err
	}
	return gpusNamed(node, indexes, all, "dra-dynamic-mig names GPU %d, but DRA has GPUs %v; fix --dra-dynamic-mig / GPULET_DRA_DYNAMIC_MIG")
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

// split decides which GPUs DRA owns and hands the device plugin and DRA
// each a view of the inventory with only its own GPUs, kept in step with
// it. Without --dra the device plugin serves the whole inventory.
func (g *gpulet) split() component {
	if !g.cfg.DRA.Enabled {
		return component{name: "inventory split", start: func(context.Context) error {
			g.pluginStore = g.store
			return nil
		}}
	}
	var wait func()
	return component{
		name: "inventory split",
		start: func(ctx context.Context) (err error) {
			g.pluginStore, g.draStore, wait, err = splitStores(ctx, g.cfg, g.store)
			if err != nil {
				return err
			}
			g.log.Info("GPUs split between DRA and the device plugin", "component", "dra", "dra", len(g.draStore.Snapshot().Node.GPUs),
				"device_plugin", len(g.pluginStore.Snapshot().Node.GPUs), "dra_devices", g.cfg.DRA.Devices)
			return nil
		},
		run: func(ctx context.Context) error { <-ctx.Done(); wait(); return nil },
	}
}

// PCIeRoot is the backend's resolver of a GPU's PCIe root complex, or nil
// when its bus IDs are not the host's (the simulator's).
func PCIeRoot(backend hardware.Backend) func(string) (string, bool) {
	if r, ok := backend.(hardware.PCIeRootResolver); ok {
		return r.PCIeRoot
	}
	return nil
}

// DRACDIWriter returns the writer of the per-claim CDI specs: in
// --cdi-spec-dir, of NVIDIA's DRA kind, with the same device nodes and
// driver files as the device plugin's spec.
func DRACDIWriter(cfg *config.Config, backend hardware.Backend, log *slog.Logger) *cdispec.Writer {
	return NewCDIWriter(cfg, backend, cdispec.Options{Kind: cdispec.ClaimKind}, log)
}
