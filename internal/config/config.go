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
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
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
}

// setting ties a flag to its environment variables and its place in the
// config file.
type setting struct {
	flag string
	env  []string
	file func(*File) (string, bool)
}

func str(p *string) (string, bool) {
	if p == nil {
		return "", false
	}
	return *p, true
}

func boolean(p *bool) (string, bool) {
	if p == nil {
		return "", false
	}
	return strconv.FormatBool(*p), true
}

var settings = []setting{
	{"backend", []string{"GPULET_BACKEND"}, func(f *File) (string, bool) { return str(f.Gpulet.Backend) }},
	{"sim-profile", []string{"GPULET_SIM_PROFILE"}, func(f *File) (string, bool) { return str(f.Gpulet.SimProfile) }},
	{"sim-root", []string{"GPULET_SIM_ROOT"}, func(f *File) (string, bool) { return str(f.Gpulet.SimRoot) }},
	{"nvidia-driver-root", []string{"NVIDIA_DRIVER_ROOT"}, func(f *File) (string, bool) { return str(f.Flags.NvidiaDriverRoot) }},
	{"dev-root", []string{"NVIDIA_DEV_ROOT"}, func(f *File) (string, bool) { return str(f.Flags.NvidiaDevRoot) }},
	{"device-plugin-path", []string{"GPULET_DEVICE_PLUGIN_PATH"}, func(f *File) (string, bool) { return str(f.Gpulet.DevicePluginPath) }},
	{"take-over", []string{"GPULET_TAKE_OVER"}, func(f *File) (string, bool) { return boolean(f.Gpulet.TakeOver) }},
	{"device-list-strategy", []string{"DEVICE_LIST_STRATEGY"}, func(f *File) (string, bool) {
		return listValue(f.Flags.Plugin.DeviceListStrategy)
	}},
	{"cdi-spec-dir", []string{"GPULET_CDI_SPEC_DIR"}, func(f *File) (string, bool) { return str(f.Gpulet.CDISpecDir) }},
	{"cdi-driver-capabilities", []string{"GPULET_CDI_DRIVER_CAPABILITIES"}, func(f *File) (string, bool) { return str(f.Gpulet.CDIDriverCapabilities) }},
	{"cdi-hooks", []string{"GPULET_CDI_HOOKS"}, func(f *File) (string, bool) { return str(f.Gpulet.CDIHooks) }},
	{"nvidia-cdi-hook-path", []string{"NVIDIA_CDI_HOOK_PATH", "NVIDIA_CTK_PATH"}, func(f *File) (string, bool) { return str(f.Flags.Plugin.NvidiaCTKPath) }},
	{"device-id-strategy", []string{"DEVICE_ID_STRATEGY"}, func(f *File) (string, bool) { return str(f.Flags.Plugin.DeviceIDStrategy) }},
	{"shared-devices-allocation-policy", []string{"SHARED_DEVICES_ALLOCATION_POLICY"}, func(f *File) (string, bool) {
		return str(f.Flags.Plugin.SharedDevicesAllocationPolicy)
	}},
	{"pass-device-specs", []string{"PASS_DEVICE_SPECS"}, func(f *File) (string, bool) { return boolean(f.Flags.Plugin.PassDeviceSpecs) }},
	{"fail-on-init-error", []string{"FAIL_ON_INIT_ERROR"}, func(f *File) (string, bool) { return boolean(f.Flags.FailOnInitError) }},
	{"mig-strategy", []string{"MIG_STRATEGY"}, func(f *File) (string, bool) { return str(f.Flags.MIGStrategy) }},
	{"resource-name", []string{"GPULET_RESOURCE_NAME"}, func(f *File) (string, bool) { return str(f.Gpulet.ResourceName) }},
	// replicas and shared-resource-name are the command line's way to share
	// every device; the file's sharing section is richer (Config.Sharing).
	{"replicas", []string{"GPULET_REPLICAS"}, func(*File) (string, bool) { return "", false }},
	{"rename-by-default", []string{"GPULET_RENAME_BY_DEFAULT"}, func(f *File) (string, bool) {
		if r := f.sharing(); r != nil {
			return boolean(r.RenameByDefault)
		}
		return "", false
	}},
	{"shared-resource-name", []string{"GPULET_SHARED_RESOURCE_NAME"}, func(*File) (string, bool) { return "", false }},
	{"fail-requests-greater-than-one", []string{"GPULET_FAIL_REQUESTS_GREATER_THAN_ONE"}, func(f *File) (string, bool) {
		r := f.sharing()
		if r == nil {
			return "", false
		}
		if r.FailRequestsGreaterThanOne == nil && r == f.Sharing.MPS {
			return "true", true // NVIDIA's default for MPS
		}
		return boolean(r.FailRequestsGreaterThanOne)
	}},
	{"mps-root", []string{"MPS_ROOT"}, func(f *File) (string, bool) { return str(f.Flags.MPSRoot) }},
	{"mps-control", []string{"GPULET_MPS_CONTROL"}, func(f *File) (string, bool) { return str(f.Gpulet.MPSControl) }},
	{"device-discovery-strategy", []string{"DEVICE_DISCOVERY_STRATEGY"}, func(f *File) (string, bool) {
		return str(f.Flags.DeviceDiscoveryStrategy)
	}},
	{"disable-health-checks", []string{"DP_DISABLE_HEALTHCHECKS"}, func(f *File) (string, bool) { return str(f.Gpulet.Health.Disable) }},
	{"health-quiet-period", []string{"GPULET_HEALTH_QUIET_PERIOD"}, func(f *File) (string, bool) { return str(f.Gpulet.Health.QuietPeriod) }},
	{"xid-policy", []string{"GPULET_XID_POLICY"}, func(f *File) (string, bool) {
		if len(f.Gpulet.Health.XIDs) == 0 {
			return "", false
		}
		var parts []string
		for k, v := range f.Gpulet.Health.XIDs {
			parts = append(parts, k+"="+v)
		}
		return strings.Join(parts, ","), true
	}},
	{"log-format", []string{"GPULET_LOG_FORMAT"}, func(f *File) (string, bool) { return str(f.Gpulet.LogFormat) }},
	{"log-level", []string{"GPULET_LOG_LEVEL"}, func(f *File) (string, bool) { return str(f.Gpulet.LogLevel) }},
	// Metrics and probes.
	{"metrics-address", []string{"GPULET_METRICS_ADDRESS"}, func(f *File) (string, bool) { return str(f.Gpulet.MetricsAddress) }},
	{"pod-resources-socket", []string{"GPULET_POD_RESOURCES_SOCKET"}, func(f *File) (string, bool) { return str(f.Gpulet.PodResourcesSocket) }},
}

