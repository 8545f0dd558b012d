package labels

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// The label prefix of whole GPUs. GFD keys labels by NVIDIA's resource name
// whatever the plugin advertises, so a renamed resource keeps these keys.
const gpuPrefix = "nvidia.com/gpu"

func machineTypeLabels(path string, log *slog.Logger) Labels {
	machine := "unknown"
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			log.Warn("cannot read the machine type; labelling it unknown", "file", path, "err", err)
		} else {
			machine = strings.TrimSpace(string(data))
		}
	}
	return Labels{"nvidia.com/gpu.machine": sanitise(machine)}
}

func versionLabels(n *inventory.Node) (Labels, error) {
	parts := strings.Split(n.DriverVersion, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return nil, fmt.Errorf("driver version %q is not X.Y[.Z]; check the driver installation (nvidia-smi)", n.DriverVersion)
	}
	rev := ""
	if len(parts) == 3 {
		rev = parts[2]
	}
	l := Labels{
		"nvidia.com/cuda.driver.major":            parts[0],
		"nvidia.com/cuda.driver.minor":            parts[1],
		"nvidia.com/cuda.driver.rev":              rev,
		"nvidia.com/cuda.driver-version.major":    parts[0],
		"nvidia.com/cuda.driver-version.minor":    parts[1],
		"nvidia.com/cuda.driver-version.revision": rev,
		"nvidia.com/cuda.driver-version.full":     n.DriverVersion,
	}
	// GFD's "runtime" labels carry the CUDA version the driver supports.
	major, minor, ok := strings.Cut(n.CUDADriverVersion, ".")
	if !ok {
		return nil, fmt.Errorf("CUDA driver version %q is not X.Y; check the driver installation (nvidia-smi)", n.CUDADriverVersion)
	}
	ma, err1 := strconv.Atoi(major)
	mi, err2 := strconv.Atoi(minor)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("CUDA driver version %q is not X.Y; check the driver installation (nvidia-smi)", n.CUDADriverVersion)
	}
	l["nvidia.com/cuda.runtime.major"] = strconv.Itoa(ma)
	l["nvidia.com/cuda.runtime.minor"] = strconv.Itoa(mi)
	l["nvidia.com/cuda.runtime-version.major"] = strconv.Itoa(ma)
	l["nvidia.com/cuda.runtime-version.minor"] = strconv.Itoa(mi)
	l["nvidia.com/cuda.runtime-version.full"] = fmt.Sprintf("%d.%d", ma, mi)
	return l, nil
}

func migCapableLabels(n *inventory.Node) Labels {
	capable := false
	for _, g := range n.GPUs {
		capable = capable || g.MIGCapable
	}
	return Labels{"nvidia.com/mig.capable": strconv.FormatBool(capable)}
}

// PCI classes of a GPU in graphics and compute mode.
const (
	pciClassVGA = 0x030000
	pciClass3D  = 0x030200
)

// gpuModeLabels derives the mode as GFD does, from the GPUs' PCI class:
// all VGA controllers is graphics, all 3D controllers compute, else unknown.
func gpuModeLabels(n *inventory.Node, sysfsRoot string, log *slog.Logger) Labels {
	classes := map[uint32]bool{}
	for _, g := range n.GPUs {
		class := g.PCIClass
		if g.MIGEnabled {
			class = pciClass3D // MIG GPUs cannot switch modes: always compute
		}
		if class == 0 {
			c, err := readPCIClass(sysfsRoot, g.PCIBusID)
			if err != nil {
				log.Warn("cannot read the GPU's PCI class; gpu.mode is unknown", "gpu", g.UUID, "err", err)
				return Labels{"nvidia.com/gpu.mode": "unknown"}
			}
			class = c
		}
		classes[class] = true
	}
	mode := "unknown"
	if len(classes) == 1 {
		switch {
		case classes[pciClassVGA]:
			mode = "graphics"
		case classes[pciClass3D]:
			mode = "compute"
		}
	}
	return Labels{"nvidia.com/gpu.mode": mode}
}

// readPCIClass reads /sys/bus/pci/devices/<bus id>/class. NVML's bus IDs have
// an 8-digit domain; sysfs names devices with 4, in lower case.
func readPCIClass(sysfsRoot, busID string) (uint32, error) {
	if sysfsRoot == "" {
		sysfsRoot = "/sys"
	}
	id := strings.ToLower(busID)
	if len(id) > 12 {
		id = id[len(id)-12:]
	}
	data, err := os.ReadFile(filepath.Join(sysfsRoot, "bus", "pci", "devices", id, "class"))
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(string(data)), "0x"), 16, 32)
	if err != nil {
		return 0, fmt.Errorf("PCI class of %s: %w", busID, err)
	}
	return uint32(v), nil
}

