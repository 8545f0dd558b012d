// Package cdispec owns gpulet's Container Device Interface specs: building
// the spec of a node's GPUs and MIG instances from the inventory, checking it
// with the CDI library, and writing it atomically where container runtimes
// read specs. `gpulet run` writes the spec its allocations name; `gpulet cdi
// generate` writes NVIDIA's nvidia.com/gpu spec for nodes without the
// container toolkit. Both use Build, so both name devices alike.
package cdispec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/inventory"
)

const (
	// PluginKind is the kind of the names NVIDIA's device plugin hands out
	// and of the spec it writes; gpulet uses the same, so a node can switch
	// between the two without stale names. MIG instances are in it too:
	// NVIDIA's plugin names them in the gpu class, not a class of their own.
	PluginKind = "k8s.device-plugin.nvidia.com/gpu"
	// ToolkitKind is the kind `nvidia-ctk cdi generate` writes.
	ToolkitKind = "nvidia.com/gpu"
	// DefaultDir is the CDI dynamic spec folder runtimes read by default.
	DefaultDir = "/var/run/cdi"
	// AllDevice is the name of the device that holds every GPU.
	AllDevice = "all"
)

// Naming strategies, as NVIDIA names them (device-id-strategy, and
// nvidia-ctk's --device-name-strategy).
const (
	NameByUUID  = "uuid"  // GPU-…, MIG-…
	NameByIndex = "index" // 3, and 3:1 for the MIG instance at NVML MIG index 1 of GPU 3
)

// Options shape a spec.
type Options struct {
	Kind string // vendor/class, e.g. PluginKind
	// Naming lists the strategies whose names every device gets (one spec
	// device per name, as NVIDIA's generator does). Default: uuid.
	Naming []string
	// MIGMinors resolves MIG instances to their /dev/nvidia-caps nodes. A
	// MIG instance whose capabilities are not in it is an error.
	MIGMinors MIGMinors
	// CapsMajor is the nvidia-caps character major (/proc/devices). With
	// it, a caps node missing on the host (the driver makes a new MIG
	// instance's only on demand) is given by type and numbers, which the
	// runtime creates in the container without the host's node, as
	// NVIDIA's DRA driver does; 0 needs the host's node.
	CapsMajor int64
	// Driver, if set, holds the driver files mounted into every container
	// (see FindDriver); nil leaves that to the node.
	Driver *Driver
	// Capabilities select the driver files (NVIDIA_DRIVER_CAPABILITIES
	// semantics); the zero value gives every file, as NVIDIA's specs do.
	Capabilities Capabilities
	// Hooks, if set, adds NVIDIA's hooks (hook mode); nil is hook-free.
	Hooks *Hooks
}

// Build returns the spec of every GPU and MIG instance of node: one device
// per name, and "all". Container paths are /dev/…; host paths are under
// node.DevRoot. The spec is validated as the CDI library would load it.
func Build(node *inventory.Node, o Options) (*specs.Spec, error) {
	naming := o.Naming
	if len(naming) == 0 {
		naming = []string{NameByUUID}
	}
	for _, n := range naming {
		if n != NameByUUID && n != NameByIndex {
			return nil, fmt.Errorf("device naming %q is not one of uuid, index", n)
		}
	}
	raw := &specs.Spec{Kind: o.Kind}
	var all []*specs.DeviceNode
	var allHooks []*specs.Hook
	seen := map[string]bool{}
	addNodes := func(nodes []*specs.DeviceNode) {
		for _, d := range nodes {
			if !seen[d.Path] {
				seen[d.Path] = true
				c := *d
				all = append(all, &c)
			}
		}
	}
	add := func(uuid, index string, nodes []*specs.DeviceNode) {
		for _, n := range naming {
			name := uuid
			if n == NameByIndex {
				name = index
			}
			own := make([]*specs.DeviceNode, len(nodes))
			for i, d := range nodes {
				c := *d
				own[i] = &c
			}
			raw.Devices = append(raw.Devices, specs.Device{
				Name: name, ContainerEdits: specs.ContainerEdits{DeviceNodes: own, Hooks: deviceHooks(o, driverRoot(o), uuid)},
			})
		}
		addNodes(nodes)
		allHooks = append(allHooks, deviceHooks(o, driverRoot(o), uuid)...)
	}
	for _, g := range node.GPUs {
		gpu := devNode(node.DevRoot, "nvidia"+strconv.Itoa(g.Minor))
		add(g.UUID, strconv.Itoa(g.Index), []*specs.DeviceNode{gpu})
		for _, m := range g.MIGDevices {
			nodes, err := migNodes(node.DevRoot, o.MIGMinors, o.CapsMajor, g, m)
			if err != nil {
				return nil, err
			}
			// <gpu>:<NVML MIG index>, the index resources.Build gives the
			// device (a test in plugin holds the two together).
			add(m.UUID, fmt.Sprintf("%d:%d", g.Index, m.Index), nodes)
		}
	}
	if len(raw.Devices) == 0 {
		return nil, errors.New("the node has no GPUs to describe")
	}
	raw.Devices = append(raw.Devices, specs.Device{Name: AllDevice, ContainerEdits: specs.ContainerEdits{DeviceNodes: all, Hooks: allHooks}})

	return finish(raw, node, o)
}

