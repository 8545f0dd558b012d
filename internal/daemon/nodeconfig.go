package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/nodeconfig"
)

// Per-node configuration (--config-file-srcdir): the Node's label names a
// config file in a mounted ConfigMap; gpulet applies a change in process,
// by restarting only the components the change affects, and keeps the last
// good config when the new one is bad. The state is reported on the Node
// (annotations, Events: nodeconfig_kube.go), in metrics and on /readyz.

// Annotations on the Node saying which config is applied and whether the
// last change failed.
const (
	AnnotationConfig        = "gpulet.io/config"         // the applied config's name; "(empty)" for none
	AnnotationConfigState   = "gpulet.io/config-state"   // applied or failed
	AnnotationConfigMessage = "gpulet.io/config-message" // why it failed, or what needs a restart
)

// Reasons of the Node Events.
const (
	ConfigAppliedReason = "ConfigApplied"
	ConfigFailedReason  = "ConfigFailed"
)

// nodeAPI is the Node as per-node configuration sees it: its label, its
// status annotations and its Events. nil outside a cluster (no NODE_NAME or
// no API server, or a build without the Kubernetes API): only the default
// and fallbacks then apply, and the state is in the log, metrics and
// /readyz.
type nodeAPI interface {
	// Label reads the label's value once.
	Label(ctx context.Context) (string, error)
	// Watch calls changed with the label's value at start and whenever it
	// changes, until ctx ends.
	Watch(ctx context.Context, changed func(string)) error
	// Annotate sets the annotations, writing only when they differ from
	// the Node's.
	Annotate(ctx context.Context, annotations map[string]string) error
	// Event posts an Event on the Node.
	Event(ctx context.Context, warning bool, reason, msg string) error
}

// nodeConfig is what per-node configuration keeps between changes.
type nodeConfig struct {
	// base is the settings of the command line and environment alone; a
	// config file is added to it with WithFile.
	base *config.Config
	api  nodeAPI
	log  *slog.Logger

	label   string              // the label's last value
	applied nodeconfig.Choice   // the config serving
	data    []byte              // its file's content
	failed  *nodeConfigFailure  // the last change's failure, nil when it applied
	notLive []string            // settings of the applied config that need a restart
	pending chan nodeConfigSync // label changes and file events, for run
}

// nodeConfigFailure is a change that was not applied.
type nodeConfigFailure struct {
	name string // the config asked for ("" when none could be chosen)
	data []byte // its content, so the same bad file is not tried again
	err  error
}

type nodeConfigSync struct {
	label *string // the label's new value; nil: re-read the folder
	why   string
}

// startNodeConfig picks the config at start: the Node's label, read once
// (bounded; unreadable: as if unset, and the watch corrects it), else the
// default and fallbacks. It returns the settings to start with: the chosen
// config's, or, when it is bad, those of the command line and environment
// alone, with the failure reported once gpulet runs.
func startNodeConfig(ctx context.Context, cfg *config.Config, api nodeAPI, log *slog.Logger) (*nodeConfig, *config.Config) {
	nc := &nodeConfig{base: cfg, api: api, log: log.With("component", "nodeconfig"), pending: make(chan nodeConfigSync, 16)}
	if api != nil {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		label, err := api.Label(lctx)
		cancel()
		if err != nil {
			nc.log.Warn("cannot read the Node's config label at start; choosing as if unset until the watch reads it", "label", cfg.NodeConfig.Label, "err", err)
		}
		nc.label = label
	}
	next, choice, data, err := nc.load()
	if err != nil {
		nc.failed = &nodeConfigFailure{name: choice.Name, data: data, err: err}
		nc.log.Error("the chosen config is not usable; starting with the command line's and environment's settings alone", "config", choice.String(), "err", err)
		return nc, cfg
	}
	nc.applied, nc.data = choice, data
	nc.log.Info("config chosen", "config", choice.String(), "reason", choice.Reason, "file", choice.Path)
	return nc, next
}

// fallBack records that the chosen config failed to start (err) and says
// whether gpulet should start again with the command line's and
// environment's settings alone: only when a config file was chosen. nc may
// be nil (no per-node configuration).
func (nc *nodeConfig) fallBack(err error) bool {
	if nc == nil || nc.applied.Path == "" {
		return false
	}
	nc.log.Error("the chosen config does not start on this node; starting with the command line's and environment's settings alone",
		"config", nc.applied.String(), "err", err)
	nc.failed = &nodeConfigFailure{name: nc.applied.Name, data: nc.data, err: err}
	nc.applied, nc.data, nc.notLive = nodeconfig.Choice{}, nil, nil
	return true
}

