// Package daemon wires gpulet's layers together for `gpulet run`:
// hardware backend → inventory → health monitor → resources → device-plugin
// servers. It owns start-up order, restarts of the health watch, and
// shutdown, and turns the settings (package config, a leaf) into each
// layer's config and checks (Validate); each layer's logic lives in its own
// package.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/gpulet/gpulet/internal/allocator"
	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/nvml"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/metrics"
	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/resources"
)

// OpenBackend opens the backend the config names. "auto" takes NVML when
// its library loads and the simulator otherwise.
func OpenBackend(cfg *config.Config, log *slog.Logger) (hardware.Backend, error) {
	nvmlOpts := nvml.Options{DriverRoot: cfg.DriverRoot, DevRoot: cfg.DevRoot}
	switch cfg.Backend {
	case "nvml":
		return nvml.New(nvmlOpts)
	case "sim":
		return openSim(cfg)
	case "auto":
		b, err := nvml.New(nvmlOpts)
		if err == nil {
			return b, nil
		}
		log.Info("no usable NVML; simulating a GPU node", "profile", cfg.SimProfile, "nvml", err)
		return openSim(cfg)
	}
	return nil, fmt.Errorf("backend %q is not one of auto, sim, nvml", cfg.Backend)
}

func openSim(cfg *config.Config) (hardware.Backend, error) {
	p, err := sim.LoadProfile(cfg.SimProfile)
	if err != nil {
		return nil, err
	}
	return sim.New(p, cfg.SimRoot)
}

// PlacementFor returns what builds the topology-aware placer of one device
// list, placing shared devices (replicas, MIG instances) by policy.
func PlacementFor(policy allocator.Policy) func(*resources.Resource) (plugin.Placer, error) {
	return func(res *resources.Resource) (plugin.Placer, error) {
		devs := make([]allocator.Device, len(res.Devices))
		for i, d := range res.Devices {
			devs[i] = allocator.Device{ID: d.ID, GPU: d.GPU, NUMA: d.NUMA}
		}
		topo, err := allocator.NewTopology(res.Links, devs)
		if err != nil {
			return nil, fmt.Errorf("placement for %s: %w", res.Name, err)
		}
		return topo.WithPolicy(policy)
	}
}

// Run is `gpulet run`: it serves until ctx ends, then removes its sockets.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	return RunWithVersion(ctx, cfg, log, "")
}

