package dra

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/deviceattribute"
	"k8s.io/dynamic-resource-allocation/resourceclaim"

	"github.com/gpulet/gpulet/internal/inventory"
)

// DriverName is NVIDIA's DRA driver name; claims and DeviceClasses select
// devices by it.
const DriverName = "gpu.nvidia.com"

// Device types, the value of the "type" attribute, as NVIDIA's driver sets
// it; the DeviceClasses gpu.nvidia.com and mig.nvidia.com select on it.
const (
	TypeGPU = "gpu"
	TypeMIG = "mig"
)

// Attributes gpulet publishes beyond NVIDIA's. NUMA uses the Kubernetes
// standard name, so claims can also match it against other drivers'
// devices (NICs); the NVLink domain is gpulet's own.
const (
	// AttrNUMANode is the GPU's NUMA node (scalar form); absent when the
	// platform does not say.
	AttrNUMANode = deviceattribute.StandardDeviceAttributeNUMANode
	// AttrNVLinkDomain numbers the sets of GPUs joined by NVLink (connected
	// components of the link matrix): the smallest GPU index in the set.
	// Absent on a GPU without NVLink peers and on MIG instances, which do
	// not do peer-to-peer, so a matchAttribute on it only pairs GPUs that
	// really talk over NVLink.
	AttrNVLinkDomain resourceapi.QualifiedName = "gpulet.io/nvlinkDomain"
)

// The API's limits on devices per slice: ResourceSliceMaxDevices, and
// ResourceSliceMaxDevicesWithAdvancedFeatures for a slice where a device
// has taints or consumes counters.
const (
	maxDevicesPerSlice         = resourceapi.ResourceSliceMaxDevices
	maxAdvancedDevicesPerSlice = resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures
)

// DeviceOptions shape the published devices.
type DeviceOptions struct {
	// PCIeRoot resolves a PCI bus ID (0000:1b:00.0) to its root complex
	// (pci0000:00), as the resource.kubernetes.io/pcieRoot attribute wants;
	// nil or !ok leaves the attribute out. The backend resolves it when it
	// can (hardware.PCIeRootResolver: NVML; the simulator's bus IDs are
	// not the host's).
	PCIeRoot func(busID string) (string, bool)
	// ConsumableCapacity publishes whole GPUs for several claims at once,
	// by memory (allowMultipleAllocations with a memory request policy, as
	// NVIDIA's ConsumableShares "memory" option): a claim asking
	// capacity.requests.memory gets a share; without a request it gets the
	// whole memory. MIG instances stay exclusive.
	ConsumableCapacity bool
	// DynamicMIG lists the GPUs whose MIG instances are cut on request,
	// with their profiles (dynmig.go). Consumable capacity does not apply
	// to them.
	DynamicMIG DynamicMIG
}

// entry is one publishable device and what it stands for.
type entry struct {
	Name   string
	UUID   string
	Parent string // the GPU's UUID for a MIG instance or placement
	GPU    int    // position in node.GPUs
	MIG    int    // position in GPU.MIGDevices, -1 for a whole GPU or a placement
	// Place is the placement a dynamic MIG device stands for; its instance
	// exists only while a claim holds it.
	Place *placement
}

// catalog lists the devices of node as DRA names them: each GPU by index,
// a MIG-enabled GPU by its MIG instances instead (as NVIDIA's driver does,
// the parent is then not allocatable), and a dynamic MIG GPU whole and by
// every placement, whatever instances it has now.
func catalog(node *inventory.Node, dyn DynamicMIG) []entry {
	var out []entry
	for i, g := range node.GPUs {
		if ps := dyn.dynamicProfiles(g); ps != nil {
			if !fixedMIGMode(g) {
				out = append(out, entry{Name: GPUName(g), UUID: g.UUID, GPU: i, MIG: -1})
			}
			for _, p := range ps {
				for _, start := range p.Placements {
					out = append(out, entry{Name: placementName(g, p, start), Parent: g.UUID, GPU: i, MIG: -1, Place: &placement{p, start}})
				}
			}
			continue
		}
		if !g.MIGEnabled {
			out = append(out, entry{Name: GPUName(g), UUID: g.UUID, GPU: i, MIG: -1})
			continue
		}
		for j, m := range g.MIGDevices {
			out = append(out, entry{Name: MIGName(g, m), UUID: m.UUID, Parent: g.UUID, GPU: i, MIG: j})
		}
	}
	return out
}

// GPUName is NVIDIA's name for a whole GPU: gpu-<minor>.
func GPUName(g inventory.GPU) string { return "gpu-" + strconv.Itoa(g.Minor) }