// family names the architecture of a compute capability as GFD does.
func family(major, minor int) string {
	switch major {
	case 1:
		return "tesla"
	case 2:
		return "fermi"
	case 3:
		return "kepler"
	case 5:
		return "maxwell"
	case 6:
		return "pascal"
	case 7:
		if minor < 5 {
			return "volta"
		}
		return "turing"
	case 8:
		if minor < 9 {
			return "ampere"
		}
		return "ada-lovelace"
	case 9:
		return "hopper"
	case 10, 12:
		return "blackwell"
	case 13:
		return "rubin"
	}
	return "undefined"
}

// sharing is how one advertised resource is shared, as its labels show it.
type sharing struct {
	off      bool // GFD's "without sharing": replicas 0 (MIG-enabled GPUs' own labels)
	replicas int  // replicas (0 or 1: not shared)
	renamed  bool // advertised under another name, so the product has no -SHARED
	mps      bool // shared through MPS rather than time-slicing
}

// shareOf is how the resource named name is shared under cfg: the command
// line's --replicas shares every resource; otherwise the config file's
// sharing entry for that resource, if any. byName says whether a
// SharedName rename applies to it (whole GPUs only, as resources.Build).
func shareOf(cfg resources.Config, name string, byName bool) sharing {
	if cfg.Replicas > 1 {
		return sharing{replicas: cfg.Replicas, renamed: cfg.RenameByDefault || (byName && cfg.SharedName != "")}
	}
	for _, sh := range cfg.Shares {
		if sh.Name == name && sh.Replicas > 1 {
			return sharing{replicas: sh.Replicas, renamed: cfg.RenameByDefault || sh.Rename != "", mps: cfg.MPS}
		}
	}
	return sharing{}
}

func (s sharing) shared() bool { return !s.off && s.replicas > 1 }

// replicaCount is gpu.replicas: how many containers can share one device.
// GFD reports 1 when not shared. GFD issue #732 reports the label wrong with
// time-slicing when the resource is renamed; gpulet takes the replicas
// from the one sharing setting it applies, whatever the resource is called.
func (s sharing) replicaCount() int {
	switch {
	case s.off:
		return 0
	case s.replicas > 1:
		return s.replicas
	}
	return 1
}

func (s sharing) strategy() string {
	switch {
	case s.shared() && s.mps:
		return "mps"
	case s.shared():
		return "time-slicing"
	}
	return "none"
}

// product joins name parts as GFD does, with -SHARED when the devices are
// time-sliced under their usual name (renameByDefault false, no rename).
func (s sharing) product(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p = sanitise(p); p != "" {
			out = append(out, p)
		}
	}
	if len(out) > 0 && s.shared() && !s.renamed {
		out = append(out, "SHARED")
	}
	return strings.Join(out, "-")
}

// base is the labels every resource gets: product, count, replicas, sharing-strategy.
func (s sharing) base(prefix string, count int, parts ...string) Labels {
	return Labels{
		prefix + ".product":          s.product(parts...),
		prefix + ".count":            strconv.Itoa(count),
		prefix + ".replicas":         strconv.Itoa(s.replicaCount()),
		prefix + ".sharing-strategy": s.strategy(),
	}
}

// resourceLabels are the nvidia.com/gpu.* labels and, with MIG strategy
// single or mixed, the MIG ones (GFD's resource labeler).
func resourceLabels(n *inventory.Node, cfg resources.Config, log *slog.Logger) Labels {
	strategy := cfg.MIGStrategy
	if strategy == "" {
		strategy = resources.MIGNone
	}
	gpuName := cfg.ResourceName
	if gpuName == "" {
		gpuName = resources.DefaultResourceName
	}
	share := shareOf(cfg, gpuName, true)
	out := fullGPULabels(n, share, log)
	switch strategy {
	case resources.MIGSingle:
		out = merge(out, Labels{"nvidia.com/mig.strategy": strategy}, migSingleLabels(n, share, log))
	case resources.MIGMixed:
		// Mixed resources are never renamed by SharedName (resources.Build),
		// only by renameByDefault or their own sharing entry.
		out = merge(out, Labels{"nvidia.com/mig.strategy": strategy}, migMixedLabels(n, func(resource string) sharing {
			return shareOf(cfg, resource, false)
		}))
	}
	return out
}