// load chooses the config for the current label and reads it into
// settings, checked as at start (Validate).
func (nc *nodeConfig) load() (*config.Config, nodeconfig.Choice, []byte, error) {
	nc2 := nc.base.NodeConfig
	choice, err := nodeconfig.Pick(nc2.Dir, nc.label, nc2.Default, nc2.Fallbacks)
	if err != nil {
		return nil, choice, nil, err
	}
	var data []byte
	if choice.Path != "" {
		if data, err = os.ReadFile(choice.Path); err != nil {
			return nil, choice, nil, fmt.Errorf("read config %q: %w", choice.Name, err)
		}
	}
	next, err := nc.base.WithFile(choice.Path)
	if err == nil {
		err = Validate(next)
	}
	if err != nil {
		return nil, choice, data, fmt.Errorf("config %q: %w", choice.Name, err)
	}
	return next, choice, data, nil
}

// nodeConfigWatcher follows the Node's label, the config folder and
// SIGHUP, and applies what changes; it is the last component, so every
// other one serves before the first change.
func (g *gpulet) nodeConfigWatcher() component {
	nc := g.nodeConfig
	if nc == nil {
		return component{}
	}
	return component{
		name: "node config",
		start: func(ctx context.Context) error {
			g.exp.ConfigReload(nc.failed == nil)
			g.reportNodeConfig(ctx, "start", nc.failed)
			return nil
		},
		run: func(ctx context.Context) error { return g.watchNodeConfig(ctx) },
	}
}

func (g *gpulet) watchNodeConfig(ctx context.Context) error {
	nc := g.nodeConfig
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch the config folder: %w", err)
	}
	defer fw.Close()
	if err := fw.Add(nc.base.NodeConfig.Dir); err != nil {
		// Reported, not fatal: the label and SIGHUP still apply changes.
		nc.log.Error("cannot watch the config folder: its changes are read on a label change or SIGHUP only", "dir", nc.base.NodeConfig.Dir, "err", err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	watchDone := make(chan struct{})
	wctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); <-watchDone }()
	if nc.api != nil {
		go func() {
			defer close(watchDone)
			err := nc.api.Watch(wctx, func(v string) {
				select {
				case nc.pending <- nodeConfigSync{label: &v, why: "label"}:
				case <-wctx.Done():
				}
			})
			if err != nil && wctx.Err() == nil {
				nc.log.Error("watching the Node's config label stopped", "err", err)
			}
		}()
	} else {
		close(watchDone)
	}

	// A ConfigMap update is several events (a new folder, ..data swapped,
	// the old folder removed): they are read once, after a short quiet.
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-nc.pending:
			g.syncNodeConfig(ctx, s)
		case ev, ok := <-fw.Events:
			if !ok {
				return errors.New("the config folder's watch closed")
			}
			nc.log.Debug("config folder changed", "event", ev.String())
			settle = time.After(100 * time.Millisecond)
		case err, ok := <-fw.Errors:
			if ok {
				nc.log.Warn("config folder watch", "err", err)
			}
		case <-settle:
			settle = nil
			g.syncNodeConfig(ctx, nodeConfigSync{why: "config folder changed"})
		case <-hup:
			nc.log.Info("SIGHUP: reading the config again")
			g.syncNodeConfig(ctx, nodeConfigSync{why: "SIGHUP"})
		}
	}
}