var notDNS = regexp.MustCompile(`[^a-z0-9-]`)

// MIGName names a MIG instance as NVIDIA's driver does:
// gpu-<minor>-mig-<profile>-<GPU-instance profile ID>-<placement start>,
// the profile lower-cased without dots and each other character outside
// [a-z0-9-] turned into a dash (1g.10gb+me: 1g10gb-me). Where the
// backend could not read the GPU instance's profile (no privilege), the
// GPU-instance and compute-instance IDs take the last two places: as
// unique on the node, but not NVIDIA's names.
func MIGName(g inventory.GPU, m inventory.MIGDevice) string {
	p := migNamePart(m.Profile)
	if gp := m.GIProfile; gp != nil {
		return fmt.Sprintf("gpu-%d-mig-%s-%d-%d", g.Minor, p, gp.ID, gp.PlacementStart)
	}
	return fmt.Sprintf("gpu-%d-mig-%s-%d-%d", g.Minor, p, m.GI, m.CI)
}

// migNamePart is a profile as NVIDIA puts it in device names: lower case
// without dots, other characters outside [a-z0-9-] as dashes (1g10gb-me).
func migNamePart(profile string) string {
	return strings.Trim(notDNS.ReplaceAllString(strings.ToLower(strings.ReplaceAll(profile, ".", "")), "-"), "-")
}

// Taint keys on unhealthy devices. The first two are NVIDIA's (its DRA
// driver's device health): an XID, the XID number as the value; a GPU
// lost. gpulet's own key marks a device unhealthy for another reason
// (an uncorrectable ECC error, a failed row remap, the driver gone).
const (
	TaintKeyXID       = DriverName + "/xid"
	TaintKeyGPULost   = DriverName + "/gpu-lost"
	TaintKeyUnhealthy = "gpulet.io/unhealthy"
)

// xidGPULost is the XID of a GPU fallen off the bus.
const xidGPULost = 79

// Devices returns the devices to publish from snap: every device of the
// catalog, an unhealthy one (or a MIG instance of an unhealthy GPU) with a
// NoSchedule taint saying why (Taints). The scheduler then gives it only
// to claims that tolerate the taint (diagnostics, draining), and the taint
// goes when the device recovers.
func Devices(snap inventory.Snapshot, o DeviceOptions) []resourceapi.Device {
	return slices.Concat(deviceGroups(snap, o)...)
}

// deviceGroups are the devices in their publishing groups (Pool): plain
// devices; then each dynamic MIG GPU whole and its placements, which carry
// the GPU's taints. Empty groups are left out.
func deviceGroups(snap inventory.Snapshot, o DeviceOptions) [][]resourceapi.Device {
	node := snap.Node
	domains := nvlinkDomains(node)
	var plain []resourceapi.Device
	var parts [][]resourceapi.Device
	for _, e := range catalog(node, o.DynamicMIG) {
		if o.DynamicMIG.dynamicProfiles(node.GPUs[e.GPU]) == nil {
			d := device(node, e, domains, o)
			d.Taints = Taints(snap, e.UUID, e.Parent)
			plain = append(plain, d)
		}
	}
	for i, g := range node.GPUs {
		ps := o.DynamicMIG.dynamicProfiles(g)
		if ps == nil {
			continue
		}
		whole := o
		whole.ConsumableCapacity = false
		devs := dynamicDevices(node, i, ps, device(node, entry{Name: GPUName(g), UUID: g.UUID, GPU: i, MIG: -1}, domains, whole), o)
		for k := range devs {
			devs[k].Taints = Taints(snap, "", g.UUID)
		}
		parts = append(parts, devs)
	}
	var out [][]resourceapi.Device
	for _, g := range append([][]resourceapi.Device{plain}, parts...) {
		if len(g) > 0 {
			out = append(out, g)
		}
	}
	return out
}

