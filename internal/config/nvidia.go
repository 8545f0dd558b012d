package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// File is the config file: NVIDIA's v1 layout as its plugin reads it
// (api/config/v1: every field, so its files load unchanged) and gpulet's own
// section. Decoding is strict, so a misspelt field is an error that names
// it; fields gpulet gives no meaning are listed by Notes and logged once.
type File struct {
	Version   string        `json:"version"`
	Flags     fileFlags     `json:"flags"`
	Resources fileResources `json:"resources"`
	Sharing   struct {
		// TimeSlicing and MPS are pointers: NVIDIA refuses a present but
		// empty section ("no resources specified") and treats an absent one
		// as off.
		TimeSlicing *replicated `json:"timeSlicing,omitempty"`
		MPS         *replicated `json:"mps,omitempty"`
	} `json:"sharing"`
	IMEX struct {
		ChannelIDs []int `json:"channelIDs,omitempty"`
		Required   *bool `json:"required,omitempty"`
	} `json:"imex"`
	Gpulet struct {
		Backend          *string `json:"backend,omitempty"`
		SimProfile       *string `json:"simProfile,omitempty"`
		SimRoot          *string `json:"simRoot,omitempty"`
		DevicePluginPath *string `json:"devicePluginPath,omitempty"`
		// TakeOver registers the device plugin's resources even while
		// another plugin serves them (migrations).
		TakeOver   *bool   `json:"takeOver,omitempty"`
		CDISpecDir *string `json:"cdiSpecDir,omitempty"`
		// CDIDriverCapabilities and CDIHooks: --cdi-driver-capabilities, --cdi-hooks.
		CDIDriverCapabilities *string `json:"cdiDriverCapabilities,omitempty"`
		CDIHooks              *string `json:"cdiHooks,omitempty"`
		ResourceName          *string `json:"resourceName,omitempty"`
		// MPSControl is the nvidia-cuda-mps-control binary gpulet runs.
		MPSControl *string `json:"mpsControl,omitempty"`
		Health     struct {
			Disable     *string           `json:"disable,omitempty"`
			QuietPeriod *string           `json:"quietPeriod,omitempty"`
			XIDs        map[string]string `json:"xids,omitempty"`
		} `json:"health"`
		LogFormat *string    `json:"logFormat,omitempty"`
		LogLevel  *string    `json:"logLevel,omitempty"`
		Labels    labelsFile `json:"labels"` // labels.go
		// Metrics and probes.
		MetricsAddress     *string `json:"metricsAddress,omitempty"`
		PodResourcesSocket *string `json:"podResourcesSocket,omitempty"`
		DRA                draFile `json:"dra"` // dra.go
	} `json:"gpulet"`
}

type fileFlags struct {
	MIGStrategy              *string `json:"migStrategy,omitempty"`
	FailOnInitError          *bool   `json:"failOnInitError,omitempty"`
	MPSRoot                  *string `json:"mpsRoot,omitempty"`
	NvidiaDriverRoot         *string `json:"nvidiaDriverRoot,omitempty"`
	NvidiaDevRoot            *string `json:"nvidiaDevRoot,omitempty"`
	GDRCopyEnabled           *bool   `json:"gdrcopyEnabled,omitempty"`
	GDSEnabled               *bool   `json:"gdsEnabled,omitempty"`
	MOFEDEnabled             *bool   `json:"mofedEnabled,omitempty"`
	UseNodeFeatureAPI        *bool   `json:"useNodeFeatureAPI,omitempty"`
	DeviceDiscoveryStrategy  *string `json:"deviceDiscoveryStrategy,omitempty"`
	RestartOnDeviceUnhealthy *bool   `json:"restartOnDeviceUnhealthy,omitempty"` // older NVIDIA releases
	Plugin                   struct {
		PassDeviceSpecs               *bool           `json:"passDeviceSpecs,omitempty"`
		DeviceListStrategy            json.RawMessage `json:"deviceListStrategy,omitempty"` // a string or a list
		DeviceIDStrategy              *string         `json:"deviceIDStrategy,omitempty"`
		CDIAnnotationPrefix           *string         `json:"cdiAnnotationPrefix,omitempty"`
		NvidiaCTKPath                 *string         `json:"nvidiaCTKPath,omitempty"`
		ContainerDriverRoot           *string         `json:"containerDriverRoot,omitempty"`
		SharedDevicesAllocationPolicy *string         `json:"sharedDevicesAllocationPolicy,omitempty"`
	} `json:"plugin"`
	// GFD is GPU Feature Discovery's part of the shared file.
	GFD *gfdFlags `json:"gfd,omitempty"` // labels.go
}