// listValue reads a strategy list given as one string or a list of strings.
func listValue(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 {
		return "", false
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return one, true
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err == nil {
		return strings.Join(many, ","), true
	}
	return string(raw), true // the flag parser reports it
}

// BackendFlags adds the settings that choose the hardware backend; every
// command that reads GPUs shares them. The daemon defaults to nvml, so a
// node never advertises simulated GPUs unless asked; people's commands
// default to auto.
func (c *Config) BackendFlags(fs *pflag.FlagSet, defaultBackend string) {
	fs.SetNormalizeFunc(nvidiaAliases)
	fs.StringVar(&c.ConfigFile, "config-file", "", "config file (NVIDIA device plugin v1 format plus a gpulet section) [env CONFIG_FILE]")
	fs.StringVar(&c.Backend, "backend", defaultBackend, "hardware backend: nvml (real GPUs), sim (simulated node), auto (nvml if libnvidia-ml is present, else sim) [env GPULET_BACKEND]")
	fs.StringVar(&c.SimProfile, "sim-profile", "dgx-h100", "simulated node: a built-in profile (h200, dgx-h100, dgx1-v100, pcie-4x-l4, ...) or a profile file [env GPULET_SIM_PROFILE]")
	fs.StringVar(&c.SimRoot, "sim-root", "", "folder for the simulator's device nodes and fault file (default /var/lib/gpulet/sim as root, else under $TMPDIR) [env GPULET_SIM_ROOT]")
	fs.StringVar(&c.DriverRoot, "nvidia-driver-root", "/", "host root of the NVIDIA driver (/run/nvidia/driver with the GPU operator's driver container) [env NVIDIA_DRIVER_ROOT]")
	fs.StringVar(&c.DevRoot, "dev-root", "", "host root under which dev/nvidia* are found (default: the driver root) [env NVIDIA_DEV_ROOT]")
	fs.StringVar(&c.MIGStrategy, "mig-strategy", DefaultMIGStrategy, "how MIG devices are advertised: none, single, mixed [env MIG_STRATEGY]")
	fs.StringVar(&c.ResourceName, "resource-name", DefaultResourceName, "extended resource name for whole GPUs [env GPULET_RESOURCE_NAME]")
	fs.IntVar(&c.Replicas, "replicas", 0, "time-slicing: share each device between this many containers (0 = off) [config sharing.timeSlicing]")
	fs.BoolVar(&c.RenameByDefault, "rename-by-default", false, "advertise time-sliced devices as <resource>.shared [env GPULET_RENAME_BY_DEFAULT]")
	fs.StringVar(&c.SharedResourceName, "shared-resource-name", "", "resource name for time-sliced devices (NVIDIA's timeSlicing rename) [env GPULET_SHARED_RESOURCE_NAME]")
	fs.BoolVar(&c.FailRequestsGreaterThanOne, "fail-requests-greater-than-one", false, "refuse a container asking for more than one time-sliced device (it would get one GPU twice) [env GPULET_FAIL_REQUESTS_GREATER_THAN_ONE]")
	fs.StringVar(&c.DeviceDiscoveryStrategy, "device-discovery-strategy", "auto", "NVIDIA's discovery strategy: auto or nvml (gpulet uses NVML; tegra is refused) [env DEVICE_DISCOVERY_STRATEGY]")
	fs.BoolVar(&c.FailOnInitError, "fail-on-init-error", true, "exit when no GPU backend can start; false keeps running without GPUs [env FAIL_ON_INIT_ERROR]")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json [env GPULET_LOG_FORMAT]")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error [env GPULET_LOG_LEVEL]")
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
	fs.StringVar(&c.DevicePluginPath, "device-plugin-path", "/var/lib/kubelet/device-plugins/", "kubelet device-plugin folder (kubelet.sock and plugin sockets) [env GPULET_DEVICE_PLUGIN_PATH]")
	fs.BoolVar(&c.TakeOver, "take-over", false, "register the device plugin's resources even while another device plugin (NVIDIA's) serves them, to migrate without losing capacity; by default gpulet holds back and reports the conflict [env GPULET_TAKE_OVER] [config gpulet.takeOver]")
	fs.StringSliceVar(&c.DeviceListStrategy, "device-list-strategy", []string{DefaultDeviceListStrategy}, "how devices reach a container: envvar, volume-mounts, cdi-annotations, cdi-cri (comma-separated) [env DEVICE_LIST_STRATEGY]")
	fs.StringVar(&c.DeviceIDStrategy, "device-id-strategy", DefaultDeviceIDStrategy, "how devices are named to the container: uuid or index [env DEVICE_ID_STRATEGY]")
	fs.StringVar(&c.SharedDevicesAllocationPolicy, "shared-devices-allocation-policy", DefaultSharedDevicesPolicy, "how time-sliced replicas and MIG instances are placed on their GPUs: distributed (fewest in use first, a request over distinct GPUs) or packed (most in use first) [env SHARED_DEVICES_ALLOCATION_POLICY]")
	fs.BoolVar(&c.PassDeviceSpecs, "pass-device-specs", false, "also pass /dev/nvidia* device nodes to containers [env PASS_DEVICE_SPECS]")
	c.CDIFlags(fs)
	fs.StringVar(&c.MPSRoot, "mps-root", DefaultMPSRoot, "host folder for the MPS control daemons' pipe, log and shm folders (sharing.mps) [env MPS_ROOT]")
	fs.StringVar(&c.MPSControl, "mps-control", DefaultMPSControl, "nvidia-cuda-mps-control binary gpulet starts one MPS control daemon per shared GPU with [env GPULET_MPS_CONTROL]")
	c.MetricsFlags(fs)
	fs.StringVar(&c.DisableHealthChecks, "disable-health-checks", "", "\"all\" disables health checks; a list of XIDs ignores those XIDs [env DP_DISABLE_HEALTHCHECKS]")
	fs.DurationVar(&c.HealthQuietPeriod, "health-quiet-period", 30*time.Second, "how long an unhealthy GPU must stay quiet before it is re-probed and can become healthy again [env GPULET_HEALTH_QUIET_PERIOD]")
	fs.StringToStringVar(&c.XIDOverrides, "xid-policy", nil, "override the XID table: XID=ignore|reset|lost, comma-separated [env GPULET_XID_POLICY]")
	c.LabelFlags(fs, true)
	c.DRAFlags(fs)
}

