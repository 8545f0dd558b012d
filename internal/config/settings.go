package config

//go:generate go test -run ^TestConfigurationDoc$ . -args -update

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Setting is one setting, declared once: its flag, the environment
// variables that set it (NVIDIA's names where NVIDIA has the setting), its
// place in the config file, its default and its help. The flags, the
// environment and file decoding (Resolve) and docs/configuration.md
// (Reference) all come from Settings.
type Setting struct {
	Flag string
	Env  []string
	// File is the setting's place in the config file, dotted
	// (flags.migStrategy); "" when the file has none.
	File    string
	Default string // as the flag shows it; "" for none
	Help    string
	// Group says which commands have the setting (flag sets below).
	Group group

	bind func(c *Config, fs *pflag.FlagSet, s *Setting)
	// fromFile reads the setting from the file when File alone does not
	// say how (a choice between sections, NVIDIA's defaults).
	fromFile func(*File) (string, bool)
}

type group string

// The groups of settings, as the commands take them.
const (
	groupBackend      group = "backend"       // every command that reads GPUs
	groupRun          group = "run"           // gpulet run
	groupCDI          group = "cdi"           // the device plugin's CDI spec (run, doctor)
	groupCDIDriver    group = "cdi-driver"    // the driver part of every CDI spec (run, doctor, cdi generate)
	groupMetrics      group = "metrics"       // run
	groupPodResources group = "pod-resources" // run, list, top
	groupLabels       group = "labels"        // run, labels
	groupLabelsRun    group = "labels-run"    // run: publishing the labels
	groupLabelsFile   group = "labels-file"   // labels: the output file
	groupDRA          group = "dra"           // run
	groupNodeConfig   group = "node-config"   // run: per-node configuration
)

