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
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"

	"github.com/gpulet/gpulet/internal/cdispec"
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
	Log          *slog.Logger
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

	mu sync.Mutex // guards cp and the spec files it names
	cp *checkpoint

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
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	for _, dir := range []string{o.PluginDir, o.RegistrarDir} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("DRA folder %s: %w; mount the kubelet's plugin folders into gpulet's pod", dir, err)
		}
	}
	d := &Driver{o: o, log: o.Log, pool: o.NodeName, cpPath: filepath.Join(o.PluginDir, CheckpointFile), done: make(chan struct{})}
	cp, err := loadCheckpoint(d.cpPath)
	if err != nil {
		return nil, err
	}
	d.cp = cp

	ctx, d.cancel = context.WithCancelCause(ctx)
	// The helper and its slice controller log through klog's contextual
	// logger; route that into gpulet's slog.
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(o.Log.Handler()))
	d.ctx = ctx
	d.helper, err = kubeletplugin.Start(ctx, d,
		kubeletplugin.DriverName(DriverName),
		kubeletplugin.KubeClient(o.Client),
		kubeletplugin.NodeName(o.NodeName),
		kubeletplugin.PluginDataDirectoryPath(o.PluginDir),
		kubeletplugin.RegistrarDirectoryPath(o.RegistrarDir),
	)
	if err != nil {
		d.cancel(err)
		return nil, fmt.Errorf("start DRA kubelet plugin: %w", err)
	}
	changes, unsubscribe := o.Store.Subscribe()
	if err := d.publish(ctx); err != nil {
		unsubscribe()
		d.cancel(err)
		d.helper.Stop()
		return nil, err
	}
	d.log.Info("DRA driver serving", "driver", DriverName, "pool", d.pool, "socket", filepath.Join(o.PluginDir, "dra.sock"),
		"prepared_claims", len(cp.Claims))
	go func() {
		defer close(d.done)
		defer d.helper.Stop()
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
	devs := Devices(d.o.Store.Snapshot(), d.o.Devices)
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	if d.pubOnce && equality.Semantic.DeepEqual(devs, d.published) {
		return nil
	}
	pool := resourceslice.Pool{}
	for _, chunk := range slicesOf(devs) {
		pool.Slices = append(pool.Slices, resourceslice.Slice{Devices: chunk})
	}
	if len(pool.Slices) == 0 {
		// An empty slice keeps the pool (and its generation) visible.
		pool.Slices = []resourceslice.Slice{{}}
	}
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

// PrepareResourceClaims writes one CDI spec per claim and answers with its
// CDI device IDs. A claim already prepared (by this process or one before
// it) gets the recorded answer again without a new write.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	changed := false
	for _, c := range claims {
		pc, fresh, err := d.prepare(c)
		if err != nil {
			d.log.Warn("DRA claim not prepared", "claim", c.Namespace+"/"+c.Name, "uid", c.UID, "err", err)
			out[c.UID] = kubeletplugin.PrepareResult{Err: err}
			continue
		}
		if fresh {
			d.cp.Claims[string(c.UID)] = pc
			changed = true
			d.log.Info("DRA claim prepared", "claim", c.Namespace+"/"+c.Name, "uid", c.UID, "devices", len(pc.Devices))
		}
		out[c.UID] = kubeletplugin.PrepareResult{Devices: pc.result()}
	}
	if changed {
		if err := d.cp.save(d.cpPath); err != nil {
			// Without a record a restart would not know these claims:
			// fail them so the kubelet retries once the file can be written.
			for _, c := range claims {
				if r := out[c.UID]; r.Err == nil {
					out[c.UID] = kubeletplugin.PrepareResult{Err: err}
				}
			}
		}
	}
	return out, nil
}

