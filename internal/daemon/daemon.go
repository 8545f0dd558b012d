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
	"net"
	"sync"
	"time"

	"github.com/gpulet/gpulet/internal/allocator"
	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/metrics"
	"github.com/gpulet/gpulet/internal/mps"
	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/resources"
	"github.com/gpulet/gpulet/internal/version"
)

// Opener opens the hardware backend the settings name (package backends
// knows which exist); the daemon calls it at start and while it waits for
// the driver.
type Opener func() (hardware.Backend, error)

// PlacementFor returns what builds the topology-aware placer of one device
// list, placing shared devices (replicas, MIG instances) by policy.
func PlacementFor(policy allocator.Policy) func(*resources.Resource) (plugin.Placer, error) {
	return func(res *resources.Resource) (plugin.Placer, error) {
		topo, err := allocator.ForResource(res, policy)
		if err != nil {
			return nil, err
		}
		return topo, nil
	}
}

// Run is `gpulet run` on the backend open opens: it serves until ctx ends,
// then removes its sockets.
func Run(ctx context.Context, cfg *config.Config, open Opener, log *slog.Logger) error {
	return RunWithVersion(ctx, cfg, open, log, version.Info{})
}

// RunWithVersion is Run with the build gpulet_build_info reports. It
// starts gpulet's components in the order components lists them, serves
// until ctx ends or one fails, and stops them in reverse order.
func RunWithVersion(ctx context.Context, cfg *config.Config, open Opener, log *slog.Logger, build version.Info) error {
	g, err := newGpulet(cfg, open, log, build)
	if err != nil {
		return err
	}
	if cfg.NodeConfig.Dir != "" {
		var chosen *config.Config
		g.nodeConfig, chosen = startNodeConfig(ctx, cfg, g.nodeAPI(), log) // nodeconfig.go
		if err := g.setConfig(chosen); err != nil {
			return err
		}
	}
	err = g.startComponents(ctx)
	if err != nil && ctx.Err() == nil && g.nodeConfig.fallBack(err) { // nodeconfig.go
		// The node's config cannot start here (its MIG strategy or sharing
		// does not fit the node): serve without it, as reported.
		if err = g.setConfig(g.nodeConfig.base); err == nil {
			err = g.startComponents(ctx)
		}
	}
	if err != nil {
		return err
	}
	return g.sup.wait()
}

// startComponents starts gpulet's components under a new supervisor; when
// one fails, those started are stopped again.
func (g *gpulet) startComponents(ctx context.Context) error {
	g.sup = newSupervisor(ctx, g.log)
	for _, c := range g.components() {
		if err := g.sup.start(c); err != nil {
			if ctx.Err() != nil {
				return g.sup.stop() // stopped while starting: not a failure
			}
			return errors.Join(err, g.sup.stop())
		}
	}
	return nil
}

// gpulet is what the components of one `gpulet run` share. Each field is
// set by the Start of the component that owns it, before any component
// that reads it starts.
type gpulet struct {
	cfg       *config.Config
	open      Opener
	log       *slog.Logger
	exp       *metrics.Exporter
	policy    *health.Policy
	placement allocator.Policy
	start     time.Time

	backend     hardware.Backend // hardware
	store       *inventory.Store // hardware: every GPU
	pluginStore *inventory.Store // split: the GPUs the device plugin serves
	draStore    *inventory.Store // split: the GPUs DRA owns (nil without --dra)
	mps         *mps.Manager     // mps: nil without MPS sharing
	kube        kubeState        // kubeclient.go: the client DRA and the label publisher share

	// registered is closed at the device plugin's first registration: the
	// deferred link scan starts then (fillLinks), not beside registration.
	registered     chan struct{}
	registeredOnce sync.Once

	sup        *supervisor
	nodeConfig *nodeConfig     // nodeconfig.go: nil without --config-file-srcdir
	plugins    *plugin.Manager // the device plugin's, while it runs
}

// newGpulet checks what can be checked before anything starts.
func newGpulet(cfg *config.Config, open Opener, log *slog.Logger, build version.Info) (*gpulet, error) {
	g := &gpulet{open: open, log: log, start: time.Now(), registered: make(chan struct{})}
	if err := g.setConfig(cfg); err != nil {
		return nil, err
	}
	// Hostname is the node's name (NODE_NAME), as dcgm-exporter labels it; the pod's hostname is its own name.
	g.exp = metrics.New(metrics.Options{Version: build.Version, Commit: build.Commit, Hostname: cfg.Labels.NodeName, PodResourcesSocket: cfg.PodResourcesSocket, Log: log.With("component", "metrics")})
	return g, nil
}

// setConfig makes cfg the settings, with the health policy and placement
// they give.
func (g *gpulet) setConfig(cfg *config.Config) error {
	set, err := g.configSetter(cfg)
	if err == nil {
		set()
	}
	return err
}