// Settings is every setting of gpulet, in the order of the reference.
var Settings = []*Setting{
	{Flag: "config-file", Env: env("CONFIG_FILE"), Group: groupBackend, bind: text(func(c *Config) *string { return &c.ConfigFile }),
		Help: "config file (NVIDIA device plugin v1 format plus a gpulet section)"},
	{Flag: "backend", Env: env("GPULET_BACKEND"), File: "gpulet.backend", Default: "nvml", Group: groupBackend, bind: text(func(c *Config) *string { return &c.Backend }),
		Help: "hardware backend: nvml (real GPUs), sim (simulated node), auto (nvml if libnvidia-ml is present, else sim); run, doctor and cdi default to nvml, the other commands to auto"},
	{Flag: "sim-profile", Env: env("GPULET_SIM_PROFILE"), File: "gpulet.simProfile", Default: "dgx-h100", Group: groupBackend, bind: text(func(c *Config) *string { return &c.SimProfile }),
		Help: "simulated node: a built-in profile (h200, dgx-h100, dgx1-v100, pcie-4x-l4, ...) or a profile file"},
	{Flag: "sim-root", Env: env("GPULET_SIM_ROOT"), File: "gpulet.simRoot", Group: groupBackend, bind: text(func(c *Config) *string { return &c.SimRoot }),
		Help: "folder for the simulator's device nodes and fault file (default /var/lib/gpulet/sim as root, else under $TMPDIR)"},
	{Flag: "nvidia-driver-root", Env: env("NVIDIA_DRIVER_ROOT"), File: "flags.nvidiaDriverRoot", Default: "/", Group: groupBackend, bind: text(func(c *Config) *string { return &c.DriverRoot }),
		Help: "host root of the NVIDIA driver (/run/nvidia/driver with the GPU operator's driver container); also --driver-root"},
	{Flag: "dev-root", Env: env("NVIDIA_DEV_ROOT"), File: "flags.nvidiaDevRoot", Group: groupBackend, bind: text(func(c *Config) *string { return &c.DevRoot }),
		Help: "host root under which dev/nvidia* are found (default: the driver root); also --nvidia-dev-root"},
	{Flag: "mig-strategy", Env: env("MIG_STRATEGY"), File: "flags.migStrategy", Default: DefaultMIGStrategy, Group: groupBackend, bind: text(func(c *Config) *string { return &c.MIGStrategy }),
		Help: "how MIG devices are advertised: none, single, mixed"},
	{Flag: "resource-name", Env: env("GPULET_RESOURCE_NAME"), File: "gpulet.resourceName", Default: DefaultResourceName, Group: groupBackend, bind: text(func(c *Config) *string { return &c.ResourceName }),
		Help: "extended resource name for whole GPUs"},
	// replicas and shared-resource-name are the command line's way to share
	// every device; the file's sharing section is richer (Config.Sharing).
	{Flag: "replicas", Env: env("GPULET_REPLICAS"), Default: "0", Group: groupBackend, bind: integer(func(c *Config) *int { return &c.Replicas }),
		Help: "time-slicing: share each device between this many containers (0 = off); the file's sharing.timeSlicing is richer"},
	{Flag: "rename-by-default", Env: env("GPULET_RENAME_BY_DEFAULT"), File: "sharing.timeSlicing.renameByDefault, sharing.mps.renameByDefault", Default: "false", Group: groupBackend,
		bind: boolean(func(c *Config) *bool { return &c.RenameByDefault }),
		Help: "advertise time-sliced devices as <resource>.shared",
		fromFile: func(f *File) (string, bool) {
			if r := f.sharing(); r != nil {
				return boolValue(r.RenameByDefault)
			}
			return "", false
		}},
	{Flag: "shared-resource-name", Env: env("GPULET_SHARED_RESOURCE_NAME"), Group: groupBackend, bind: text(func(c *Config) *string { return &c.SharedResourceName }),
		Help: "resource name for time-sliced devices (NVIDIA's timeSlicing rename)"},
	{Flag: "fail-requests-greater-than-one", Env: env("GPULET_FAIL_REQUESTS_GREATER_THAN_ONE"), File: "sharing.timeSlicing.failRequestsGreaterThanOne, sharing.mps.failRequestsGreaterThanOne",
		Default: "false", Group: groupBackend, bind: boolean(func(c *Config) *bool { return &c.FailRequestsGreaterThanOne }),
		Help: "refuse a container asking for more than one time-sliced device (it would get one GPU twice); true by default with MPS sharing, as NVIDIA's",
		fromFile: func(f *File) (string, bool) {
			r := f.sharing()
			if r == nil {
				return "", false
			}
			if r.FailRequestsGreaterThanOne == nil && r == f.Sharing.MPS {
				return "true", true // NVIDIA's default for MPS
			}
			return boolValue(r.FailRequestsGreaterThanOne)
		}},
	{Flag: "device-discovery-strategy", Env: env("DEVICE_DISCOVERY_STRATEGY"), File: "flags.deviceDiscoveryStrategy", Default: "auto", Group: groupBackend,
		bind: text(func(c *Config) *string { return &c.DeviceDiscoveryStrategy }),
		Help: "NVIDIA's discovery strategy: auto or nvml (gpulet uses NVML; tegra is refused)"},
	{Flag: "fail-on-init-error", Env: env("FAIL_ON_INIT_ERROR"), File: "flags.failOnInitError", Default: "true", Group: groupBackend, bind: boolean(func(c *Config) *bool { return &c.FailOnInitError }),
		Help: "exit when no GPU backend can start; false keeps running without GPUs"},
	{Flag: "log-format", Env: env("GPULET_LOG_FORMAT"), File: "gpulet.logFormat", Default: "text", Group: groupBackend, bind: text(func(c *Config) *string { return &c.LogFormat }),
		Help: "log format: text or json"},
	{Flag: "log-level", Env: env("GPULET_LOG_LEVEL"), File: "gpulet.logLevel", Default: "info", Group: groupBackend, bind: text(func(c *Config) *string { return &c.LogLevel }),
		Help: "log level: debug, info, warn, error"},

	{Flag: "device-plugin-path", Env: env("GPULET_DEVICE_PLUGIN_PATH"), File: "gpulet.devicePluginPath", Default: "/var/lib/kubelet/device-plugins/", Group: groupRun,
		bind: text(func(c *Config) *string { return &c.DevicePluginPath }),
		Help: "kubelet device-plugin folder (kubelet.sock and plugin sockets)"},
	{Flag: "take-over", Env: env("GPULET_TAKE_OVER"), File: "gpulet.takeOver", Default: "false", Group: groupRun, bind: boolean(func(c *Config) *bool { return &c.TakeOver }),
		Help: "register the device plugin's resources even while another device plugin (NVIDIA's) serves them, to migrate without losing capacity; by default gpulet holds back and reports the conflict"},
	{Flag: "device-list-strategy", Env: env("DEVICE_LIST_STRATEGY"), File: "flags.plugin.deviceListStrategy", Default: DefaultDeviceListStrategy, Group: groupRun,
		bind: list(func(c *Config) *[]string { return &c.DeviceListStrategy }),
		Help: "how devices reach a container: envvar, volume-mounts, cdi-annotations, cdi-cri (comma-separated)"},
	{Flag: "device-id-strategy", Env: env("DEVICE_ID_STRATEGY"), File: "flags.plugin.deviceIDStrategy", Default: DefaultDeviceIDStrategy, Group: groupRun,
		bind: text(func(c *Config) *string { return &c.DeviceIDStrategy }),
		Help: "how devices are named to the container: uuid or index"},
	{Flag: "shared-devices-allocation-policy", Env: env("SHARED_DEVICES_ALLOCATION_POLICY"), File: "flags.plugin.sharedDevicesAllocationPolicy", Default: DefaultSharedDevicesPolicy, Group: groupRun,
		bind: text(func(c *Config) *string { return &c.SharedDevicesAllocationPolicy }),
		Help: "how time-sliced replicas and MIG instances are placed on their GPUs: distributed (fewest in use first, a request over distinct GPUs) or packed (most in use first)"},
	{Flag: "pass-device-specs", Env: env("PASS_DEVICE_SPECS"), File: "flags.plugin.passDeviceSpecs", Default: "false", Group: groupRun, bind: boolean(func(c *Config) *bool { return &c.PassDeviceSpecs }),
		Help: "also pass /dev/nvidia* device nodes to containers"},
	{Flag: "cdi-spec-dir", Env: env("GPULET_CDI_SPEC_DIR"), File: "gpulet.cdiSpecDir", Default: DefaultCDISpecDir, Group: groupCDI, bind: text(func(c *Config) *string { return &c.CDISpecDir }),
		Help: "folder gpulet writes its CDI spec to with a cdi-* device-list strategy; the container runtime must read it"},
	{Flag: "cdi-driver-capabilities", Env: env("GPULET_CDI_DRIVER_CAPABILITIES"), File: "gpulet.cdiDriverCapabilities", Default: "all", Group: groupCDIDriver,
		bind: text(func(c *Config) *string { return &c.CDIDriverCapabilities }),
		Help: "driver files the CDI specs mount, as NVIDIA_DRIVER_CAPABILITIES names them: all, or some of compute,utility,video,graphics,display,ngx"},
	{Flag: "cdi-hooks", Env: env("GPULET_CDI_HOOKS"), File: "gpulet.cdiHooks", Default: "auto", Group: groupCDIDriver, bind: text(func(c *Config) *string { return &c.CDIHooks }),
		Help: "NVIDIA's hooks in the CDI specs (symlinks, CUDA forward compatibility, ld cache): auto (when the hook binary is on the node), on, off (hook-free bind mounts)"},
	{Flag: "nvidia-cdi-hook-path", Env: env("NVIDIA_CDI_HOOK_PATH", "NVIDIA_CTK_PATH"), File: "flags.plugin.nvidiaCTKPath", Group: groupCDIDriver,
		bind: text(func(c *Config) *string { return &c.CDIHookPath }),
		Help: "host path of nvidia-cdi-hook (or nvidia-ctk) the runtime runs (default: the first of /usr/bin/nvidia-cdi-hook, /usr/local/nvidia/toolkit/nvidia-cdi-hook, /usr/bin/nvidia-ctk found)"},
	{Flag: "mps-root", Env: env("MPS_ROOT"), File: "flags.mpsRoot", Default: DefaultMPSRoot, Group: groupRun, bind: text(func(c *Config) *string { return &c.MPSRoot }),
		Help: "host folder for the MPS control daemons' pipe, log and shm folders (sharing.mps)"},
	{Flag: "mps-control", Env: env("GPULET_MPS_CONTROL"), File: "gpulet.mpsControl", Default: DefaultMPSControl, Group: groupRun, bind: text(func(c *Config) *string { return &c.MPSControl }),
		Help: "nvidia-cuda-mps-control binary gpulet starts one MPS control daemon per shared GPU with"},
	{Flag: "metrics-address", Env: env("GPULET_METRICS_ADDRESS"), File: "gpulet.metricsAddress", Default: DefaultMetricsAddress, Group: groupMetrics,
		bind: text(func(c *Config) *string { return &c.MetricsAddress }),
		Help: "address of /metrics, /healthz and /readyz (dcgm-exporter uses :9400); empty turns them off"},
	{Flag: "pod-resources-socket", Env: env("GPULET_POD_RESOURCES_SOCKET"), File: "gpulet.podResourcesSocket", Default: DefaultPodResourcesSocket, Group: groupPodResources,
		bind: text(func(c *Config) *string { return &c.PodResourcesSocket }),
		Help: "kubelet PodResources socket, to label GPUs with the pod holding them; empty turns it off"},
	{Flag: "disable-health-checks", Env: env("DP_DISABLE_HEALTHCHECKS"), File: "gpulet.health.disable", Group: groupRun, bind: text(func(c *Config) *string { return &c.DisableHealthChecks }),
		Help: `"all" disables health checks; a list of XIDs ignores those XIDs`},
	{Flag: "health-quiet-period", Env: env("GPULET_HEALTH_QUIET_PERIOD"), File: "gpulet.health.quietPeriod", Default: "30s", Group: groupRun,
		bind: duration(func(c *Config) *time.Duration { return &c.HealthQuietPeriod }),
		Help: "how long an unhealthy GPU must stay quiet before it is re-probed and can become healthy again"},
	{Flag: "xid-policy", Env: env("GPULET_XID_POLICY"), File: "gpulet.health.xids", Group: groupRun, bind: mapping(func(c *Config) *map[string]string { return &c.XIDOverrides }),
		Help: "override the XID table: XID=ignore|reset|lost, comma-separated"},

	{Flag: "extra-labels", Env: env("GPULET_EXTRA_LABELS"), File: "gpulet.labels.extra", Group: groupLabels, bind: mapping(func(c *Config) *map[string]string { return &c.Labels.Extra }),
		Help: "static node labels added to GFD's, key=value comma-separated, e.g. accelerator=nvidia"},
	{Flag: "machine-type-file", Env: env("GFD_MACHINE_TYPE_FILE"), File: "flags.gfd.machineTypeFile", Default: DefaultMachineTypeFile, Group: groupLabels,
		bind: text(func(c *Config) *string { return &c.Labels.MachineTypeFile }),
		Help: "file holding the machine type for nvidia.com/gpu.machine"},
	{Flag: "no-timestamp", Env: env("GFD_NO_TIMESTAMP"), File: "flags.gfd.noTimestamp", Default: "false", Group: groupLabels, bind: boolean(func(c *Config) *bool { return &c.Labels.NoTimestamp }),
		Help: "leave out nvidia.com/gfd.timestamp"},
	{Flag: "node-name", Env: env("NODE_NAME"), Group: groupLabels, bind: text(func(c *Config) *string { return &c.Labels.NodeName }),
		Help: "this node's Kubernetes name (the DaemonSet sets NODE_NAME from spec.nodeName)"},
	{Flag: "use-node-feature-api", Env: env("USE_NODE_FEATURE_API"), File: "flags.useNodeFeatureAPI", Default: "false", Group: groupLabels,
		bind: boolean(func(c *Config) *bool { return &c.Labels.NodeFeatureAPI }),
		Help: "publish the labels as an NFD NodeFeature object (nvidia-features-for-<node>) instead of patching the Node"},
	// NAMESPACE is GFD's name for it.
	{Flag: "namespace", Env: env("POD_NAMESPACE", "KUBERNETES_NAMESPACE", "NAMESPACE"), Group: groupLabels, bind: text(func(c *Config) *string { return &c.Labels.Namespace }),
		Help: "namespace of the NodeFeature object (default: the service account's)"},
	{Flag: "output-file", Env: env("GFD_OUTPUT_FILE"), File: "flags.gfd.outputFile", Group: groupLabelsFile, bind: text(func(c *Config) *string { return &c.Labels.OutputFile }),
		Help: "write the labels to this file (atomically) instead of printing them"},
	{Flag: "node-labels", Env: env("GPULET_NODE_LABELS"), File: "gpulet.labels.node", Default: NodeLabelsAuto, Group: groupLabelsRun, bind: text(func(c *Config) *string { return &c.Labels.NodeLabels }),
		Help: "label the Node with GPU labels: auto (when in a pod with NODE_NAME), on, off"},
	{Flag: "pod-name", Env: env("POD_NAME"), Group: groupLabelsRun, bind: text(func(c *Config) *string { return &c.Labels.PodName }),
		Help: "gpulet's pod, to make its DaemonSet the NodeFeature's owner (downward API metadata.name)"},

	{Flag: "dra", Env: env("GPULET_DRA"), File: "gpulet.dra.enabled", Default: "false", Group: groupDRA, bind: boolean(func(c *Config) *bool { return &c.DRA.Enabled }),
		Help: "also serve Dynamic Resource Allocation as driver gpu.nvidia.com (ResourceSlices, claims prepared through CDI)"},
	{Flag: "dra-devices", Env: env("GPULET_DRA_DEVICES"), File: "gpulet.dra.devices", Default: DefaultDRADevices, Group: groupDRA, bind: text(func(c *Config) *string { return &c.DRA.Devices }),
		Help: "with --dra, the GPUs DRA owns: all, or GPU indexes (0,1,4); the device plugin advertises only the others"},
	{Flag: "dra-plugin-dir", Env: env("GPULET_DRA_PLUGIN_DIR"), File: "gpulet.dra.pluginDir", Default: DefaultDRAPluginDir, Group: groupDRA, bind: text(func(c *Config) *string { return &c.DRA.PluginDir }),
		Help: "the DRA plugin's folder: its socket and prepared-claims checkpoint"},
	{Flag: "dra-registrar-dir", Env: env("GPULET_DRA_REGISTRAR_DIR"), File: "gpulet.dra.registrarDir", Default: DefaultDRARegistrarDir, Group: groupDRA,
		bind: text(func(c *Config) *string { return &c.DRA.RegistrarDir }),
		Help: "the kubelet's plugin registration folder"},
	{Flag: "dra-consumable-capacity", Env: env("GPULET_DRA_CONSUMABLE_CAPACITY"), File: "gpulet.dra.consumableCapacity", Default: "false", Group: groupDRA,
		bind: boolean(func(c *Config) *bool { return &c.DRA.ConsumableCapacity }),
		Help: "with --dra, publish whole GPUs shareable by memory (allowMultipleAllocations): claims asking capacity.requests.memory share a GPU while their sum fits; no isolation between them"},
	{Flag: "dra-dynamic-mig", Env: env("GPULET_DRA_DYNAMIC_MIG"), File: "gpulet.dra.dynamicMIG", Group: groupDRA, bind: text(func(c *Config) *string { return &c.DRA.DynamicMIG }),
		Help: "with --dra, the DRA GPUs whose MIG instances are cut on request: all, or GPU indexes (0,1,4); each is published whole and as every MIG placement (partitionable devices, shared counters), and Prepare creates the allocated instance (docs/dra-mig.md); GPUs without MIG stay whole"},
	{Flag: "dra-dynamic-mig-whole-when-idle", Env: env("GPULET_DRA_DYNAMIC_MIG_WHOLE_WHEN_IDLE"), File: "gpulet.dra.dynamicMIGWholeWhenIdle", Default: "true", Group: groupDRA,
		bind: boolean(func(c *Config) *bool { return &c.DRA.DynamicMIGWholeWhenIdle }),
		Help: "with --dra-dynamic-mig, turn MIG mode off when a GPU's last dynamic instance is destroyed (false: leave it on, so the next instance is cut sooner)"},

	// Per-node configuration, with the names of NVIDIA's config-manager.
	{Flag: "config-file-srcdir", Env: env("CONFIG_FILE_SRCDIR"), Group: groupNodeConfig, bind: text(func(c *Config) *string { return &c.NodeConfig.Dir }),
		Help: "folder of named config files (a ConfigMap mounted as a volume, one v1 file per key); the Node's --node-label picks one and a change is applied live, without a restart (docs/node-config.md); excludes --config-file"},
	{Flag: "node-label", Env: env("NODE_LABEL"), Default: DefaultNodeConfigLabel, Group: groupNodeConfig, bind: text(func(c *Config) *string { return &c.NodeConfig.Label }),
		Help: "the Node label whose value names this node's config in --config-file-srcdir"},
	{Flag: "default-config", Env: env("DEFAULT_CONFIG"), Group: groupNodeConfig, bind: text(func(c *Config) *string { return &c.NodeConfig.Default }),
		Help: "the config used while the Node has no --node-label; empty tries --fallback-strategies"},
	{Flag: "fallback-strategies", Env: env("FALLBACK_STRATEGIES"), Default: "named,single", Group: groupNodeConfig, bind: list(func(c *Config) *[]string { return &c.NodeConfig.Fallbacks }),
		Help: "without a label or a default config, tried in order: named (the config called default), single (the only config), empty (no file)"},
}