// syncNodeConfig chooses and loads the config again and applies it when it
// differs from the one serving; a bad one leaves the serving one in place.
func (g *gpulet) syncNodeConfig(ctx context.Context, s nodeConfigSync) {
	nc := g.nodeConfig
	if s.label != nil {
		if *s.label == nc.label {
			return // the watch's first report, or another field of the Node changed
		}
		nc.label = *s.label
	}
	started := time.Now()
	next, choice, data, err := nc.load()
	if err == nil && choice.Name == nc.applied.Name && bytes.Equal(data, nc.data) {
		if nc.failed != nil { // back to the config serving: nothing failed any more
			nc.failed = nil
			g.reportNodeConfig(ctx, s.why, nil)
		}
		return
	}
	if f := nc.failed; err != nil && f != nil && f.name == choice.Name && bytes.Equal(f.data, data) && f.err.Error() == err.Error() {
		return // the same failure, reported already
	}
	if err == nil {
		err = g.applyNodeConfig(ctx, next)
	}
	if err != nil {
		nc.failed = &nodeConfigFailure{name: choice.Name, data: data, err: err}
		g.exp.ConfigReload(false)
		nc.log.Error("config not applied; the previous one keeps serving", "wanted", choice.String(), "serving", nc.applied.String(), "why", s.why, "err", err)
		g.reportNodeConfig(ctx, s.why, nc.failed)
		return
	}
	prev := nc.applied
	nc.applied, nc.data, nc.failed = choice, data, nil
	g.exp.ConfigReload(true)
	nc.log.Info("config applied", "config", choice.String(), "previous", prev.String(), "reason", choice.Reason, "why", s.why,
		"took", time.Since(started).Round(time.Microsecond), "not_applied_until_restart", nc.notLive)
	g.reportNodeConfig(ctx, s.why, nil)
}

// applyNodeConfig checks next against the node and swaps it in, restarting
// the components it affects; on a failed start the previous settings are
// restored the same way.
func (g *gpulet) applyNodeConfig(ctx context.Context, next *config.Config) error {
	var err error
	done := g.sup.do(ctx, func() {
		old := g.cfg
		notLive := keepNotLive(old, next)
		if err = g.checkNode(next); err != nil {
			return
		}
		restart, inPlace := affected(old, next)
		if err = g.swapConfig(next, restart); err != nil {
			if rerr := g.swapConfig(old, restart); rerr != nil {
				g.log.Error("the previous config could not be restored either; stopping gpulet", "err", rerr)
				g.sup.once.Do(func() { close(g.sup.failed) })
			}
			return
		}
		if inPlace && !restart["device plugin"] && g.plugins != nil {
			g.plugins.SetResources(ResourcesConfig(next))
		}
		g.nodeConfig.notLive = notLive
		g.log.Info("components reconfigured", "component", "nodeconfig", "restarted", sortedKeys(restart), "resources_in_place", inPlace && !restart["device plugin"])
	})
	if done != nil {
		return done
	}
	return err
}

// checkNode applies the checks a component makes at start (MIG layout,
// sharing against the node) before anything is stopped.
func (g *gpulet) checkNode(next *config.Config) error {
	snap := g.store.Snapshot()
	if err := checkMIG(snap.Node, next.MIGStrategy, g.log); err != nil {
		return err
	}
	return checkShares(next, snap, g.log)
}

// swapConfig makes cfg the settings and restarts the components named.
func (g *gpulet) swapConfig(cfg *config.Config, restart map[string]bool) error {
	set, err := g.configSetter(cfg)
	if err != nil {
		return err
	}
	return g.sup.restart(restart, func() []component {
		set()
		return g.components()
	})
}

// affected names the components a change of settings from old to next
// restarts. inPlace says the device plugin's resources changed alone: the
// running device plugin takes them (plugin.Manager.SetResources).
func affected(old, next *config.Config) (restart map[string]bool, inPlace bool) {
	restart = map[string]bool{}
	oldRC, nextRC := ResourcesConfig(old), ResourcesConfig(next)
	inPlace = !reflect.DeepEqual(oldRC, nextRC)
	if inPlace {
		restart["metrics sampler"] = true // it maps the advertised devices back to GPUs
		if oldRC.MPS || nextRC.MPS {
			restart["MPS"] = true
		}
	}
	if !reflect.DeepEqual(LabelOptions(old), LabelOptions(next)) {
		restart["label publisher"] = true
	}
	if old.DisableHealthChecks != next.DisableHealthChecks || old.HealthQuietPeriod != next.HealthQuietPeriod ||
		!reflect.DeepEqual(old.XIDOverrides, next.XIDOverrides) {
		restart["health monitor"] = true
	}
	cdi := func(c *config.Config) []any {
		return []any{c.DeviceListStrategy, c.DeviceIDStrategy, c.CDIDriverCapabilities, c.CDIHooks, c.CDIHookPath}
	}
	if !reflect.DeepEqual(cdi(old), cdi(next)) {
		restart["CDI writer"] = true
	}
	plugin := func(c *config.Config) []any {
		return []any{c.DeviceListStrategy, c.DeviceIDStrategy, c.PassDeviceSpecs, c.SharedDevicesAllocationPolicy, c.TakeOver}
	}
	if restart["MPS"] || restart["CDI writer"] || !reflect.DeepEqual(plugin(old), plugin(next)) {
		restart["device plugin"] = true
	}
	return restart, inPlace
}

