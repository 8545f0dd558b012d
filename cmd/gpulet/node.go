package main

import (
	"context"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/daemon"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/backends"
	"github.com/gpulet/gpulet/internal/inventory"
)

// probedNode opens the configured backend, discovers the node and probes
// each GPU now, which is the health the CLI's one-shot views show (the
// daemon tracks events over time). The caller closes the backend.
func probedNode(ctx context.Context, cfg *config.Config) (hardware.Backend, *inventory.Store, error) {
	backend, node, err := daemon.InitHardware(ctx, backends.Opener(cfg, newLogger(cfg)))
	if err != nil {
		return nil, nil, err
	}
	store := inventory.NewStore(node)
	for _, g := range node.GPUs {
		if err := backend.Probe(ctx, g.UUID); err != nil {
			store.SetHealth(g.UUID, inventory.Health{Reason: err.Error()})
		}
	}
	return backend, store, nil
}
