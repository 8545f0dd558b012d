// Package config owns gpulet's settings: their flags, the environment
// variables that set them (NVIDIA's names where NVIDIA's plugin has the same
// setting, so images can be swapped), the config file (NVIDIA's v1 format
// plus a gpulet section), and one precedence: flag > env > file > default.
// It is a leaf: it imports no other gpulet package, so every layer may read
// it. Checks that need a layer's knowledge (strategies, MIG, XID policy) and
// turning settings into a layer's own config belong to the daemon, which
// wires the layers.
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// Defaults that name another layer's values. They are spelled out because
// config imports no other gpulet package; the daemon's tests check that they
// agree with resources and plugin.
const (
	DefaultResourceName        = "nvidia.com/gpu" // resources.DefaultResourceName
	DefaultMIGStrategy         = "none"           // resources.MIGNone
	DefaultDeviceListStrategy  = "envvar"         // plugin.StrategyEnvvar
	DefaultDeviceIDStrategy    = "uuid"           // plugin.IDStrategyUUID
	DefaultSharedDevicesPolicy = "distributed"    // allocator.PolicyDistributed
	DefaultCDISpecDir          = "/var/run/cdi"   // cdispec.DefaultDir
	DefaultMPSRoot             = "/run/nvidia/mps"
	DefaultMPSControl          = "nvidia-cuda-mps-control" // mps.DefaultControl
)

// Config is every setting of `gpulet run` (and of the commands that share
// its backend settings).
type Config struct {
	ConfigFile string

	Backend    string
	SimProfile string
	SimRoot    string
	DriverRoot string
	DevRoot    string

	DevicePluginPath string
	// TakeOver registers even while another device plugin serves the
	// same resource; by default gpulet holds back and reports it.
	TakeOver           bool
	DeviceListStrategy []string
	DeviceIDStrategy   string
	PassDeviceSpecs    bool
	FailOnInitError    bool
	MIGStrategy        string
	ResourceName       string
	Replicas           int
	RenameByDefault    bool
	// SharedResourceName renames time-sliced devices (NVIDIA's "rename").
	SharedResourceName         string
	FailRequestsGreaterThanOne bool
	// SharedDevicesAllocationPolicy spreads (distributed) or packs (packed)
	// time-sliced replicas and MIG instances over their GPUs.
	SharedDevicesAllocationPolicy string
	// Notes are settings read but not acted on, for the start-up log.
	Notes []string
	// Sharing is the config file's sharing section (time-slicing or MPS
	// per resource). Replicas set on the command line replace it.
	Sharing Sharing
	// MPSRoot holds the MPS control daemons' pipe, log and shm folders.
	MPSRoot string
	// MPSControl is the nvidia-cuda-mps-control binary.
	MPSControl string
	// DeviceDiscoveryStrategy is NVIDIA's setting; gpulet honours auto and nvml.
	DeviceDiscoveryStrategy string

	// CDISpecDir is where `gpulet run` writes its CDI spec (cdi-* strategies).
	CDISpecDir string
	// CDIDriverCapabilities select the driver files of the CDI specs
	// (NVIDIA_DRIVER_CAPABILITIES syntax; default all).
	CDIDriverCapabilities string
	// CDIHooks is auto, on or off: NVIDIA's hooks in the CDI specs.
	CDIHooks string
	// CDIHookPath is NVIDIA's hook binary on the host ("" looks for it).
	CDIHookPath string

	DisableHealthChecks string
	HealthQuietPeriod   time.Duration
	XIDOverrides        map[string]string

	LogFormat string
	LogLevel  string

	Labels LabelConfig // node labels (labels.go)
	// Metrics and probes (package metrics): listen address, empty = off;
	// the kubelet's PodResources socket for pod labels.
	MetricsAddress     string
	PodResourcesSocket string
	DRA                DRAConfig // Dynamic Resource Allocation (dra.go)
	// NodeConfig picks the config file by the Node's label (nodeconfig.go).
	NodeConfig NodeConfigSettings

	// from is what Resolve read, for WithFile; nodeConfigFile is the file
	// WithFile chose from NodeConfig.Dir.
	from           *resolved
	nodeConfigFile string
}

// BackendFlags adds the settings that choose the hardware backend; every
// command that reads GPUs shares them. The daemon defaults to nvml, so a
// node never advertises simulated GPUs unless asked; people's commands
// default to auto.
func (c *Config) BackendFlags(fs *pflag.FlagSet, defaultBackend string) {
	c.addFlags(fs, groupBackend)
	f := fs.Lookup("backend")
	f.DefValue = defaultBackend
	_ = f.Value.Set(defaultBackend)
}

// nvidiaAliases accepts the flag names NVIDIA's plugin also answers to.
func nvidiaAliases(_ *pflag.FlagSet, name string) pflag.NormalizedName {
	switch name {
	case "driver-root":
		name = "nvidia-driver-root"
	case "nvidia-dev-root":
		name = "dev-root"
	}
	return pflag.NormalizedName(name)
}

// RunFlags adds the daemon's settings.
func (c *Config) RunFlags(fs *pflag.FlagSet) {
	c.BackendFlags(fs, "nvml")
	c.addFlags(fs, groupRun, groupCDI, groupCDIDriver, groupMetrics, groupPodResources, groupLabels, groupLabelsRun, groupDRA, groupNodeConfig)
}