type fileResources struct {
	GPUs []renamePattern `json:"gpus,omitempty"`
	MIG  []renamePattern `json:"mig,omitempty"`
}

type renamePattern struct {
	Pattern string `json:"pattern"`
	Name    string `json:"name"`
}

// replicated is NVIDIA's ReplicatedResources (sharing.timeSlicing and
// sharing.mps).
type replicated struct {
	RenameByDefault            *bool                `json:"renameByDefault,omitempty"`
	FailRequestsGreaterThanOne *bool                `json:"failRequestsGreaterThanOne,omitempty"`
	Resources                  []replicatedResource `json:"resources"`
}

type replicatedResource struct {
	Name     string          `json:"name"`
	Rename   string          `json:"rename,omitempty"`
	Devices  json.RawMessage `json:"devices,omitempty"`
	Replicas *int            `json:"replicas"`
}

// Sharing strategies, named as NVIDIA names them.
const (
	SharingNone        = "none"
	SharingTimeSlicing = "time-slicing"
	SharingMPS         = "mps"
)

// Sharing is the file's sharing section, checked and normalised.
type Sharing struct {
	Strategy  string // SharingNone, SharingTimeSlicing or SharingMPS
	Resources []SharedResource
}

// SharedResource is one replicated resource.
type SharedResource struct {
	Name     string // fully qualified (nvidia.com/ added as NVIDIA adds it)
	Rename   string // "" keeps Name (renameByDefault fills <name>.shared)
	Replicas int
	Devices  SharedDevices
}

// SharedDevices picks the devices of a resource to replicate: all of them,
// the first Count, or those List names (indexes "0", "0:1", or UUIDs).
type SharedDevices struct {
	All   bool
	Count int
	List  []string
}

// String writes the selection as the config file spells it.
func (d SharedDevices) String() string {
	switch {
	case d.Count > 0:
		return strconv.Itoa(d.Count)
	case len(d.List) > 0:
		return "[" + strings.Join(d.List, ",") + "]"
	}
	return "all"
}

// sharing returns the section NVIDIA's plugin uses: mps when present,
// otherwise timeSlicing.
func (f *File) sharing() *replicated {
	if f.Sharing.MPS != nil {
		return f.Sharing.MPS
	}
	return f.Sharing.TimeSlicing
}

// SharingConfig normalises the file's sharing section (ParseFile has checked it).
func (f *File) SharingConfig() Sharing {
	r := f.sharing()
	if r == nil {
		return Sharing{Strategy: SharingNone}
	}
	s := Sharing{Strategy: SharingTimeSlicing}
	if r == f.Sharing.MPS {
		s.Strategy = SharingMPS
	}
	for _, e := range r.Resources {
		sr := SharedResource{Name: qualify(e.Name), Replicas: *e.Replicas}
		if e.Rename != "" {
			sr.Rename = qualify(e.Rename)
		} else if r.RenameByDefault != nil && *r.RenameByDefault {
			sr.Rename = sr.Name + ".shared"
		}
		sr.Devices, _ = parseDevices(e.Devices)
		s.Resources = append(s.Resources, sr)
	}
	return s
}

// qualify prefixes nvidia.com/ to a bare name, as NVIDIA's NewResourceName.
func qualify(n string) string {
	if !strings.HasPrefix(n, "nvidia.com/") {
		return "nvidia.com/" + n
	}
	return n
}

var dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// checkName validates a resource name by NVIDIA's rules.
func checkName(n string) error {
	if n == "" {
		return errors.New("no resource name specified")
	}
	q := qualify(n)
	if len(q) > 63 {
		return fmt.Errorf("resource name %q: a fully-qualified name must be 63 characters or less", q)
	}
	if name := q[len("nvidia.com/"):]; !dnsSubdomain.MatchString(name) {
		return fmt.Errorf("resource name %q: %q must be lower-case letters, digits, '-' and '.'", q, name)
	}
	return nil
}

