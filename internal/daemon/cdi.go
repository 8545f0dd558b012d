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

// NewCDIWriter is a spec writer for the node behind backend, writing to
// --cdi-spec-dir: with the simulator's own mig-minors and no driver to mount,
// else with the driver's files found under the driver root.
func NewCDIWriter(cfg *config.Config, backend hardware.Backend, opts cdispec.Options, log *slog.Logger) *cdispec.Writer {
	w := &cdispec.Writer{Dir: cfg.CDISpecDir, Options: opts, Log: log}
	if w.Dir == "" {
		w.Dir = cdispec.DefaultDir
	}
	if p := MIGMinorsPath(backend); p != "" {
		w.MIGMinorsPath = p
	} else {
		w.DriverRoot = cfg.DriverRoot
	}
	return w
}

// CDIWriter returns the writer of the spec that resolves the CDI names
// Allocate hands out, or nil when no device-list strategy hands any out.
func CDIWriter(cfg *config.Config, backend hardware.Backend, log *slog.Logger) *cdispec.Writer {
	if !plugin.UsesCDI(cfg.DeviceListStrategy) {
		return nil
	}
	// Names as Allocate gives them: by the device-ID strategy only.
	return NewCDIWriter(cfg, backend, cdispec.Options{Kind: plugin.DefaultCDIKind, Naming: []string{cfg.DeviceIDStrategy}},
		log.With("component", "cdi"))
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
