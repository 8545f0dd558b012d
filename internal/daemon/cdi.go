package daemon

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/plugin"
)

// CDIWriter returns the writer of the spec that resolves the CDI names
// Allocate hands out, or nil when no device-list strategy hands any out.
func CDIWriter(cfg *config.Config, backend hardware.Backend, log *slog.Logger) *cdispec.Writer {
	if !plugin.UsesCDI(cfg.DeviceListStrategy) {
		return nil
	}
	w := &cdispec.Writer{
		Dir: cfg.CDISpecDir,
		// Names as Allocate gives them: by the device-ID strategy only.
		Options: cdispec.Options{Kind: plugin.DefaultCDIKind, Naming: []string{cfg.DeviceIDStrategy}},
		Log:     log.With("component", "cdi"),
	}
	if w.Dir == "" {
		w.Dir = cdispec.DefaultDir
	}
	// The simulator keeps its own mig-minors and has no driver to mount.
	if p := MIGMinorsPath(backend); p != "" {
		w.MIGMinorsPath = p
	} else {
		w.DriverRoot = cfg.DriverRoot
	}
	return w
}

// startCDI writes the spec before any server registers, so no container
// is created with a name nothing resolves, then keeps it in step with the
// store until ctx ends. The returned wait blocks until that has stopped.
// The spec is left in place on exit.
func startCDI(ctx context.Context, cfg *config.Config, backend hardware.Backend, store *inventory.Store, log *slog.Logger) (wait func(), err error) {
	w := CDIWriter(cfg, backend, log)
	if w == nil {
		return func() {}, nil
	}
	if err := w.Write(store.Snapshot().Node); err != nil {
		return nil, fmt.Errorf("device-list strategy %v needs a CDI spec: %w", cfg.DeviceListStrategy, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Follow(ctx, store)
	}()
	return func() { <-done }, nil
}