func env(names ...string) []string { return names }

// usage is the flag's help: Help, then where else the setting comes from.
func (s *Setting) usage() string {
	u := s.Help
	if len(s.Env) > 0 {
		u += " [env " + strings.Join(s.Env, ", ") + "]"
	}
	if s.File != "" {
		u += " [config " + s.File + "]"
	}
	return u
}

// addFlags adds the flags of the settings in groups, in table order.
func (c *Config) addFlags(fs *pflag.FlagSet, groups ...group) {
	fs.SetNormalizeFunc(nvidiaAliases)
	for _, s := range Settings {
		if slices.Contains(groups, s.Group) {
			s.bind(c, fs, s)
		}
	}
}

// The binders: each adds a flag of its type on a field of the Config,
// parsing Default (the table is checked by TestSettingsTable).

func text(field func(*Config) *string) func(*Config, *pflag.FlagSet, *Setting) {
	return func(c *Config, fs *pflag.FlagSet, s *Setting) { fs.StringVar(field(c), s.Flag, s.Default, s.usage()) }
}

func boolean(field func(*Config) *bool) func(*Config, *pflag.FlagSet, *Setting) {
	return func(c *Config, fs *pflag.FlagSet, s *Setting) {
		def, _ := strconv.ParseBool(s.Default)
		fs.BoolVar(field(c), s.Flag, def, s.usage())
	}
}