// configSetter checks cfg and returns what makes it the settings.
func (g *gpulet) configSetter(cfg *config.Config) (func(), error) {
	policy, err := HealthPolicy(cfg)
	if err != nil {
		return nil, err
	}
	// Validate has vetted it; parsed again so an unset value (a caller that
	// skipped the flags) means NVIDIA's default.
	placement := allocator.PolicyDistributed
	if cfg.SharedDevicesAllocationPolicy != "" {
		if placement, err = allocator.ParsePolicy(cfg.SharedDevicesAllocationPolicy); err != nil {
			return nil, err
		}
	}
	return func() { g.cfg, g.policy, g.placement = cfg, policy, placement }, nil
}

// components lists gpulet's parts in start order; they stop in reverse.
//   - Probes come first: /healthz answers and /readyz says why not ready
//     while gpulet waits for the driver; they answer until the very end.
//   - The backend closes only after everything that uses it has stopped.
//   - What DRA owns is decided before MPS starts, so MPS daemons start only
//     for the device plugin's GPUs.
//   - The CDI spec is written before any server registers, so no container
//     is created with a name nothing resolves.
//   - The device-plugin servers come last and stop first, but for the
//     per-node config watch, which applies a change once all serve.
func (g *gpulet) components() []component {
	return []component{
		g.metricsServer(),
		g.hardware(),
		g.split(),         // dra.go
		g.mpsDaemons(),    // mps.go
		g.draDriver(),     // dra.go
		g.cdiWriter(),     // cdi.go
		g.healthMonitor(), // driver.go
		g.sampler(),
		g.labelPublisher(), // labels.go
		g.devicePlugin(),
		g.nodeConfigWatcher(), // nodeconfig.go
	}
}

func (g *gpulet) metricsServer() component {
	if g.cfg.MetricsAddress == "" {
		return component{}
	}
	var lis net.Listener
	return component{
		name: "metrics server",
		start: func(context.Context) (err error) {
			lis, err = metrics.Listen(g.cfg.MetricsAddress)
			return err
		},
		run: func(ctx context.Context) error { return g.exp.Serve(ctx, lis) },
	}
}

// hardware opens the backend and discovers the node, or with
// fail-on-init-error=false waits for the driver; it closes the backend when
// stopped, after every component that uses it.
func (g *gpulet) hardware() component {
	return component{
		name: "hardware",
		start: func(ctx context.Context) error {
			backend, node, err := initHardware(ctx, g.open, true)
			if err != nil {
				if g.cfg.FailOnInitError {
					return err
				}
				// NVIDIA's plugin stays idle with FAIL_ON_INIT_ERROR=false;
				// gpulet also keeps trying, so GPUs appear once the driver does.
				g.log.Error("no GPUs to serve yet; waiting for the driver because fail-on-init-error is false", "err", err)
				g.exp.SetIdle()
				if backend, node = waitForHardware(ctx, g.open, g.log); backend == nil {
					return ctx.Err()
				}
			}
			g.exp.SetDriverUp(true)
			if err := g.nodeReady(backend, node); err != nil {
				backend.Close()
				return err
			}
			g.backend, g.store = backend, inventory.NewStore(node)
			return nil
		},
		run: func(ctx context.Context) error {
			g.fillLinks(ctx)
			<-ctx.Done()
			return g.backend.Close()
		},
	}
}

// linksDelay is the longest the deferred link scan waits for the device
// plugin to register before it starts anyway.
const linksDelay = 200 * time.Millisecond

// registrationTap passes the device plugin's events on to the metrics and
// tells the link scan about the first registration.
type registrationTap struct {
	plugin.Observer
	g *gpulet
}

func (t registrationTap) Registration(resource string, err error) {
	t.Observer.Registration(resource, err)
	if err == nil {
		t.g.registeredOnce.Do(func() { close(t.g.registered) })
	}
}

// fillLinks scans the links of a node discovered without them and hands
// them to the store, where the device plugin's placement waits for them. A
// failed scan leaves placement to NUMA alone, as logged.
func (g *gpulet) fillLinks(ctx context.Context) {
	node := g.store.Snapshot().Node
	ld, ok := g.backend.(hardware.LinkDeferrer)
	if !ok || !node.LinksPending {
		return
	}
	// On a node with few cores the scan's NVML calls would slow the
	// registration they no longer block: start after it, or after
	// linksDelay when nothing registers (no kubelet yet, every GPU DRA's).
	t := time.NewTimer(linksDelay)
	defer t.Stop()
	select {
	case <-g.registered:
	case <-t.C:
	case <-ctx.Done():
		return
	}
	started := time.Now()
	links, err := ld.Links(ctx, node)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		g.log.Error("GPU links could not be read; placement goes by NUMA node only until the GPUs are rediscovered", "err", err)
		links = nil
	}
	if g.store.SetLinks(node, links) {
		g.log.Info("GPU links scanned", "gpus", len(node.GPUs), "took", time.Since(started).Round(time.Microsecond))
	}
}

