// Package metrics is gpulet's Prometheus endpoint and probes. GPU telemetry
// is exported under dcgm-exporter's metric and label names, so dashboards
// built for it work unchanged; gpulet's own state is under gpulet_*. A
// background loop samples the backend and asks the kubelet which pod holds
// which GPU; a scrape only reads the last results, so a wedged driver can
// never stall /metrics.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/podresources"
	"github.com/gpulet/gpulet/internal/resources"
)

// DefaultAddress is next to dcgm-exporter's :9400, so both can run on a node.
const DefaultAddress = ":9401"

// Source is what the exporter reads once the hardware is up.
type Source struct {
	Store   *inventory.Store
	Backend hardware.Backend
	// Advertised builds the resources of a snapshot, to map the kubelet's
	// device IDs back to UUIDs and to know what must be registered.
	Advertised func(inventory.Snapshot) []resources.Resource
}

// Options configure an Exporter.
type Options struct {
	Version  string // gpulet_build_info's labels
	Commit   string
	Hostname string        // the node's name, dcgm-exporter's Hostname label (NODE_NAME); default os.Hostname
	Interval time.Duration // telemetry sampling; default 5s
	// SampleTimeout bounds one sweep of the devices; default Interval.
	SampleTimeout time.Duration
	// PodResourcesSocket is the kubelet's PodResources socket; empty turns
	// pod attribution off.
	PodResourcesSocket string
	// OwnersGrace is how long the last pod attribution is kept while the
	// kubelet's PodResources API fails (a kubelet restart should not blank
	// the labels); past it the series carry no pod, rather than pods that
	// may be gone. Default 3×Interval.
	OwnersGrace time.Duration
	Log         *slog.Logger
}

// sampled is one sweep's results, replaced whole.
type sampled struct {
	samples map[string]hardware.Sample // by device UUID
	owners  map[string][]podresources.Owner
	// ownersAt is when the kubelet last answered with owners.
	ownersAt time.Time
}

// Exporter collects gpulet's metrics and answers the probes.
type Exporter struct {
	opts Options
	reg  *prometheus.Registry

	src      atomic.Pointer[Source]
	last     atomic.Pointer[sampled]
	driverUp atomic.Bool
	// idle: no driver since start and gpulet waits for one (fail-on-init-error
	// false): nothing is served, so nothing can be unready.
	idle atomic.Bool
	// refused: SetRefused's reason.
	refused atomic.Pointer[error]
	// configDegraded: why the per-node config asked for is not the one
	// serving ("" when it is); /readyz says so but stays ready.
	configDegraded atomic.Pointer[string]

	mu         sync.Mutex
	registered map[string]bool // resource → last registration succeeded
	// conflicts: resource → why another device plugin keeps gpulet from
	// serving it (held back); absent when none or when taking over.
	conflicts map[string]string
	lastXID   map[string]uint64 // GPU UUID → last XID (DCGM_FI_DEV_XID_ERRORS)

	transitions   *prometheus.CounterVec
	xidEvents     *prometheus.CounterVec
	allocations   *prometheus.CounterVec
	allocDevices  *prometheus.CounterVec
	registrations *prometheus.CounterVec
	lawUpdates    *prometheus.CounterVec
	conflictG     *prometheus.GaugeVec
	callSeconds   *prometheus.HistogramVec
	callTimeouts  *prometheus.CounterVec
	sweepSeconds  prometheus.Histogram
	sampleErrors  prometheus.Counter
	podErrors     prometheus.Counter
	lastSweep     prometheus.Gauge
	driverUpG     prometheus.GaugeFunc
	readyG        prometheus.GaugeFunc
	configApplied *prometheus.GaugeVec
	configOK      prometheus.Gauge
	configReloads *prometheus.CounterVec
	configAt      prometheus.Gauge
}