func integer(field func(*Config) *int) func(*Config, *pflag.FlagSet, *Setting) {
	return func(c *Config, fs *pflag.FlagSet, s *Setting) {
		def, _ := strconv.Atoi(s.Default)
		fs.IntVar(field(c), s.Flag, def, s.usage())
	}
}

func duration(field func(*Config) *time.Duration) func(*Config, *pflag.FlagSet, *Setting) {
	return func(c *Config, fs *pflag.FlagSet, s *Setting) {
		def, _ := time.ParseDuration(s.Default)
		fs.DurationVar(field(c), s.Flag, def, s.usage())
	}
}

func list(field func(*Config) *[]string) func(*Config, *pflag.FlagSet, *Setting) {
	return func(c *Config, fs *pflag.FlagSet, s *Setting) {
		fs.StringSliceVar(field(c), s.Flag, splitList(s.Default), s.usage())
	}
}

func mapping(field func(*Config) *map[string]string) func(*Config, *pflag.FlagSet, *Setting) {
	return func(c *Config, fs *pflag.FlagSet, s *Setting) { fs.StringToStringVar(field(c), s.Flag, nil, s.usage()) }
}

func boolValue(p *bool) (string, bool) {
	if p == nil {
		return "", false
	}
	return strconv.FormatBool(*p), true
}