// nodeReady publishes a simulated node's files, logs what was found and
// checks the MIG layout against the strategy.
func (g *gpulet) nodeReady(backend hardware.Backend, node *inventory.Node) error {
	if fi, ok := backend.(hardware.FaultInjector); ok {
		if err := fi.Publish(); err != nil {
			return err
		}
		g.log.Info("simulated GPU node ready", "profile", node.Profile, "root", fi.Root(),
			"inject_faults", "gpulet sim fault --sim-root="+fi.Root()+" --gpu=0 --xid=48")
	}
	g.log.Info("GPUs discovered", "backend", backend.Name(), "gpus", len(node.GPUs),
		"driver", node.DriverVersion, "cuda", node.CUDADriverVersion, "took", time.Since(g.start).Round(time.Microsecond))
	return checkMIG(node, g.cfg.MIGStrategy, g.log)
}

// sampler samples telemetry and pod attribution for the metrics. Telemetry
// covers every GPU; readiness waits for the resources the device plugin
// serves, which are none of the GPUs DRA owns. Without the metrics server
// nothing reads the samples, so nothing samples (no NVML telemetry sweeps,
// no PodResources connection): a plain device plugin does only its work.
func (g *gpulet) sampler() component {
	if g.cfg.MetricsAddress == "" {
		return component{}
	}
	return component{
		name: "metrics sampler",
		start: func(context.Context) error {
			resCfg := ResourcesConfig(g.cfg)
			g.exp.Attach(metrics.Source{Store: g.store, Backend: g.backend,
				Advertised: func(inventory.Snapshot) []resources.Resource {
					return resources.Build(g.pluginStore.Snapshot(), resCfg)
				}})
			return nil
		},
		run: func(ctx context.Context) error { g.exp.Run(ctx); return nil },
	}
}

// devicePlugin serves the kubelet one device plugin per resource. Its
// manager is made in Start, so per-node configuration can hand it new
// resources (g.plugins) from the supervisor's goroutine.
func (g *gpulet) devicePlugin() component {
	var mgr *plugin.Manager
	var conflicts *conflictReporter
	return component{
		name: "device plugin",
		start: func(context.Context) error {
			mgr = &plugin.Manager{
				Store:     g.pluginStore,
				Resources: ResourcesConfig(g.cfg),
				Opts: &plugin.Options{
					PluginDir:            g.cfg.DevicePluginPath,
					DeviceListStrategies: g.cfg.DeviceListStrategy,
					DeviceIDStrategy:     g.cfg.DeviceIDStrategy,
					PassDeviceSpecs:      g.cfg.PassDeviceSpecs,
					MIGMinorsPath:        MIGMinorsPath(g.backend),
					CDIKind:              plugin.DefaultCDIKind,
					Placement:            PlacementFor(g.placement),
					Log:                  g.log.With("component", "deviceplugin"),
					Observer:             registrationTap{g.exp, g},
					TakeOver:             g.cfg.TakeOver,
				},
			}
			if g.mps != nil {
				mgr.Opts.MPS = g.mps
			}
			conflicts = newConflictReporter(g.exp, g.conflictEvents(), mgr.Opts.Log) // conflict.go
			mgr.Opts.OnConflict = conflicts.report
			g.plugins = mgr
			return nil
		},
		run: func(ctx context.Context) error {
			eventsDone := make(chan struct{})
			ectx, cancel := context.WithCancel(ctx)
			go func() { defer close(eventsDone); conflicts.run(ectx) }()
			defer func() { cancel(); <-eventsDone }()
			return mgr.Run(ctx)
		},
	}
}

// InitHardware opens the backend and discovers the node; on error nothing
// is left open.
func InitHardware(ctx context.Context, open Opener) (hardware.Backend, *inventory.Node, error) {
	return initHardware(ctx, open, false)
}

// initHardware is InitHardware that, with deferLinks and a backend that
// can, leaves the link scan to fillLinks so the device plugin registers
// without waiting for it.
func initHardware(ctx context.Context, open Opener, deferLinks bool) (hardware.Backend, *inventory.Node, error) {
	backend, err := open()
	if err != nil {
		return nil, nil, err
	}
	discover := backend.Discover
	if ld, ok := backend.(hardware.LinkDeferrer); ok && deferLinks {
		discover = ld.DiscoverDevices
	}
	node, err := discover(ctx)
	if err != nil {
		backend.Close()
		return nil, nil, fmt.Errorf("discover GPUs with the %s backend: %w", backend.Name(), err)
	}
	return backend, node, nil
}