// New makes an exporter with its own registry (process and Go collectors
// included).
func New(opts Options) *Exporter {
	if opts.Interval <= 0 {
		opts.Interval = 5 * time.Second
	}
	if opts.SampleTimeout <= 0 {
		opts.SampleTimeout = opts.Interval
	}
	if opts.OwnersGrace <= 0 {
		opts.OwnersGrace = 3 * opts.Interval
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	e := &Exporter{opts: opts, reg: prometheus.NewRegistry(), registered: map[string]bool{}, lastXID: map[string]uint64{}, conflicts: map[string]string{}}
	f := prometheusFactory{e.reg}
	e.transitions = f.counterVec("gpulet_health_transitions_total", "Device health changes, by new state and the XID that caused them (0: none).", "to", "xid")
	e.xidEvents = f.counterVec("gpulet_xid_events_total", "XID events reported by the driver, whatever the policy did with them.", "xid")
	e.allocations = f.counterVec("gpulet_allocations_total", "Containers the kubelet allocated devices to (Allocate calls' container requests).", "resource")
	e.allocDevices = f.counterVec("gpulet_allocated_devices_total", "Devices handed to containers by Allocate.", "resource")
	e.registrations = f.counterVec("gpulet_kubelet_registrations_total", "Registrations with the kubelet, by result (success, error).", "resource", "result")
	e.lawUpdates = f.counterVec("gpulet_list_and_watch_updates_total", "Device lists sent to the kubelet on ListAndWatch streams.", "resource")
	e.conflictG = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gpulet_device_plugin_conflict",
		Help: "1 while another device plugin serves a resource gpulet advertises: the other endpoint, how gpulet saw it (socket, checkpoint, stream-replaced), and whether gpulet holds back or takes over."},
		[]string{"resource", "endpoint", "signal", "action"})
	e.reg.MustRegister(e.conflictG)
	e.callSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "gpulet_nvml_call_duration_seconds", Help: "Latency of guarded NVML calls.",
		Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5},
	}, []string{"call"})
	e.callTimeouts = f.counterVec("gpulet_nvml_call_timeouts_total", "NVML calls that outlived their deadline.", "call")
	e.sweepSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "gpulet_telemetry_sample_duration_seconds", Help: "Time to sample every device once (one background sweep).",
		Buckets: []float64{.0001, .001, .01, .1, .5, 1, 5, 10},
	})
	e.sampleErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "gpulet_telemetry_sample_errors_total", Help: "Device samples that failed."})
	e.podErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "gpulet_podresources_errors_total", Help: "Failed PodResources List calls to the kubelet."})
	e.lastSweep = prometheus.NewGauge(prometheus.GaugeOpts{Name: "gpulet_telemetry_last_sample_timestamp_seconds", Help: "When the last telemetry sweep finished (Unix time)."})
	e.driverUpG = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gpulet_driver_up", Help: "1 while the GPU driver answers, 0 while gpulet waits for it."},
		func() float64 { return b2f(e.driverUp.Load()) })
	e.readyG = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gpulet_ready", Help: "1 when /readyz answers 200."},
		func() float64 { return b2f(e.Ready() == nil) })
	e.configApplied = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gpulet_config_applied",
		Help: "1 for the per-node config serving (--config-file-srcdir), by name; \"(empty)\" for none."}, []string{"name"})
	e.configOK = prometheus.NewGauge(prometheus.GaugeOpts{Name: "gpulet_config_last_reload_success",
		Help: "1 when the last per-node config change (or the choice at start) was applied, 0 when it failed and the previous config keeps serving."})
	e.configAt = prometheus.NewGauge(prometheus.GaugeOpts{Name: "gpulet_config_last_reload_timestamp_seconds",
		Help: "When the last per-node config change was applied or failed (Unix time)."})
	e.configReloads = f.counterVec("gpulet_config_reloads_total", "Per-node config changes, by result (applied, failed).", "result")
	e.reg.MustRegister(e.configApplied, e.configOK, e.configAt)
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "gpulet_build_info", Help: "gpulet's version, commit and Go version; always 1.",
		ConstLabels: prometheus.Labels{"version": opts.Version, "commit": opts.Commit, "goversion": runtime.Version()},
	})
	build.Set(1)
	e.reg.MustRegister(e.callSeconds, e.sweepSeconds, e.sampleErrors, e.podErrors, e.lastSweep, e.driverUpG, e.readyG, build,
		deviceCollector{e}, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return e
}

type prometheusFactory struct{ reg *prometheus.Registry }