// fileValue reads the setting from the config file, as its flag would
// take it: a string as is, a list comma-separated, a map as sorted
// key=value pairs.
func (s *Setting) fileValue(f *File, tree map[string]any) (string, bool) {
	if s.fromFile != nil {
		return s.fromFile(f)
	}
	if s.File == "" {
		return "", false
	}
	var v any = tree
	for _, key := range strings.Split(s.File, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		if v, ok = m[key]; !ok || v == nil {
			return "", false
		}
	}
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = fmt.Sprint(e)
		}
		return strings.Join(parts, ","), true
	case map[string]any:
		if len(x) == 0 {
			return "", false
		}
		var parts []string
		for k, e := range x {
			parts = append(parts, k+"="+fmt.Sprint(e))
		}
		sort.Strings(parts)
		return strings.Join(parts, ","), true
	}
	return fmt.Sprint(v), true
}

// tree is the file as nested maps, for fileValue.
func (f *File) tree() (map[string]any, error) {
	b, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return m, nil
}

// Reference is docs/configuration.md: every setting with its flag,
// environment variables, config-file place, default and help, from
// Settings (`go generate ./internal/config` rewrites the file).
func Reference() string {
	var b strings.Builder
	b.WriteString(`# Configuration reference

<!-- Generated from internal/config/settings.go by ` + "`go generate ./internal/config`" + `; do not edit. -->

Every setting of gpulet has a flag, environment variables and, for most, a
place in the config file (` + "`--config-file`" + `: NVIDIA's device plugin v1 format plus a
` + "`gpulet`" + ` section). One precedence applies: flag > environment > file > default.
Where NVIDIA's device plugin or GPU Feature Discovery has the setting, gpulet
reads NVIDIA's names, so an image swap keeps a DaemonSet's configuration.

| Flag | Environment | Config file | Default | Commands | Meaning |
|---|---|---|---|---|---|
`)
	cell := func(s string) string {
		if s == "" {
			return ""
		}
		return "`" + s + "`"
	}
	for _, s := range Settings {
		var env []string
		for _, e := range s.Env {
			env = append(env, cell(e))
		}
		var file []string
		for _, p := range strings.Split(s.File, ", ") {
			if p != "" {
				file = append(file, cell(p))
			}
		}
		fmt.Fprintf(&b, "| `--%s` | %s | %s | %s | %s | %s |\n", s.Flag, strings.Join(env, "<br>"), strings.Join(file, "<br>"),
			cell(s.Default), groupCommands[s.Group], strings.ReplaceAll(s.Help, "|", `\|`))
	}
	return b.String()
}

// groupCommands says which commands take a group's settings.
var groupCommands = map[group]string{
	groupBackend:      "all that read GPUs",
	groupRun:          "run",
	groupCDI:          "run, doctor",
	groupCDIDriver:    "run, doctor, cdi generate",
	groupMetrics:      "run",
	groupPodResources: "run, list, top",
	groupLabels:       "run, labels",
	groupLabelsRun:    "run",
	groupLabelsFile:   "labels",
	groupDRA:          "run",
	groupNodeConfig:   "run",
}
