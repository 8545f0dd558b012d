package dra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-logr/logr"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

// Default folders, the kubelet's: where it looks for plugin registration
// sockets, and the plugin's own data folder (DRA socket, checkpoint).
var (
	DefaultRegistrarDir = kubeletplugin.KubeletRegistryDir
	DefaultPluginDir    = filepath.Join(kubeletplugin.KubeletPluginsDir, DriverName)
)

// DefaultHealthResend is how often the health stream repeats itself when
// nothing changes; the kubelet marks a device's health unknown after
// three missed reports (HealthCheckTimeout).
const DefaultHealthResend = 10 * time.Second

// Options configure a Driver.
type Options struct {
	// NodeName is the Node the slices belong to; the pool is named after it.
	NodeName string
	// Client reads ResourceClaims and writes ResourceSlices.
	Client kubernetes.Interface
	// Store is the inventory DRA owns (the daemon's filtered view).
	Store *inventory.Store
	// CDI writes the per-claim specs; its Options.Kind is the CDI kind of
	// the names Prepare hands out (cdispec.ClaimKind).
	CDI *cdispec.Writer
	// PluginDir holds the DRA socket and the checkpoint; RegistrarDir the
	// registration socket. Defaults: the kubelet's.
	PluginDir    string
	RegistrarDir string
	Devices      DeviceOptions
	HealthResend time.Duration
	// BootIDPath is read for the node's boot ID; checkpoint records of an
	// earlier boot are dropped. Default: DefaultBootIDPath.
	BootIDPath string
	// CleanupInterval is how often prepared claims are checked against the
	// API server and unprepared when their ResourceClaim is gone or was
	// replaced. Default: DefaultCleanupInterval.
	CleanupInterval time.Duration
	// Sharing applies claims' TimeSlicing and MPS configs; what it lacks
	// is refused at Prepare.
	Sharing SharingControl
	Log     *slog.Logger
	// MIG cuts the instances of dynamic MIG GPUs: the backend, where it
	// can (hardware.DynamicMIG). DynamicMIG selects the GPUs given to
	// dynamic MIG (nil: none); their profiles are read at Start into
	// Devices.DynamicMIG. MIGWholeWhenIdle turns MIG mode off when a GPU's
	// last dynamic instance is destroyed.
	MIG              hardware.DynamicMIG
	DynamicMIG       func(inventory.GPU) bool
	MIGWholeWhenIdle bool
}

// Driver is a running DRA kubelet plugin. It implements
// kubeletplugin.DRAPlugin; the kubeletplugin helper serves the kubelet's
// gRPC APIs (registration, DRAPlugin v1 and v1beta1, DRAResourceHealth)
// on its behalf and publishes the slices.
type Driver struct {
	o      Options
	log    *slog.Logger
	pool   string
	cpPath string

	mu sync.Mutex  // guards cp and the spec files it names
	cp *checkpoint // as last saved: never ahead of the file
	// crashAt, set by tests, makes Prepare and Unprepare stop dead at a
	// step, as a kill would.
	crashAt func(step string) bool

	helper *kubeletplugin.Helper
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}

	pubMu     sync.Mutex
	published []resourceapi.Device
	pubOnce   bool
	// publishedAt is called after each PublishResources; benchmarks hook it.
	publishedAt func(n int)
}

var _ kubeletplugin.DRAPlugin = (*Driver)(nil)

// errStopped is the cause of an orderly stop.
var errStopped = errors.New("DRA driver stopped")