func (f prometheusFactory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Registry is what /metrics serves.
func (e *Exporter) Registry() *prometheus.Registry { return e.reg }

// Attach gives the exporter the node once the hardware is up. A backend
// that reports its driver calls gets the exporter as its observer.
func (e *Exporter) Attach(src Source) {
	if co, ok := src.Backend.(hardware.CallObserved); ok {
		co.SetCallObserver(e)
	}
	e.src.Store(&src)
}

// SetDriverUp records whether the driver answers; /readyz fails while not.
// A driver that answers ends idleness.
func (e *Exporter) SetDriverUp(up bool) {
	e.driverUp.Store(up)
	if up {
		e.idle.Store(false)
	}
}

// SetIdle says gpulet found no driver at start and waits for one, serving
// nothing. It is ready meanwhile: a node without GPUs (or whose driver is
// not installed yet) must not hold up a DaemonSet's rolling update, whose
// unavailable budget a never-ready pod would use up for good. A driver lost
// after it was seen is different: SetDriverUp(false) makes gpulet unready.
func (e *Exporter) SetIdle() { e.idle.Store(true) }

// SetRefused makes gpulet unready for good with why: it refused its
// settings (a setup no restart fixes) and waits for new ones, so /healthz
// still answers and the kubelet does not restart it into a crash-loop.
func (e *Exporter) SetRefused(why error) { e.refused.Store(&why) }

// ConfigApplied records the per-node config serving.
func (e *Exporter) ConfigApplied(name string) {
	e.configApplied.Reset()
	e.configApplied.WithLabelValues(name).Set(1)
}

// ConfigReload records a per-node config change applied (ok) or not.
func (e *Exporter) ConfigReload(ok bool) {
	result := "applied"
	if !ok {
		result = "failed"
	}
	e.configReloads.WithLabelValues(result).Inc()
	e.configOK.Set(b2f(ok))
	e.configAt.SetToCurrentTime()
}

// ConfigDegraded records why the per-node config asked for is not the one
// serving; "" clears it. gpulet stays ready: the previous config serves.
func (e *Exporter) ConfigDegraded(why string) {
	if why == "" {
		e.configDegraded.Store(nil)
		return
	}
	e.configDegraded.Store(&why)
}

// Degraded says what is wrong while gpulet stays ready ("" for nothing).
func (e *Exporter) Degraded() string {
	if p := e.configDegraded.Load(); p != nil {
		return *p
	}
	return ""
}

// Ready says why gpulet should not receive traffic, or nil: the driver
// answers, the inventory is there, and every advertised resource is
// registered with the kubelet.
func (e *Exporter) Ready() error {
	if r := e.refused.Load(); r != nil {
		return *r
	}
	src := e.src.Load()
	if src == nil && e.idle.Load() {
		return nil
	}
	if src == nil {
		return errors.New("no GPU inventory yet: waiting for the driver")
	}
	if !e.driverUp.Load() {
		return errors.New("GPU driver not available")
	}
	snap := src.Store.Snapshot()
	if snap.Node == nil {
		return errors.New("no GPU inventory")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range src.Advertised(snap) {
		if why, ok := e.conflicts[r.Name]; ok {
			return fmt.Errorf("degraded: %s", why)
		}
		if !e.registered[r.Name] {
			return fmt.Errorf("%s not registered with the kubelet", r.Name)
		}
	}
	return nil
}

// --- observers: called by the plugin, health and hardware layers ---

// Registration records a registration with the kubelet.
func (e *Exporter) Registration(resource string, err error) {
	result := "success"
	if err != nil {
		result = "error"
	}
	e.registrations.WithLabelValues(resource, result).Inc()
	e.mu.Lock()
	e.registered[resource] = err == nil
	e.mu.Unlock()
}

// Conflict records another device plugin serving resource (endpoint and
// signal say which and how it was seen); heldBack says gpulet does not serve
// it then, which makes /readyz degraded with reason. An empty endpoint
// clears it.
func (e *Exporter) Conflict(resource, endpoint, signal string, heldBack bool, reason string) {
	e.conflictG.DeletePartialMatch(prometheus.Labels{"resource": resource})
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.conflicts, resource)
	if endpoint == "" {
		return
	}
	action := "take-over"
	if heldBack {
		action = "hold-back"
		e.conflicts[resource] = reason
	}
	e.conflictG.WithLabelValues(resource, endpoint, signal, action).Set(1)
}

// ListAndWatchSent records a device list sent to the kubelet.
func (e *Exporter) ListAndWatchSent(resource string, _ int) {
	e.lawUpdates.WithLabelValues(resource).Inc()
}

// Allocated records one container's allocation.
func (e *Exporter) Allocated(resource string, devices int) {
	e.allocations.WithLabelValues(resource).Inc()
	e.allocDevices.WithLabelValues(resource).Add(float64(devices))
}

// DeviceEvent records a backend event (XIDs).
func (e *Exporter) DeviceEvent(ev hardware.Event) {
	if ev.Kind != hardware.EventXID {
		return
	}
	e.xidEvents.WithLabelValues(strconv.FormatUint(ev.XID, 10)).Inc()
	if ev.UUID != "" {
		e.mu.Lock()
		e.lastXID[ev.UUID] = ev.XID
		e.mu.Unlock()
	}
}

// HealthChanged records a device's health transition.
func (e *Exporter) HealthChanged(_ string, h inventory.Health) {
	to := "healthy"
	if !h.Healthy {
		to = "unhealthy"
	}
	e.transitions.WithLabelValues(to, strconv.FormatUint(h.XID, 10)).Inc()
}

// DriverCall records one guarded driver call.
// Hostname is the value of the series' Hostname label.
func (e *Exporter) Hostname() string { return e.opts.Hostname }

func (e *Exporter) DriverCall(what string, took time.Duration, timedOut bool) {
	e.callSeconds.WithLabelValues(what).Observe(took.Seconds())
	if timedOut {
		e.callTimeouts.WithLabelValues(what).Inc()
	}
}

// --- background sampling ---

// Run samples telemetry and pod attribution every Interval until ctx ends.
func (e *Exporter) Run(ctx context.Context) {
	var pods *podresources.Client
	if e.opts.PodResourcesSocket != "" {
		c, err := podresources.Dial(e.opts.PodResourcesSocket)
		if err != nil {
			e.opts.Log.Warn("pod attribution off", "err", err)
		} else {
			pods = c
			defer c.Close()
		}
	}
	tick := time.NewTicker(e.opts.Interval)
	defer tick.Stop()
	podsFailing := false
	for {
		if err := e.SampleOnce(ctx, pods); err != nil && !podsFailing {
			e.opts.Log.Info("pod attribution unavailable; GPU metrics carry no pod labels until the kubelet answers", "err", err)
			podsFailing = true
		} else if err == nil && podsFailing {
			e.opts.Log.Info("pod attribution back")
			podsFailing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// SampleOnce runs one sweep: pod attribution (when pods is not nil), then
// each device's telemetry. It returns the PodResources error, if any;
// failed samples are counted and the device keeps no stale values.
func (e *Exporter) SampleOnce(ctx context.Context, pods *podresources.Client) error {
	src := e.src.Load()
	if src == nil {
		return nil
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, e.opts.SampleTimeout)
	defer cancel()
	snap := src.Store.Snapshot()
	next := &sampled{samples: map[string]hardware.Sample{}}
	var podErr error
	if pods != nil {
		var names []string
		adv := src.Advertised(snap)
		for _, r := range adv {
			names = append(names, r.Name)
		}
		asg, err := pods.List(ctx, names...)
		if err != nil {
			e.podErrors.Inc()
			podErr = err
		} else {
			next.owners, next.ownersAt = podresources.ByDevice(asg, adv), start
		}
	}
	if podErr != nil {
		// A kubelet restart should not blank the labels, but owners older
		// than the grace may be pods long gone.
		if prev := e.last.Load(); prev != nil && start.Sub(prev.ownersAt) <= e.opts.OwnersGrace {
			next.owners, next.ownersAt = prev.owners, prev.ownersAt
		}
	}
	if ua, ok := src.Backend.(hardware.UsageAware); ok {
		var inUse []string
		for uuid := range next.owners {
			inUse = append(inUse, uuid)
		}
		ua.SetInUse(inUse)
	}
	if tel, ok := src.Backend.(hardware.Telemetry); ok && e.driverUp.Load() {
		for _, g := range snap.Node.GPUs {
			uuids := []string{g.UUID}
			for _, m := range g.MIGDevices {
				uuids = append(uuids, m.UUID)
			}
			for _, u := range uuids {
				s, err := tel.Sample(ctx, u)
				if err != nil {
					e.sampleErrors.Inc()
					continue
				}
				next.samples[u] = s
			}
		}
	}
	e.last.Store(next)
	e.sweepSeconds.Observe(time.Since(start).Seconds())
	e.lastSweep.Set(float64(time.Now().UnixNano()) / 1e9)
	return podErr
}