var (
	gpuUUID = regexp.MustCompile(`^GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	migUUID = regexp.MustCompile(`^MIG-([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|GPU-[0-9a-fA-F-]{36}/[0-9]+/[0-9]+)$`)
	gpuIdx  = regexp.MustCompile(`^[0-9]+$`)
	migIdx  = regexp.MustCompile(`^[0-9]+:[0-9]+$`)
)

// parseDevices reads "devices": "all", a count > 0, or a list of GPU or MIG
// indexes and UUIDs. Absent means all.
func parseDevices(raw json.RawMessage) (SharedDevices, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return SharedDevices{All: true}, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s != "all" {
			return SharedDevices{}, fmt.Errorf("devices %q: the only word allowed is \"all\" (or give a count or a list)", s)
		}
		return SharedDevices{All: true}, nil
	}
	var n int
	if json.Unmarshal(raw, &n) == nil {
		if n <= 0 {
			return SharedDevices{}, fmt.Errorf("devices %d: a count of devices must be > 0", n)
		}
		return SharedDevices{Count: n}, nil
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) != nil {
		return SharedDevices{}, fmt.Errorf("devices %s: want \"all\", a count, or a list of indexes or UUIDs", raw)
	}
	out := SharedDevices{List: []string{}}
	for _, item := range list {
		var idx uint64
		if json.Unmarshal(item, &idx) == nil {
			out.List = append(out.List, strconv.FormatUint(idx, 10))
			continue
		}
		var ref string
		if json.Unmarshal(item, &ref) == nil &&
			(gpuIdx.MatchString(ref) || migIdx.MatchString(ref) || gpuUUID.MatchString(ref) || migUUID.MatchString(ref)) {
			out.List = append(out.List, ref)
			continue
		}
		return SharedDevices{}, fmt.Errorf("devices: %s is not a GPU index (0), MIG index (0:1), GPU-<uuid> or MIG-<uuid>", item)
	}
	if len(out.List) == 0 {
		return SharedDevices{}, errors.New("devices: the list is empty; omit devices (all) or name at least one")
	}
	return out, nil
}

// check applies NVIDIA's rules to a sharing section.
func (r *replicated) check(section string) error {
	if len(r.Resources) == 0 {
		return fmt.Errorf("%s: no resources specified", section)
	}
	seen := map[string]bool{}
	for i, e := range r.Resources {
		where := fmt.Sprintf("%s.resources[%d]", section, i)
		if err := checkName(e.Name); err != nil {
			return fmt.Errorf("%s.name: %w", where, err)
		}
		if seen[qualify(e.Name)] {
			return fmt.Errorf("%s: %s is listed twice", where, qualify(e.Name))
		}
		seen[qualify(e.Name)] = true
		if e.Rename != "" {
			if err := checkName(e.Rename); err != nil {
				return fmt.Errorf("%s.rename: %w", where, err)
			}
		}
		if e.Replicas == nil {
			return fmt.Errorf("%s: no replicas specified", where)
		}
		if *e.Replicas < 2 {
			return fmt.Errorf("%s.replicas=%d: the number of replicas must be >= 2", where, *e.Replicas)
		}
		if *e.Replicas > MaxReplicas {
			return fmt.Errorf("%s.replicas=%d: the number of replicas must be <= %d", where, *e.Replicas, MaxReplicas)
		}
		if _, err := parseDevices(e.Devices); err != nil {
			return fmt.Errorf("%s.%w", where, err)
		}
	}
	return nil
}

// MaxReplicas bounds sharing replicas: gpulet, the kubelet and the
// scheduler keep one device entry per GPU and replica, so one config line
// must not be able to ask for millions. 1024 containers a GPU is far past
// any real time-slicing or MPS use.
const MaxReplicas = 1024

// Check applies NVIDIA's validation to the file, and refuses what gpulet
// cannot honour where a pod would silently get something else.
func (f *File) Check() error {
	if f.Version != "" && f.Version != "v1" {
		return fmt.Errorf("version %q is not supported (want v1)", f.Version)
	}
	for _, part := range []struct {
		name string
		pats []renamePattern
	}{{"resources.gpus", f.Resources.GPUs}, {"resources.mig", f.Resources.MIG}} {
		for i, p := range part.pats {
			if p.Pattern == "" {
				return fmt.Errorf("%s[%d]: resources must have a 'pattern' field set", part.name, i)
			}
			if err := checkName(p.Name); err != nil {
				return fmt.Errorf("%s[%d].name: %w", part.name, i, err)
			}
		}
	}
	if r := f.Sharing.TimeSlicing; r != nil {
		if err := r.check("sharing.timeSlicing"); err != nil {
			return err
		}
	}
	if r := f.Sharing.MPS; r != nil {
		if err := r.check("sharing.mps"); err != nil {
			return err
		}
	}
	if s := f.Flags.DeviceDiscoveryStrategy; s != nil {
		if err := CheckDiscoveryStrategy(*s); err != nil {
			return fmt.Errorf("flags.deviceDiscoveryStrategy: %w", err)
		}
	}
	if ids := f.IMEX.ChannelIDs; len(ids) > 1 || (len(ids) == 1 && ids[0] != 0) {
		return fmt.Errorf("imex.channelIDs must be [] or [0]; found %v", ids)
	}
	if f.Flags.GFD != nil && f.Flags.GFD.SleepInterval != nil {
		if _, err := time.ParseDuration(*f.Flags.GFD.SleepInterval); err != nil {
			return fmt.Errorf("flags.gfd.sleepInterval: %w", err)
		}
	}
	return nil
}

// CheckDiscoveryStrategy accepts NVIDIA's values gpulet can honour.
func CheckDiscoveryStrategy(s string) error {
	switch s {
	case "auto", "nvml":
		return nil
	case "tegra":
		return errors.New(`"tegra": gpulet discovers GPUs through NVML only; use auto or nvml`)
	}
	return fmt.Errorf("%q is not one of auto, nvml, tegra", s)
}

// Notes lists the fields that were read but do not change what gpulet
// does, each named once.
func (f *File) Notes() []string {
	var out []string
	note := func(set bool, what string) {
		if set {
			out = append(out, what)
		}
	}
	fl := f.Flags
	note(fl.RestartOnDeviceUnhealthy != nil, "flags.restartOnDeviceUnhealthy (gpulet recovers GPUs in place instead)")
	// false is what gpulet does anyway; only true asks for something.
	note(fl.GDRCopyEnabled != nil && *fl.GDRCopyEnabled, "flags.gdrcopyEnabled")
	note(fl.GDSEnabled != nil && *fl.GDSEnabled, "flags.gdsEnabled")
	note(fl.MOFEDEnabled != nil && *fl.MOFEDEnabled, "flags.mofedEnabled")
	out = append(out, f.gfdNotes()...) // labels.go: the gfd fields gpulet does not act on
	note(fl.Plugin.CDIAnnotationPrefix != nil, "flags.plugin.cdiAnnotationPrefix (gpulet uses cdi.k8s.io/)")
	note(fl.Plugin.ContainerDriverRoot != nil, "flags.plugin.containerDriverRoot")
	note(len(f.IMEX.ChannelIDs) > 0 || f.IMEX.Required != nil, "imex (gpulet injects no IMEX channels)")
	note(len(f.Resources.GPUs) > 0, "resources.gpus (ignored, as NVIDIA's plugin ignores it: GPUs keep --resource-name)")
	note(len(f.Resources.MIG) > 0, "resources.mig (ignored, as NVIDIA's plugin ignores it: MIG devices keep their mig-<profile> names)")
	note(f.Sharing.MPS != nil && f.Sharing.TimeSlicing != nil, "sharing.timeSlicing (ignored: sharing.mps is set and wins, as in NVIDIA's plugin)")
	return out
}

// ignoredEnv are NVIDIA's environment variables that gpulet gives no
// meaning; one set is named in a start-up warning.
var ignoredEnv = []string{
	"GDRCOPY_ENABLED", "GDS_ENABLED", "MOFED_ENABLED", "CDI_ANNOTATION_PREFIX",
	"DRIVER_ROOT_CTR_PATH", "CONTAINER_DRIVER_ROOT",
	"IMEX_CHANNEL_IDS", "IMEX_REQUIRED", "KUBELET_SOCKET", "CDI_FEATURE_FLAGS", "CDI_DISABLE_HOOKS",
}