// CDIFlags adds the settings of the CDI spec gpulet writes for cdi-*
// device-list strategies (run) and checks (doctor).
func (c *Config) CDIFlags(fs *pflag.FlagSet) { c.addFlags(fs, groupCDI, groupCDIDriver) }

// CDIDriverFlags add the settings of the driver part of every CDI spec
// gpulet makes (the device plugin's, the DRA claims', cdi generate's).
func (c *Config) CDIDriverFlags(fs *pflag.FlagSet) { c.addFlags(fs, groupCDIDriver) }

// Defaults of the metrics settings (metrics.DefaultAddress,
// podresources.DefaultSocket).
const (
	DefaultMetricsAddress     = ":9401"
	DefaultPodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"
)

// MetricsFlags adds the /metrics and probe settings (run) and the pod
// attribution socket (run, list, top).
func (c *Config) MetricsFlags(fs *pflag.FlagSet) { c.addFlags(fs, groupMetrics, groupPodResources) }

// PodResourcesFlag adds the kubelet PodResources socket setting.
func (c *Config) PodResourcesFlag(fs *pflag.FlagSet) { c.addFlags(fs, groupPodResources) }

// Resolve fills settings the command line left unset from the environment,
// then from the config file, and sets c.Notes (settings read but not acted
// on) and c.Sharing. getenv is os.Getenv outside tests.
func (c *Config) Resolve(fs *pflag.FlagSet, getenv func(string) string) error {
	notes, err := resolve(fs, getenv, &c.Sharing)
	c.Notes = notes
	c.from = &resolved{flags: fs, getenv: getenv}
	return err
}

func resolve(fs *pflag.FlagSet, getenv func(string) string, sharing *Sharing) (notes []string, err error) {
	*sharing = Sharing{Strategy: SharingNone}
	path := ""
	if f := fs.Lookup("config-file"); f != nil {
		path = f.Value.String()
		if !f.Changed && getenv("CONFIG_FILE") != "" {
			path = getenv("CONFIG_FILE")
			if err := fs.Set("config-file", path); err != nil {
				return nil, err
			}
		}
	}
	var file *File
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config file: %w", err)
		}
		file, err = ParseFile(data)
		if err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
		for _, n := range file.Notes() {
			notes = append(notes, "config file "+path+": "+n+" is read but not used by gpulet")
		}
		*sharing = file.SharingConfig()
	}
	for _, e := range ignoredEnv {
		if getenv(e) != "" {
			notes = append(notes, "environment variable "+e+" (NVIDIA's) is read but not used by gpulet")
		}
	}
	var tree map[string]any
	if file != nil {
		if tree, err = file.tree(); err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	for _, s := range Settings {
		f := fs.Lookup(s.Flag)
		if f == nil || f.Changed {
			continue
		}
		val, from, ok := "", "", false
		for _, e := range s.Env {
			if v := getenv(e); v != "" {
				val, from, ok = v, "environment variable "+e, true
				break
			}
		}
		if !ok && file != nil {
			if val, ok = s.fileValue(file, tree); ok {
				from = "config file " + path
			}
		}
		if !ok {
			continue
		}
		if sv, isSlice := f.Value.(pflag.SliceValue); isSlice {
			// A slice flag's Set appends; from env or file it replaces.
			err := sv.Replace(splitList(val))
			if err != nil {
				return nil, fmt.Errorf("%s: %s=%q: %w", from, s.Flag, val, err)
			}
			continue
		}
		if err := f.Value.Set(val); err != nil {
			return nil, fmt.Errorf("%s: invalid %s %q: %w", from, s.Flag, val, err)
		}
	}
	return notes, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// ParseFile decodes a config file, refusing unknown fields so a typo is
// reported instead of silently ignored.
func ParseFile(data []byte) (*File, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, err
	}
	if err := f.Check(); err != nil {
		return nil, err
	}
	return &f, nil
}

// Validate checks the settings config itself understands. The daemon's
// Validate adds the checks that need a layer's knowledge.
func (c *Config) Validate() error {
	var errs []error
	switch c.Backend {
	case "auto", "sim", "nvml":
	default:
		errs = append(errs, fmt.Errorf("backend %q is not one of auto, sim, nvml", c.Backend))
	}
	if c.DeviceDiscoveryStrategy != "" {
		if err := CheckDiscoveryStrategy(c.DeviceDiscoveryStrategy); err != nil {
			errs = append(errs, fmt.Errorf("device-discovery-strategy: %w", err))
		}
	}
	if c.Replicas < 0 || c.Replicas > MaxReplicas {
		errs = append(errs, fmt.Errorf("replicas=%d: want 0 (no sharing) up to %d", c.Replicas, MaxReplicas))
	}
	if c.HealthQuietPeriod < 0 {
		errs = append(errs, fmt.Errorf("health-quiet-period must not be negative"))
	}
	if err := c.validateLabels(); err != nil {
		errs = append(errs, err)
	}
	if err := c.validateDRA(); err != nil {
		errs = append(errs, err)
	}
	if err := c.validateNodeConfig(); err != nil {
		errs = append(errs, err)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log-format %q is not one of text, json", c.LogFormat))
	}
	return errors.Join(errs...)
}
