package daemon

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/plugin"
)

// NewCDIWriter is a spec writer for the node behind backend, writing to
// --cdi-spec-dir: with the driver's files found under the driver root (the
// simulator's own stand-in root and mig-minors on a simulated node), for the
// capabilities and hook mode the settings ask.
func NewCDIWriter(cfg *config.Config, backend hardware.Backend, opts cdispec.Options, log *slog.Logger) *cdispec.Writer {
	w := &cdispec.Writer{Dir: cfg.CDISpecDir, Options: opts, Log: log,
		DriverRoot: cfg.DriverRoot, Capabilities: cfg.CDIDriverCapabilities, HookMode: cfg.CDIHooks, HookPath: cfg.CDIHookPath}
	if w.Dir == "" {
		w.Dir = cdispec.DefaultDir
	}
	if p := MIGMinorsPath(backend); p != "" {
		w.MIGMinorsPath = p
	}
	// The simulator has a driver root of its own (stand-in files).
	if b, ok := backend.(hardware.DriverRooted); ok {
		w.DriverRoot = b.DriverRoot()
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

// cdiWriter writes the spec before any server registers, so no container
// is created with a name nothing resolves, then keeps it in step with the
// inventory until stopped. The spec is left in place on exit.
func (g *gpulet) cdiWriter() component {
	if !plugin.UsesCDI(g.cfg.DeviceListStrategy) {
		return component{}
	}
	var w *cdispec.Writer
	return component{
		name: "CDI writer",
		start: func(context.Context) error {
			w = CDIWriter(g.cfg, g.backend, g.log)
			if err := w.Write(g.store.Snapshot().Node); err != nil {
				return fmt.Errorf("device-list strategy %v needs a CDI spec: %w", g.cfg.DeviceListStrategy, err)
			}
			return nil
		},
		run: func(ctx context.Context) error { w.Follow(ctx, g.store); return nil },
	}
}