// fullGPULabels labels whole GPUs by product. A node with two products gets
// the labels of one (GFD warns and picks at random; gpulet picks the
// last by name, so labels do not flap). MIG-enabled GPUs are counted but
// labelled without sharing, as GFD does.
func fullGPULabels(n *inventory.Node, share sharing, log *slog.Logger) Labels {
	type group struct {
		gpu        inventory.GPU
		count      int
		migEnabled bool
	}
	groups := map[string]*group{}
	for _, g := range n.GPUs {
		gr, ok := groups[g.Name]
		if !ok {
			gr = &group{gpu: g, migEnabled: true}
			groups[g.Name] = gr
		}
		gr.count++
		if !g.MIGEnabled && gr.migEnabled {
			gr.gpu, gr.migEnabled = g, false // a whole GPU of the product sets its sharing
		}
	}
	names := make([]string, 0, len(groups))
	for name := range groups {
		names = append(names, name)
	}
	sort.Strings(names)
	if len(names) > 1 {
		log.Warn("GPUs of several products; nvidia.com/gpu.* labels describe one of them", "products", names, "labelled", names[len(names)-1])
	}
	gr := groups[names[len(names)-1]]
	s := share
	if gr.migEnabled {
		s = sharing{off: true}
	}
	out := s.base(gpuPrefix, gr.count, gr.gpu.Name)
	if mib := gr.gpu.MemoryBytes >> 20; mib != 0 {
		out[gpuPrefix+".memory"] = strconv.FormatUint(mib, 10)
	}
	if major, minor, ok := computeCapability(gr.gpu.ComputeCapability); ok && major != 0 {
		out[gpuPrefix+".family"] = family(major, minor)
		out[gpuPrefix+".compute.major"] = strconv.Itoa(major)
		out[gpuPrefix+".compute.minor"] = strconv.Itoa(minor)
	}
	return out
}

func computeCapability(cc string) (int, int, bool) {
	a, b, ok := strings.Cut(cc, ".")
	if !ok {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(a)
	minor, err2 := strconv.Atoi(b)
	return major, minor, err1 == nil && err2 == nil
}

// migProfileName is the profile as GFD and NVIDIA's plugin name it:
// attribute suffixes joined with '.' (1g.10gb+me becomes 1g.10gb.me).
func migProfileName(p string) string { return strings.ReplaceAll(p, "+", ".") }

// migGroup is all instances of one profile.
type migGroup struct {
	parent inventory.GPU
	mig    inventory.MIGDevice
	count  int
}

func migGroups(n *inventory.Node) map[string]*migGroup {
	out := map[string]*migGroup{}
	for _, g := range n.GPUs {
		if !g.MIGEnabled {
			continue
		}
		for _, m := range g.MIGDevices {
			p := migProfileName(m.Profile)
			gr, ok := out[p]
			if !ok {
				gr = &migGroup{parent: g, mig: m}
				out[p] = gr
			}
			gr.count++
		}
	}
	return out
}

// migLabels are one profile's labels under prefix (GFD's MIG resource labeler).
func migLabels(prefix string, profile string, gr *migGroup, share sharing) Labels {
	out := share.base(prefix, gr.count, gr.parent.Name, "MIG", profile)
	out[prefix+".memory"] = strconv.FormatUint(gr.mig.MemoryBytes>>20, 10)
	if a := gr.mig.Attributes; a != nil {
		for k, v := range map[string]int{
			"multiprocessors": a.Multiprocessors, "slices.gi": a.GISlices, "slices.ci": a.CISlices,
			"engines.copy": a.CopyEngines, "engines.decoder": a.Decoders, "engines.encoder": a.Encoders,
			"engines.jpeg": a.JPEGs, "engines.ofa": a.OFAs,
		} {
			out[prefix+"."+k] = strconv.Itoa(v)
		}
	}
	return out
}

// migSingleLabels overloads nvidia.com/gpu.* with the MIG instances when all
// GPUs use one profile, and marks the product INVALID otherwise, as GFD does.
func migSingleLabels(n *inventory.Node, share sharing, log *slog.Logger) Labels {
	var enabled []inventory.GPU
	reason := ""
	for _, g := range n.GPUs {
		switch {
		case !g.MIGEnabled:
			reason = "GPUs with MIG enabled and disabled"
		case len(g.MIGDevices) == 0:
			reason = "a MIG-enabled GPU without instances"
		}
		if g.MIGEnabled {
			enabled = append(enabled, g)
		}
	}
	if len(enabled) == 0 {
		return nil
	}
	groups := migGroups(n)
	if reason == "" && len(groups) != 1 {
		reason = "more than one MIG profile"
	}
	if reason != "" {
		log.Warn("mig-strategy=single does not fit this node; labelling the product INVALID", "reason", reason)
		return Labels{
			gpuPrefix + ".product":          sanitise(enabled[0].Name) + "-MIG-INVALID",
			gpuPrefix + ".count":            "0",
			gpuPrefix + ".replicas":         "0",
			gpuPrefix + ".sharing-strategy": "",
			gpuPrefix + ".memory":           "0",
		}
	}
	for p, gr := range groups {
		return migLabels(gpuPrefix, p, gr, share)
	}
	return nil
}

// migMixedLabels labels each profile as nvidia.com/mig-<profile>.*.
func migMixedLabels(n *inventory.Node, shareOf func(resource string) sharing) Labels {
	out := Labels{}
	for p, gr := range migGroups(n) {
		out = merge(out, migLabels("nvidia.com/mig-"+p, p, gr, shareOf("nvidia.com/mig-"+p)))
	}
	return out
}