// finish adds the edits every container of the spec gets once, whatever its
// devices (control nodes, NVIDIA_VISIBLE_DEVICES=void, driver files), sets
// the version and validates the spec as the CDI library would load it.
func finish(raw *specs.Spec, node *inventory.Node, o Options) (*specs.Spec, error) {
	var ctl []*specs.DeviceNode
	for _, c := range ControlDevices(node.DevRoot) {
		ctl = append(ctl, devNode(node.DevRoot, c))
	}
	raw.ContainerEdits = specs.ContainerEdits{
		// A legacy nvidia-container-runtime hook would otherwise inject
		// the image's NVIDIA_VISIBLE_DEVICES (often "all") on top.
		Env:         []string{"NVIDIA_VISIBLE_DEVICES=void"},
		DeviceNodes: ctl,
	}
	mounts, hooks, env := driverEdits(o)
	raw.ContainerEdits.Mounts = mounts
	raw.ContainerEdits.Hooks = hooks
	raw.ContainerEdits.Env = append(env, raw.ContainerEdits.Env...)
	v, err := specs.MinimumRequiredVersion(raw)
	if err != nil {
		return nil, fmt.Errorf("CDI spec version: %w", err)
	}
	raw.Version = v
	if err := Validate(raw); err != nil {
		return nil, err
	}
	return raw, nil
}

func driverRoot(o Options) string {
	if o.Driver == nil {
		return ""
	}
	return o.Driver.Root
}

// migNodes are the device nodes of MIG instance m of GPU g: its parent's
// /dev/nvidiaN and its capability nodes.
func migNodes(devRoot string, minors MIGMinors, capsMajor int64, g inventory.GPU, m inventory.MIGDevice) ([]*specs.DeviceNode, error) {
	caps, err := minors.CapNodes(g.Minor, m.GI, m.CI)
	if err != nil {
		return nil, fmt.Errorf("MIG device %s (GPU %d, GI %d, CI %d): %w; is %s readable?",
			m.UUID, g.Index, m.GI, m.CI, err, DefaultMIGMinorsPath)
	}
	nodes := []*specs.DeviceNode{devNode(devRoot, "nvidia"+strconv.Itoa(g.Minor))}
	for _, c := range caps {
		n := devNode(devRoot, c)
		if capsMajor > 0 && !exists(n.HostPath) {
			minor, err := strconv.ParseInt(strings.TrimPrefix(filepath.Base(c), "nvidia-cap"), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("caps node %s: %w", c, err)
			}
			mode := os.FileMode(0o444) // as the driver makes them: read-only
			n.HostPath, n.Type, n.Major, n.Minor, n.FileMode = "", "c", capsMajor, minor, &mode
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// DefaultProcDevicesPath lists the kernel's character majors.
const DefaultProcDevicesPath = "/proc/devices"

// CharMajor reads the major of the character device driver name from a
// /proc/devices file; 0 when it is not listed or the file is unreadable.
func CharMajor(path, name string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Block devices") {
			break
		}
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == name {
			if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				return n
			}
		}
	}
	return 0
}

func devNode(devRoot, name string) *specs.DeviceNode {
	return &specs.DeviceNode{Path: "/dev/" + filepath.ToSlash(name), HostPath: filepath.Join(devRoot, name)}
}

// controlDevices are the node-wide device nodes CUDA opens, in the order
// containers get them; resources lists the same ones for device specs.
var controlDevices = []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"}

// ControlDevices lists the node-wide device nodes present under devRoot.
// nvidia-uvm appears only once the module is loaded, so it is looked up at
// each build instead of assumed.
func ControlDevices(devRoot string) []string {
	var out []string
	for _, c := range controlDevices {
		if exists(filepath.Join(devRoot, c)) {
			out = append(out, c)
		}
	}
	return out
}

// Validate checks a spec as the CDI library checks one it loads: version,
// vendor and class, device names, every set of edits, duplicate names.
func Validate(raw *specs.Spec) error {
	if err := specs.ValidateVersion(raw); err != nil {
		return fmt.Errorf("invalid CDI spec: %w", err)
	}
	vendor, class := parser.ParseQualifier(raw.Kind)
	if err := parser.ValidateVendorName(vendor); err != nil {
		return fmt.Errorf("invalid CDI kind %q: %w", raw.Kind, err)
	}
	if err := parser.ValidateClassName(class); err != nil {
		return fmt.Errorf("invalid CDI kind %q: %w", raw.Kind, err)
	}
	if err := (&cdi.ContainerEdits{ContainerEdits: &raw.ContainerEdits}).Validate(); err != nil {
		return fmt.Errorf("invalid CDI spec edits: %w", err)
	}
	var names []string
	for i := range raw.Devices {
		d := &raw.Devices[i]
		if err := parser.ValidateDeviceName(d.Name); err != nil {
			return fmt.Errorf("invalid CDI device name: %w", err)
		}
		if err := (&cdi.ContainerEdits{ContainerEdits: &d.ContainerEdits}).Validate(); err != nil {
			return fmt.Errorf("invalid CDI device %q: %w", d.Name, err)
		}
		names = append(names, d.Name)
	}
	slices.Sort(names)
	for i := 1; i < len(names); i++ {
		if names[i] == names[i-1] {
			return fmt.Errorf("invalid CDI spec: device %q appears twice", names[i])
		}
	}
	if len(names) == 0 {
		return errors.New("invalid CDI spec: no devices")
	}
	return nil
}

// QualifiedNames lists the fully qualified names of a spec's devices.
func QualifiedNames(raw *specs.Spec) []string {
	vendor, class := parser.ParseQualifier(raw.Kind)
	out := make([]string, len(raw.Devices))
	for i, d := range raw.Devices {
		out[i] = parser.QualifiedName(vendor, class, d.Name)
	}
	return out
}