// Taints are the taints of the device uuid (with its parent GPU, for a
// MIG instance) by its health in snap; nil when healthy. An XID gives
// NVIDIA's xid taint (gpu-lost for XID 79, a GPU off the bus); gpulet
// marks a device unhealthy only for XIDs that are not the application's,
// so the effect is always NoSchedule (NVIDIA uses None for application
// XIDs, which gpulet ignores).
func Taints(snap inventory.Snapshot, uuid, parent string) []resourceapi.DeviceTaint {
	var out []resourceapi.DeviceTaint
	seen := map[resourceapi.DeviceTaint]bool{}
	for _, id := range []string{uuid, parent} {
		h, ok := snap.Health[id]
		if id == "" || !ok || h.Healthy {
			continue
		}
		t := resourceapi.DeviceTaint{Key: TaintKeyUnhealthy, Effect: resourceapi.DeviceTaintEffectNoSchedule}
		switch {
		case h.XID == xidGPULost:
			t.Key = TaintKeyGPULost
		case h.XID != 0:
			t.Key, t.Value = TaintKeyXID, strconv.FormatUint(h.XID, 10)
		}
		if seen[t] {
			continue
		}
		seen[t] = true
		if !h.Since.IsZero() {
			// Seconds: what the API server keeps, so the published slice
			// compares equal to the one read back.
			at := metav1.NewTime(h.Since.Truncate(time.Second))
			t.TimeAdded = &at
		}
		out = append(out, t)
	}
	return out
}

// untolerated returns the first taint of taints with a scheduling effect
// that tolerations do not tolerate, or nil.
func untolerated(taints []resourceapi.DeviceTaint, tolerations []resourceapi.DeviceToleration) *resourceapi.DeviceTaint {
	for i, t := range taints {
		if t.Effect == resourceapi.DeviceTaintEffectNone {
			continue
		}
		if !slices.ContainsFunc(tolerations, func(tl resourceapi.DeviceToleration) bool { return resourceclaim.ToleratesTaint(tl, t) }) {
			return &taints[i]
		}
	}
	return nil
}

func device(node *inventory.Node, e entry, domains map[int]int, o DeviceOptions) resourceapi.Device {
	g := node.GPUs[e.GPU]
	attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		"uuid":        str(e.UUID),
		"productName": str(g.Name),
	}
	for name, v := range map[resourceapi.QualifiedName]string{
		"architecture": g.Architecture, "brand": g.Brand, "addressingMode": g.AddressingMode,
	} {
		if v != "" {
			attrs[name] = str(v)
		}
	}
	for name, v := range map[resourceapi.QualifiedName]string{
		"cudaComputeCapability": g.ComputeCapability,
		"driverVersion":         node.DriverVersion,
		"cudaDriverVersion":     node.CUDADriverVersion,
	} {
		if sv, ok := semver(v); ok {
			attrs[name] = resourceapi.DeviceAttribute{VersionValue: &sv}
		}
	}
	if bus, ok := pciBusID(g.PCIBusID); ok {
		attrs[deviceattribute.StandardDeviceAttributePCIBusID] = str(bus)
		if o.PCIeRoot != nil {
			if root, ok := o.PCIeRoot(bus); ok {
				attrs[deviceattribute.StandardDeviceAttributePCIeRoot] = str(root)
			}
		}
	}
	if g.NUMANode >= 0 {
		n := int64(g.NUMANode)
		attrs[AttrNUMANode] = resourceapi.DeviceAttribute{IntValue: &n}
	}
	capacity := map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{}
	if e.MIG < 0 {
		attrs["type"] = str(TypeGPU)
		if d, ok := domains[e.GPU]; ok {
			v := int64(d)
			attrs[AttrNVLinkDomain] = resourceapi.DeviceAttribute{IntValue: &v}
		}
		capacity["memory"] = bytes(g.MemoryBytes)
		if o.ConsumableCapacity {
			consumable(&capacity)
		}
	} else {
		m := g.MIGDevices[e.MIG]
		attrs["type"] = str(TypeMIG)
		attrs["parentUUID"] = str(g.UUID)
		attrs["profile"] = str(m.Profile)
		capacity["memory"] = bytes(m.MemoryBytes)
		// NVIDIA's capacity names for the GPU-instance profile's engines,
		// from the profile itself (a compute instance may have fewer
		// multiprocessors than its GPU instance), and one memorySlice<N>
		// per memory slice the instance occupies.
		if gp := m.GIProfile; gp != nil {
			capacity["memory"] = bytes(gp.MemoryBytes)
			engines(capacity, gp.Multiprocessors, gp.CopyEngines, gp.Decoders, gp.Encoders, gp.JPEGs, gp.OFAs)
			for i := gp.PlacementStart; i < gp.PlacementStart+gp.PlacementSize; i++ {
				capacity[resourceapi.QualifiedName(fmt.Sprintf("memorySlice%d", i))] =
					resourceapi.DeviceCapacity{Value: *resource.NewQuantity(1, resource.BinarySI)}
			}
		} else if a := m.Attributes; a != nil {
			engines(capacity, a.Multiprocessors, a.CopyEngines, a.Decoders, a.Encoders, a.JPEGs, a.OFAs)
		}
	}
	d := resourceapi.Device{Name: e.Name, Attributes: attrs, Capacity: capacity}
	if e.MIG < 0 && o.ConsumableCapacity {
		yes := true
		d.AllowMultipleAllocations = &yes
	}
	return d
}