// Start loads the checkpoint, serves the kubelet's DRA APIs and publishes
// the store's devices, then keeps the slices in step with the store until
// ctx ends or Stop is called.
func Start(ctx context.Context, o Options) (*Driver, error) {
	if o.NodeName == "" {
		return nil, errors.New("DRA needs the node's name: set NODE_NAME (downward API spec.nodeName) or --node-name")
	}
	if o.Client == nil || o.Store == nil || o.CDI == nil {
		return nil, errors.New("DRA driver needs a Kubernetes client, an inventory store and a CDI writer")
	}
	if o.PluginDir == "" {
		o.PluginDir = DefaultPluginDir
	}
	if o.RegistrarDir == "" {
		o.RegistrarDir = DefaultRegistrarDir
	}
	if o.HealthResend <= 0 {
		o.HealthResend = DefaultHealthResend
	}
	if o.BootIDPath == "" {
		o.BootIDPath = DefaultBootIDPath
	}
	if o.CleanupInterval <= 0 {
		o.CleanupInterval = DefaultCleanupInterval
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	for _, dir := range []string{o.PluginDir, o.RegistrarDir} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("DRA folder %s: %w; mount the kubelet's plugin folders into gpulet's pod", dir, err)
		}
	}
	if o.DynamicMIG != nil {
		o.Devices.DynamicMIG = LoadDynamicMIG(ctx, o.MIG, o.Store.Snapshot().Node, o.DynamicMIG, o.Log)
	}
	d := &Driver{o: o, log: o.Log, pool: o.NodeName, cpPath: filepath.Join(o.PluginDir, CheckpointFile), done: make(chan struct{})}
	cp, err := loadCheckpoint(d.cpPath)
	if err != nil {
		return nil, err
	}
	d.cp = cp
	bootID, err := readBootID(o.BootIDPath)
	if err != nil {
		return nil, err
	}
	if err := d.repair(bootID); err != nil {
		return nil, err
	}

	ctx, d.cancel = context.WithCancelCause(ctx)
	// The helper and its slice controller log through klog's contextual
	// logger; route that into gpulet's slog.
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(o.Log.Handler()))
	d.ctx = ctx
	// The prepared claims' MPS daemons ended with the last gpulet: start
	// them before the kubelet learns the driver is there; those that fail
	// are retried in the background (not fatal: the other claims work).
	mpsRetry := d.restoreMPS(ctx, d.cp.mpsClaims())
	mpsDone := make(chan struct{})
	go func() {
		defer close(mpsDone)
		d.restoreMPSRetry(ctx, mpsRetry)
	}()
	d.helper, err = kubeletplugin.Start(ctx, d,
		kubeletplugin.DriverName(DriverName),
		kubeletplugin.KubeClient(o.Client),
		kubeletplugin.NodeName(o.NodeName),
		kubeletplugin.PluginDataDirectoryPath(o.PluginDir),
		kubeletplugin.RegistrarDirectoryPath(o.RegistrarDir),
	)
	if err != nil {
		d.cancel(err)
		<-mpsDone
		return nil, fmt.Errorf("start DRA kubelet plugin: %w", err)
	}
	changes, unsubscribe := o.Store.Subscribe()
	if err := d.publish(ctx); err != nil {
		unsubscribe()
		d.cancel(err)
		d.helper.Stop()
		<-mpsDone
		return nil, err
	}
	d.log.Info("DRA driver serving", "driver", DriverName, "pool", d.pool, "socket", filepath.Join(o.PluginDir, "dra.sock"),
		"prepared_claims", len(d.cp.Claims))
	cleanupDone := make(chan struct{})
	go func() {
		defer close(cleanupDone)
		tick := time.NewTicker(o.CleanupInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				d.cleanup(ctx)
			}
		}
	}()
	go func() {
		defer close(d.done)
		defer d.helper.Stop()
		defer func() { <-cleanupDone; <-mpsDone }()
		defer unsubscribe()
		for {
			select {
			case <-ctx.Done():
				return
			case <-changes:
			}
			if err := d.publish(ctx); err != nil {
				d.log.Error("ResourceSlices not updated", "err", err)
			}
		}
	}()
	return d, nil
}

// Stop ends the driver and waits for it. Slices stay: the kubelet removes
// them when the plugin stays unregistered, and a restarted gpulet takes
// them over. It returns the error that stopped the driver, if not Stop.
func (d *Driver) Stop() error {
	d.cancel(errStopped)
	<-d.done
	return d.Err()
}

// Done is closed once the driver has stopped.
func (d *Driver) Done() <-chan struct{} { return d.done }

// Err is the fatal error that stopped the driver, or nil.
func (d *Driver) Err() error {
	select {
	case <-d.done:
	default:
		return nil
	}
	cause := context.Cause(d.ctx)
	if errors.Is(cause, errStopped) || errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
		return nil
	}
	return cause
}

// publish hands the store's healthy devices to the slice controller when
// they differ from what it last handed over.
func (d *Driver) publish(ctx context.Context) error {
	snap := d.o.Store.Snapshot()
	if snap.Node.LinksPending {
		// The GPUs' NVLink domains are attributes: publish once the
		// links are scanned (the store's next change), not without them.
		return nil
	}
	devs := Devices(snap, d.o.Devices)
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	if d.pubOnce && equality.Semantic.DeepEqual(devs, d.published) {
		return nil
	}
	pool := Pool(snap, d.o.Devices)
	err := d.helper.PublishResources(ctx, resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{d.pool: pool}})
	if err != nil {
		return fmt.Errorf("publish ResourceSlices: %w", err)
	}
	if d.pubOnce {
		d.log.Info("ResourceSlices updated", "devices", len(devs), "was", len(d.published))
	}
	d.published, d.pubOnce = devs, true
	if d.publishedAt != nil {
		d.publishedAt(len(devs))
	}
	return nil
}

// HandleError is called for errors in the background: slice publishing
// (always recoverable: the controller retries) and the gRPC servers. A
// fatal one stops the driver; the daemon then stops with it.
func (d *Driver) HandleError(_ context.Context, err error, msg string) {
	if errors.Is(err, kubeletplugin.ErrRecoverable) {
		d.log.Warn("DRA: "+msg+"; retrying", "err", err)
		return
	}
	d.log.Error("DRA: "+msg+"; stopping the DRA driver", "err", err)
	d.cancel(fmt.Errorf("%s: %w", msg, err))
}

// claimResults are a claim's allocation results that are this driver's.
func (d *Driver) claimResults(claim *resourceapi.ResourceClaim) []resourceapi.DeviceRequestAllocationResult {
	if claim.Status.Allocation == nil {
		return nil
	}
	var out []resourceapi.DeviceRequestAllocationResult
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver == DriverName {
			out = append(out, r)
		}
	}
	return out
}

// Published returns the devices last handed to the slice controller.
func (d *Driver) Published() []resourceapi.Device {
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	return d.published
}