// CDIFlags adds the settings of the CDI spec gpulet writes for cdi-*
// device-list strategies (run) and checks (doctor).
func (c *Config) CDIFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.CDISpecDir, "cdi-spec-dir", DefaultCDISpecDir, "folder gpulet writes its CDI spec to with a cdi-* device-list strategy; the container runtime must read it [env GPULET_CDI_SPEC_DIR]")
	c.CDIDriverFlags(fs)
}

// CDIDriverFlags add the settings of the driver part of every CDI spec
// gpulet makes (the device plugin's, the DRA claims', cdi generate's).
func (c *Config) CDIDriverFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.CDIDriverCapabilities, "cdi-driver-capabilities", "all", "driver files the CDI specs mount, as NVIDIA_DRIVER_CAPABILITIES names them: all, or some of compute,utility,video,graphics,display,ngx [env GPULET_CDI_DRIVER_CAPABILITIES]")
	fs.StringVar(&c.CDIHooks, "cdi-hooks", "auto", "NVIDIA's hooks in the CDI specs (symlinks, CUDA forward compatibility, ld cache): auto (when the hook binary is on the node), on, off (hook-free bind mounts) [env GPULET_CDI_HOOKS]")
	fs.StringVar(&c.CDIHookPath, "nvidia-cdi-hook-path", "", "host path of nvidia-cdi-hook (or nvidia-ctk) the runtime runs (default: the first of /usr/bin/nvidia-cdi-hook, /usr/local/nvidia/toolkit/nvidia-cdi-hook, /usr/bin/nvidia-ctk found) [env NVIDIA_CDI_HOOK_PATH]")
}