// prepare prepares one claim; fresh is false when the checkpoint already
// had it. Must hold d.mu.
func (d *Driver) prepare(c *resourceapi.ResourceClaim) (pc preparedClaim, fresh bool, err error) {
	if pc, ok := d.cp.Claims[string(c.UID)]; ok {
		// Already prepared: same answer. Rewrite the spec only if it has
		// gone (a cleared /var/run/cdi), so the names still resolve.
		if _, err := os.Stat(pc.SpecFile); err != nil && pc.SpecFile != "" {
			if _, err := d.writeSpec(c.UID, pc.Devices); err != nil {
				return pc, false, err
			}
		}
		return pc, false, nil
	}
	snap := d.o.Store.Snapshot()
	byName := map[string]entry{}
	for _, e := range catalog(snap.Node) {
		byName[e.Name] = e
	}
	inUse := d.inUse()
	pc = preparedClaim{Namespace: c.Namespace, Name: c.Name}
	for _, r := range d.claimResults(c) {
		if r.Pool != d.pool {
			return pc, false, fmt.Errorf("device %s is allocated from pool %q, but this node's pool is %q", r.Device, r.Pool, d.pool)
		}
		e, ok := byName[r.Device]
		if !ok {
			return pc, false, fmt.Errorf("device %s is not on this node (any more); delete the pod so its claim is allocated again", r.Device)
		}
		if !snap.Healthy(e.UUID) || (e.Parent != "" && !snap.Healthy(e.Parent)) {
			return pc, false, fmt.Errorf("device %s (%s) is unhealthy; delete the pod so its claim is allocated again", r.Device, e.UUID)
		}
		admin := r.AdminAccess != nil && *r.AdminAccess
		if owner, busy := inUse[e.UUID]; busy && !admin && owner != string(c.UID) {
			return pc, false, fmt.Errorf("device %s is already prepared for claim %s; refusing to hand it out twice", r.Device, owner)
		}
		pc.Devices = append(pc.Devices, preparedDevice{
			Requests: []string{r.Request}, Pool: r.Pool, Device: r.Device, UUID: e.UUID, AdminAccess: admin,
			CDIDeviceIDs: []string{cdispec.ClaimDeviceID(d.o.CDI.Options.Kind, cdiName(c.UID, r.Device))},
		})
	}
	if len(pc.Devices) == 0 {
		return pc, true, nil // nothing of ours in the claim
	}
	if pc.SpecFile, err = d.writeSpec(c.UID, pc.Devices); err != nil {
		return pc, false, err
	}
	return pc, true, nil
}

// writeSpec writes the claim's CDI spec, one CDI device per DRA device.
func (d *Driver) writeSpec(uid types.UID, devs []preparedDevice) (string, error) {
	var cd []cdispec.ClaimDevice
	seen := map[string]bool{}
	for _, p := range devs {
		name := cdiName(uid, p.Device)
		if !seen[name] { // two requests may share a device (admin access)
			seen[name] = true
			cd = append(cd, cdispec.ClaimDevice{Name: name, UUID: p.UUID})
		}
	}
	return d.o.CDI.WriteClaim(d.o.Store.Snapshot().Node, string(uid), cd)
}

// cdiName is a claim device's CDI name, <claim UID>-<device>, as NVIDIA's:
// unique per claim, so a runtime's cached spec never resolves a stale one.
func cdiName(uid types.UID, device string) string { return string(uid) + "-" + device }

// inUse maps each device UUID held by a prepared claim (not through admin
// access) to that claim's UID. Must hold d.mu.
func (d *Driver) inUse() map[string]string {
	out := map[string]string{}
	for uid, pc := range d.cp.Claims {
		for _, p := range pc.Devices {
			if !p.AdminAccess {
				out[p.UUID] = uid
			}
		}
	}
	return out
}

func (pc preparedClaim) result() []kubeletplugin.Device {
	out := make([]kubeletplugin.Device, 0, len(pc.Devices))
	for _, p := range pc.Devices {
		out = append(out, kubeletplugin.Device{
			Requests: p.Requests, PoolName: p.Pool, DeviceName: p.Device, CDIDeviceIDs: p.CDIDeviceIDs,
		})
	}
	return out
}

// UnprepareResourceClaims removes each claim's spec and forgets it. A claim
// not prepared (or already unprepared) is no error.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[types.UID]error, len(claims))
	changed := false
	for _, c := range claims {
		out[c.UID] = nil
		if _, ok := d.cp.Claims[string(c.UID)]; !ok {
			continue
		}
		if err := d.o.CDI.RemoveClaim(string(c.UID)); err != nil {
			out[c.UID] = err
			continue
		}
		delete(d.cp.Claims, string(c.UID))
		changed = true
		d.log.Info("DRA claim unprepared", "claim", c.String(), "uid", c.UID)
	}
	if changed {
		if err := d.cp.save(d.cpPath); err != nil {
			for _, c := range claims {
				if out[c.UID] == nil {
					out[c.UID] = err
				}
			}
		}
	}
	return out, nil
}

// Published returns the devices last handed to the slice controller.
func (d *Driver) Published() []resourceapi.Device {
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	return d.published
}