// consumable gives the memory capacity NVIDIA's "memory" request policy:
// whole MiB, a request of at least 1Mi in 1Mi steps up to all of it,
// all of it by default.
func consumable(c *map[resourceapi.QualifiedName]resourceapi.DeviceCapacity) {
	m := (*c)["memory"]
	step := resource.MustParse("1Mi")
	total := resource.NewQuantity(m.Value.Value()/step.Value()*step.Value(), resource.BinarySI)
	m.Value = total.DeepCopy()
	def, lo, hi := total.DeepCopy(), step.DeepCopy(), total.DeepCopy()
	m.RequestPolicy = &resourceapi.CapacityRequestPolicy{
		Default:    &def,
		ValidRange: &resourceapi.CapacityRequestPolicyRange{Min: &lo, Max: &hi, Step: &step},
	}
	(*c)["memory"] = m
}

func engines(c map[resourceapi.QualifiedName]resourceapi.DeviceCapacity, sms, ce, dec, enc, jpeg, ofa int) {
	for name, v := range map[resourceapi.QualifiedName]int{
		"multiprocessors": sms, "copyEngines": ce, "decoders": dec, "encoders": enc, "jpegEngines": jpeg, "ofaEngines": ofa,
	} {
		c[name] = resourceapi.DeviceCapacity{Value: *resource.NewQuantity(int64(v), resource.DecimalSI)}
	}
}

func str(s string) resourceapi.DeviceAttribute { return resourceapi.DeviceAttribute{StringValue: &s} }

func bytes(n uint64) resourceapi.DeviceCapacity {
	return resourceapi.DeviceCapacity{Value: *resource.NewQuantity(int64(n), resource.BinarySI)}
}

// semver turns NVIDIA's version strings (9.0, 13.0, 580.159.04) into the
// semantic versions a VersionValue must hold (9.0.0, 13.0.0, 580.159.4).
func semver(v string) (string, bool) {
	parts := strings.Split(strings.TrimSpace(v), ".")
	if v == "" || len(parts) > 3 {
		return "", false
	}
	var nums []string
	for _, p := range parts {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return "", false
		}
		nums = append(nums, strconv.FormatUint(n, 10))
	}
	for len(nums) < 3 {
		nums = append(nums, "0")
	}
	return strings.Join(nums, "."), true
}

// pciBusID turns NVML's bus ID (00000000:1B:00.0) into the sysfs form the
// standard attribute wants (0000:1b:00.0).
func pciBusID(id string) (string, bool) {
	id = strings.ToLower(strings.TrimSpace(id))
	if dom, rest, ok := strings.Cut(id, ":"); ok && len(dom) == 8 && strings.HasPrefix(dom, "0000") {
		id = dom[4:] + ":" + rest
	}
	if _, err := deviceattribute.GetPCIBusIDAttribute(id); err != nil {
		return "", false
	}
	return id, true
}

// nvlinkDomains maps each GPU (by position) with at least one NVLink peer
// to its domain: the smallest index among the GPUs NVLink joins it to,
// directly or through others.
func nvlinkDomains(node *inventory.Node) map[int]int {
	n := len(node.GPUs)
	seen := make([]bool, n)
	out := map[int]int{}
	for i := range n {
		if seen[i] {
			continue
		}
		comp := []int{i}
		seen[i] = true
		for k := 0; k < len(comp); k++ {
			for j := range n {
				if !seen[j] && j != comp[k] && node.Link(comp[k], j).NVLinks > 0 {
					seen[j] = true
					comp = append(comp, j)
				}
			}
		}
		if len(comp) < 2 {
			continue
		}
		id := node.GPUs[comp[0]].Index
		for _, p := range comp {
			id = min(id, node.GPUs[p].Index)
		}
		for _, p := range comp {
			out[p] = id
		}
	}
	return out
}

// slicesOf splits devices into slices the API accepts.
func slicesOf(devices []resourceapi.Device) [][]resourceapi.Device {
	limit := maxDevicesPerSlice
	if slices.ContainsFunc(devices, func(d resourceapi.Device) bool { return len(d.Taints) > 0 || len(d.ConsumesCounters) > 0 }) {
		limit = maxAdvancedDevicesPerSlice
	}
	var out [][]resourceapi.Device
	for chunk := range slices.Chunk(devices, limit) {
		out = append(out, chunk)
	}
	return out
}