// notLive are the settings a running gpulet cannot change: they choose the
// hardware, the sockets and folders it serves on (the pod's mounts), the
// API objects it writes, or its own logging. A config that changes one is
// applied without it; keepNotLive says which, for the log and the Node.
var notLive = []struct {
	name  string
	field func(*config.Config) any // a pointer to the field
}{
	{"backend", func(c *config.Config) any { return &c.Backend }},
	{"sim-profile", func(c *config.Config) any { return &c.SimProfile }},
	{"sim-root", func(c *config.Config) any { return &c.SimRoot }},
	{"nvidia-driver-root", func(c *config.Config) any { return &c.DriverRoot }},
	{"dev-root", func(c *config.Config) any { return &c.DevRoot }},
	{"device-discovery-strategy", func(c *config.Config) any { return &c.DeviceDiscoveryStrategy }},
	{"fail-on-init-error", func(c *config.Config) any { return &c.FailOnInitError }},
	{"device-plugin-path", func(c *config.Config) any { return &c.DevicePluginPath }},
	{"cdi-spec-dir", func(c *config.Config) any { return &c.CDISpecDir }},
	{"mps-root", func(c *config.Config) any { return &c.MPSRoot }},
	{"mps-control", func(c *config.Config) any { return &c.MPSControl }},
	{"metrics-address", func(c *config.Config) any { return &c.MetricsAddress }},
	{"pod-resources-socket", func(c *config.Config) any { return &c.PodResourcesSocket }},
	{"log-format", func(c *config.Config) any { return &c.LogFormat }},
	{"log-level", func(c *config.Config) any { return &c.LogLevel }},
	{"node-labels", func(c *config.Config) any { return &c.Labels.NodeLabels }},
	{"use-node-feature-api", func(c *config.Config) any { return &c.Labels.NodeFeatureAPI }},
	{"dra", func(c *config.Config) any { return &c.DRA }},
}

// keepNotLive sets next's not-live settings to old's and names those that
// differed.
func keepNotLive(old, next *config.Config) []string {
	var changed []string
	for _, s := range notLive {
		o, n := reflect.ValueOf(s.field(old)).Elem(), reflect.ValueOf(s.field(next)).Elem()
		if !reflect.DeepEqual(o.Interface(), n.Interface()) {
			changed = append(changed, s.name)
			n.Set(o)
		}
	}
	return changed
}

// reportNodeConfig says where the config stands: metrics and /readyz, the
// Node's annotations, and an Event when something changed or failed.
func (g *gpulet) reportNodeConfig(ctx context.Context, why string, failed *nodeConfigFailure) {
	nc := g.nodeConfig
	g.exp.ConfigApplied(nc.applied.String())
	state, msg := "applied", "label "+labelValue(nc.label)+"; chosen by "+nc.applied.Reason
	if len(nc.notLive) > 0 {
		msg += "; changed settings that need a gpulet restart: " + strings.Join(nc.notLive, ", ")
	}
	if failed != nil {
		state = "failed"
		msg = fmt.Sprintf("config %s not applied (%s), %s keeps serving: %v", quoteName(failed.name), why, nc.applied.String(), failed.err)
		g.exp.ConfigDegraded(msg)
	} else {
		g.exp.ConfigDegraded("")
	}
	if nc.api == nil {
		return
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := nc.api.Annotate(actx, map[string]string{AnnotationConfig: nc.applied.String(), AnnotationConfigState: state, AnnotationConfigMessage: truncate(msg, 1000)})
	if err != nil {
		nc.log.Warn("cannot write the config state on the Node", "err", err)
	}
	if why == "start" && failed == nil {
		return // not a change
	}
	reason, evMsg := ConfigAppliedReason, "config "+nc.applied.String()+" applied ("+why+"); "+msg
	if failed != nil {
		reason, evMsg = ConfigFailedReason, msg
	}
	if err := nc.api.Event(actx, failed != nil, reason, truncate(evMsg, 1000)); err != nil {
		nc.log.Warn("cannot post the config Event on the Node", "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func labelValue(v string) string {
	if v == "" {
		return "unset"
	}
	return v
}

func quoteName(n string) string {
	if n == "" {
		return "(none chosen)"
	}
	return fmt.Sprintf("%q", n)
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
