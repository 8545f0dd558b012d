// Package resources turns the inventory into what gpulet advertises: named
// extended resources (nvidia.com/gpu, nvidia.com/mig-1g.10gb, ...) and their
// devices, after MIG strategy and time-slicing are applied. It is pure: the
// same snapshot and config always give the same resources.
package resources

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/gpulet/gpulet/internal/inventory"
)

// DefaultResourceName is NVIDIA's resource name, so pod specs need no change.
const DefaultResourceName = "nvidia.com/gpu"

// MIG strategies, named as NVIDIA's plugin names them.
const (
	MIGNone   = "none"   // whole GPUs only, MIG-enabled ones included; instances are not advertised
	MIGSingle = "single" // every GPU uses one MIG profile; instances are nvidia.com/gpu
	MIGMixed  = "mixed"  // one resource per MIG profile: nvidia.com/mig-<profile> (see MIGResourceName)
)

// Config selects how inventory becomes resources.
type Config struct {
	ResourceName string // whole-GPU resource name; default nvidia.com/gpu
	MIGStrategy  string // none, single or mixed; default none
	// Replicas > 1 shares each device between that many containers
	// (time-slicing): device IDs become <id>::<n>.
	Replicas int
	// RenameByDefault advertises shared devices as <name>.shared.
	RenameByDefault bool
	// SharedName, if set, is the name of the shared resource (NVIDIA's
	// timeSlicing "rename"); it wins over RenameByDefault.
	SharedName string
	// FailRequestsGreaterThanOne refuses a container asking for more than
	// one shared device: it would get replicas of one GPU, not more GPUs.
	FailRequestsGreaterThanOne bool
	// Shares shares named resources, each its own way (the config file's
	// sharing section). Replicas, when > 1, wins and shares every resource.
	Shares []Share
	// MPS shares replicas through an MPS control daemon per GPU instead of
	// time-slicing.
	MPS bool
}

// Validate reports a config error in the user's terms.
func (c Config) Validate() error {
	switch c.MIGStrategy {
	case "", MIGNone, MIGSingle, MIGMixed:
	default:
		return fmt.Errorf("MIG strategy %q is not one of none, single, mixed", c.MIGStrategy)
	}
	if c.Replicas < 0 {
		return fmt.Errorf("time-slicing replicas must be 0 (off) or more, got %d", c.Replicas)
	}
	for _, sh := range c.Shares {
		if sh.Replicas < 2 {
			return fmt.Errorf("sharing %s: replicas must be >= 2, got %d", sh.Name, sh.Replicas)
		}
		if !strings.Contains(sh.Name, "/") || (sh.Rename != "" && !strings.Contains(sh.Rename, "/")) {
			return fmt.Errorf("sharing %s: resource names need a domain, e.g. nvidia.com/gpu", sh.Name)
		}
	}
	if c.MPS && c.MIGStrategy == MIGMixed {
		return fmt.Errorf("MPS sharing is not supported with MIG strategy mixed (as in NVIDIA's plugin); use none or single, or time-slicing")
	}
	for _, n := range []string{c.ResourceName, c.SharedName} {
		if n != "" && !strings.Contains(n, "/") {
			return fmt.Errorf("resource name %q needs a domain, e.g. nvidia.com/gpu", n)
		}
	}
	return nil
}

// Device is one advertised device.
type Device struct {
	ID    string // the device-plugin ID the kubelet sees
	UUID  string // the GPU or MIG instance UUID behind it
	Index string // "3", or "3:1" for the MIG instance at NVML MIG index 1 of GPU 3
	GPU   int    // position of the (parent) GPU in the node's GPU list
	Minor int    // N of /dev/nvidiaN of the (parent) GPU
	// MIG marks a MIG instance; GI and CI are its GPU and compute instance
	// IDs, which name the /dev/nvidia-caps nodes a container needs.
	MIG    bool
	GI, CI int
	NUMA   int // -1 when unknown
	// Replicas is how many ways the device is shared (0: not shared).
	Replicas int
	Healthy  bool
	Reason   string // why it is unhealthy
}

// Resource is one extended resource and its devices, sorted by ID.
type Resource struct {
	Name    string
	Devices []Device
	// DevRoot is the host folder the device nodes live in; ControlDevices
	// lists the node-wide ones that exist there (nvidiactl, nvidia-uvm, ...).
	DevRoot        string
	ControlDevices []string
	// Links is the node's link matrix, indexed by Device.GPU (shared, read-only).
	Links [][]inventory.Link
	// LinksPending: the node's links are still being scanned; Links is
	// nil until an update brings them.
	LinksPending bool
	// MaxPerContainer, if not 0, is the most devices one container may get
	// when any of them is a replica (NVIDIA's failRequestsGreaterThanOne).
	MaxPerContainer int
	// MPS: the replicas are shared through MPS, not time-slicing.
	MPS bool
}