// RunWithVersion is Run with the version gpulet_build_info reports.
func RunWithVersion(ctx context.Context, cfg *config.Config, log *slog.Logger, version string) error {
	start := time.Now()
	// Metrics and probes come first: /healthz answers and /readyz says why
	// not ready while gpulet waits for the driver.
	exp := metrics.New(metrics.Options{Version: version, PodResourcesSocket: cfg.PodResourcesSocket, Log: log.With("component", "metrics")})
	if cfg.MetricsAddress != "" {
		mctx, mcancel := context.WithCancel(ctx)
		wait, err := exp.Serve(mctx, cfg.MetricsAddress)
		if err != nil {
			mcancel()
			return err
		}
		defer func() { mcancel(); wait() }()
	}
	backend, node, err := InitHardware(ctx, cfg, log)
	if err != nil {
		if cfg.FailOnInitError {
			return err
		}
		// NVIDIA's plugin stays idle with FAIL_ON_INIT_ERROR=false; gpulet
		// also keeps trying, so GPUs appear once the driver does.
		log.Error("no GPUs to serve yet; waiting for the driver because fail-on-init-error is false", "err", err)
		exp.SetIdle()
		if backend, node = waitForHardware(ctx, cfg, log); backend == nil {
			return nil
		}
	}
	exp.SetDriverUp(true)
	defer backend.Close()
	if fi, ok := backend.(hardware.FaultInjector); ok {
		if err := fi.Publish(); err != nil {
			return err
		}
		log.Info("simulated GPU node ready", "profile", node.Profile, "root", fi.Root(),
			"inject_faults", "gpulet sim fault --sim-root="+fi.Root()+" --gpu=0 --xid=48")
	}
	log.Info("GPUs discovered", "backend", backend.Name(), "gpus", len(node.GPUs),
		"driver", node.DriverVersion, "cuda", node.CUDADriverVersion, "took", time.Since(start).Round(time.Microsecond))

	if err := checkMIG(node, cfg.MIGStrategy, log); err != nil {
		return err
	}
	store := inventory.NewStore(node)
	policy, err := HealthPolicy(cfg)
	if err != nil {
		return err
	}
	mon := &health.Monitor{
		Backend: backend, Store: store, Policy: policy, Log: log.With("component", "health"),
		Quiet: cfg.HealthQuietPeriod, Disabled: HealthDisabled(cfg), Observer: exp,
	}
	// Validate has vetted it; parsed again so an unset value (a caller that
	// skipped the flags) means NVIDIA's default.
	placement := allocator.PolicyDistributed
	if cfg.SharedDevicesAllocationPolicy != "" {
		if placement, err = allocator.ParsePolicy(cfg.SharedDevicesAllocationPolicy); err != nil {
			return err
		}
	}
	mgr := &plugin.Manager{
		Store:     store,
		Resources: ResourcesConfig(cfg),
		Opts: &plugin.Options{
			PluginDir:            cfg.DevicePluginPath,
			DeviceListStrategies: cfg.DeviceListStrategy,
			DeviceIDStrategy:     cfg.DeviceIDStrategy,
			PassDeviceSpecs:      cfg.PassDeviceSpecs,
			MIGMinorsPath:        MIGMinorsPath(backend),
			CDIKind:              plugin.DefaultCDIKind,
			Placement:            PlacementFor(placement),
			Log:                  log.With("component", "deviceplugin"),
			Observer:             exp,
		},
	}

	for _, line := range SharingSummary(cfg) {
		log.Info("sharing applied", "what", line)
	}
	stopMPS, err := startMPS(ctx, cfg, backend, store.Snapshot(), mgr.Opts, log)
	if err != nil {
		return err
	}
	defer stopMPS()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// With --dra the device plugin serves only the GPUs DRA does not own.
	pluginStore, draDone, err := startDRA(ctx, cfg, backend, store, cancel, log) // dra.go
	if err != nil {
		return err
	}
	mgr.Store = pluginStore
	// Telemetry covers every GPU; readiness waits for the resources the
	// device plugin serves, which are none of the GPUs DRA owns.
	resCfg := ResourcesConfig(cfg)
	exp.Attach(metrics.Source{Store: store, Backend: backend,
		Advertised: func(inventory.Snapshot) []resources.Resource { return resources.Build(pluginStore.Snapshot(), resCfg) }})
	cdiDone, err := startCDI(ctx, cfg, backend, store, log)
	if err != nil {
		cancel()
		return errors.Join(err, draDone())
	}
	healthDone := make(chan struct{})
	go func() {
		defer close(healthDone)
		superviseHealth(ctx, mon, exp, log)
	}()
	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		exp.Run(ctx)
	}()
	labelsDone, err := startNodeLabels(ctx, cfg, store, log) // labels.go
	if err != nil {
		cancel()
		<-healthDone
		return errors.Join(err, draDone())
	}
	err = mgr.Run(ctx)
	cancel()
	<-healthDone
	<-sampleDone
	cdiDone()
	labelsDone()
	return errors.Join(err, draDone())
}

// InitHardware opens the backend the settings name and discovers the node;
// on error nothing is left open.
func InitHardware(ctx context.Context, cfg *config.Config, log *slog.Logger) (hardware.Backend, *inventory.Node, error) {
	backend, err := OpenBackend(cfg, log)
	if err != nil {
		return nil, nil, err
	}
	node, err := backend.Discover(ctx)
	if err != nil {
		backend.Close()
		return nil, nil, fmt.Errorf("discover GPUs with the %s backend: %w", backend.Name(), err)
	}
	return backend, node, nil
}