// Defaults of the metrics settings (metrics.DefaultAddress,
// podresources.DefaultSocket).
const (
	DefaultMetricsAddress     = ":9401"
	DefaultPodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"
)

// MetricsFlags adds the /metrics and probe settings (run) and the pod
// attribution socket (run, list, top).
func (c *Config) MetricsFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.MetricsAddress, "metrics-address", DefaultMetricsAddress, "address of /metrics, /healthz and /readyz (dcgm-exporter uses :9400); empty turns them off [env GPULET_METRICS_ADDRESS]")
	c.PodResourcesFlag(fs)
}

// PodResourcesFlag adds the kubelet PodResources socket setting.
func (c *Config) PodResourcesFlag(fs *pflag.FlagSet) {
	fs.StringVar(&c.PodResourcesSocket, "pod-resources-socket", DefaultPodResourcesSocket, "kubelet PodResources socket, to label GPUs with the pod holding them; empty turns it off [env GPULET_POD_RESOURCES_SOCKET]")
}

// Resolve fills settings the command line left unset from the environment,
// then from the config file, and sets c.Notes (settings read but not acted
// on) and c.Sharing. getenv is os.Getenv outside tests.
func (c *Config) Resolve(fs *pflag.FlagSet, getenv func(string) string) error {
	notes, err := resolve(fs, getenv, &c.Sharing)
	c.Notes = notes
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
	for _, s := range settings {
		f := fs.Lookup(s.flag)
		if f == nil || f.Changed {
			continue
		}
		val, from, ok := "", "", false
		for _, e := range s.env {
			if v := getenv(e); v != "" {
				val, from, ok = v, "environment variable "+e, true
				break
			}
		}
		if !ok && file != nil {
			if val, ok = s.file(file); ok {
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
				return nil, fmt.Errorf("%s: %s=%q: %w", from, s.flag, val, err)
			}
			continue
		}
		if err := f.Value.Set(val); err != nil {
			return nil, fmt.Errorf("%s: invalid %s %q: %w", from, s.flag, val, err)
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
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log-format %q is not one of text, json", c.LogFormat))
	}
	return errors.Join(errs...)
}