// Equal reports whether two resources advertise the same thing, so an
// unchanged one needs no update (and no new allocator topology).
func (r *Resource) Equal(o *Resource) bool {
	return r.Name == o.Name && r.DevRoot == o.DevRoot && r.MaxPerContainer == o.MaxPerContainer && r.MPS == o.MPS &&
		r.LinksPending == o.LinksPending &&
		slices.Equal(r.Devices, o.Devices) && slices.Equal(r.ControlDevices, o.ControlDevices) &&
		slices.EqualFunc(r.Links, o.Links, slices.Equal)
}

// Device returns the device with that ID.
func (r *Resource) Device(id string) (Device, bool) {
	i := sort.Search(len(r.Devices), func(i int) bool { return r.Devices[i].ID >= id })
	if i < len(r.Devices) && r.Devices[i].ID == id {
		return r.Devices[i], true
	}
	return Device{}, false
}

var controlDevices = []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"}

// Build computes the resources of a snapshot.
func Build(snap inventory.Snapshot, cfg Config) []Resource {
	name := cfg.ResourceName
	if name == "" {
		name = DefaultResourceName
	}
	node := snap.Node
	byName := map[string][]Device{}
	for gi, g := range node.GPUs {
		base := Device{GPU: gi, Minor: g.Minor, NUMA: g.NUMANode}
		gpuHealth := health(snap, g.UUID)
		// As NVIDIA's plugin: with strategy none every GPU is advertised
		// whole, MIG-enabled or not; CheckMIG vets the other strategies.
		if !g.MIGEnabled || cfg.MIGStrategy == "" || cfg.MIGStrategy == MIGNone {
			d := base
			d.UUID, d.Index = g.UUID, strconv.Itoa(g.Index)
			d.Healthy, d.Reason = gpuHealth.Healthy, gpuHealth.Reason
			byName[name] = append(byName[name], d)
			continue
		}
		for _, m := range g.MIGDevices {
			d := base
			d.UUID, d.Index = m.UUID, MIGIndex(g.Index, m.Index)
			d.MIG, d.GI, d.CI = true, m.GI, m.CI
			h := health(snap, m.UUID)
			if !gpuHealth.Healthy {
				h = gpuHealth // a broken parent breaks every instance
			}
			d.Healthy, d.Reason = h.Healthy, h.Reason
			rn := name
			if cfg.MIGStrategy == MIGMixed {
				rn = MIGResourceName(domain(name), m.Profile)
			}
			byName[rn] = append(byName[rn], d)
		}
	}
	var out []Resource
	add := func(rn string, devs []Device, shared bool) {
		limit := 0
		if shared && cfg.FailRequestsGreaterThanOne {
			limit = 1
		}
		if i := slices.IndexFunc(out, func(r Resource) bool { return r.Name == rn }); i >= 0 {
			// Whole devices a share left under the shared name.
			out[i].Devices = append(out[i].Devices, devs...)
			out[i].MaxPerContainer = max(out[i].MaxPerContainer, limit)
			out[i].MPS = out[i].MPS || (shared && cfg.MPS)
			return
		}
		out = append(out, Resource{Name: rn, Devices: devs, DevRoot: node.DevRoot, ControlDevices: existing(node.DevRoot),
			Links: node.Links, LinksPending: node.LinksPending, MaxPerContainer: limit, MPS: shared && cfg.MPS})
	}
	for rn, devs := range byName {
		for i := range devs {
			devs[i].ID = devs[i].UUID
		}
		sh, ok := cfg.share(rn, name)
		if !ok {
			add(rn, devs, false)
			continue
		}
		picked, whole := sh.Devices.pick(devs)
		if len(whole) > 0 {
			add(rn, whole, false)
		}
		if len(picked) > 0 {
			to := rn
			if sh.Rename != "" {
				to = sh.Rename
			}
			add(to, replicate(picked, sh.Replicas), true)
		}
	}
	for i := range out {
		devs := out[i].Devices
		sort.Slice(devs, func(i, j int) bool { return devs[i].ID < devs[j].ID })
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func health(snap inventory.Snapshot, uuid string) inventory.Health {
	if h, ok := snap.Health[uuid]; ok {
		return h
	}
	return inventory.Health{Healthy: true}
}

func domain(name string) string {
	if i := strings.Index(name, "/"); i >= 0 {
		return name[:i]
	}
	return name
}

// ReplicaSep separates a device's UUID from its replica number in shared IDs.
const ReplicaSep = "::"

func replicate(devs []Device, n int) []Device {
	out := make([]Device, 0, len(devs)*n)
	for _, d := range devs {
		for r := 0; r < n; r++ {
			c := d
			c.ID = d.UUID + ReplicaSep + strconv.Itoa(r)
			c.Replicas = n
			out = append(out, c)
		}
	}
	return out
}

func existing(devRoot string) []string {
	var out []string
	for _, c := range controlDevices {
		if _, err := os.Stat(filepath.Join(devRoot, c)); err == nil {
			out = append(out, c)
		}
	}
	return out
}
