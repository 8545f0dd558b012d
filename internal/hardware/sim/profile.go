package sim

import (
	"crypto/sha256"
	"embed"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/inventory"
)

//go:embed profiles/*.yaml
var builtin embed.FS

// DefaultProfile is the node a newcomer gets without asking for one.
const DefaultProfile = "dgx-h100"

// pciClass3D is the PCI class of a GPU in compute mode.
const pciClass3D = 0x030200

// Profile describes a simulated node. GPUs are listed one by one, or given
// as a template repeated Count times with per-GPU bus IDs and NUMA nodes.
type Profile struct {
	Name              string    `json:"name"`
	DriverVersion     string    `json:"driverVersion"`
	CUDADriverVersion string    `json:"cudaDriverVersion"`
	GPUs              []GPUSpec `json:"gpus,omitempty"`
	Template          *GPUSpec  `json:"template,omitempty"`
	Count             int       `json:"count,omitempty"`
	PCIBusIDs         []string  `json:"pciBusIDs,omitempty"`
	NUMANodes         []int     `json:"numaNodes,omitempty"`
	// NVLinks[i][j] is the NVLink count between GPU i and j.
	NVLinks [][]int `json:"nvlinks,omitempty"`
	// PCIe[i][j] is the level `nvidia-smi topo -m` would print (X on the diagonal).
	PCIe [][]string `json:"pcie,omitempty"`
}

// GPUSpec is one simulated GPU (or the template for all of them).
type GPUSpec struct {
	UUID         string `json:"uuid,omitempty"`
	Name         string `json:"name"`
	Architecture string `json:"architecture,omitempty"`
	// Brand is NVML's brand as NVIDIA's tools spell it; default Nvidia,
	// what data-centre GPUs report (an H200: BRAND_NVIDIA).
	Brand string `json:"brand,omitempty"`
	// AddressingMode is NVML's addressing mode (HMM, ATS, None); empty:
	// the platform does not support the query.
	AddressingMode    string   `json:"addressingMode,omitempty"`
	MemoryMiB         uint64   `json:"memoryMiB"`
	ComputeCapability string   `json:"computeCapability"`
	PCIBusID          string   `json:"pciBusID,omitempty"`
	NUMANode          *int     `json:"numaNode,omitempty"`
	Serial            string   `json:"serial,omitempty"`
	MIGCapable        bool     `json:"migCapable"`
	MIG               *MIGSpec `json:"mig,omitempty"`
}

// MIGSpec enables MIG on a simulated GPU: Count identical instances
// (GPU instances 1..Count, compute instance 0, MIG indexes 0..Count-1), or
// the Instances listed one by one (a mixed layout).
type MIGSpec struct {
	Profile   string            `json:"profile,omitempty"`
	Count     int               `json:"count,omitempty"`
	MemoryMiB uint64            `json:"memoryMiB,omitempty"`
	Instances []MIGInstanceSpec `json:"instances,omitempty"`
	// Attributes, if given, are reported for every instance (as NVML would).
	Attributes *inventory.MIGAttributes `json:"attributes,omitempty"`
}

// MIGInstanceSpec is one MIG instance as nvidia-smi lists it.
type MIGInstanceSpec struct {
	Profile   string `json:"profile"`
	MemoryMiB uint64 `json:"memoryMiB"`
	GI        int    `json:"gi"`
	CI        int    `json:"ci,omitempty"`
	// Index is the NVML MIG handle index; default: the position in the list.
	Index *int `json:"index,omitempty"`
	// GIProfileID and PlacementStart are the GPU-instance profile's ID and
	// the instance's first memory slice; default: the IDs an A100 or H100
	// gives the profile (1g 19, 1g+me 20, 1g with two slices of memory 15,
	// 2g 14, 3g 9, 4g 5, 7g 0), placed one after the other, each aligned
	// to its size.
	GIProfileID    *int `json:"giProfileId,omitempty"`
	PlacementStart *int `json:"placementStart,omitempty"`
}

// BuiltinProfiles lists the names of the embedded profiles.
func BuiltinProfiles() []string {
	entries, _ := builtin.ReadDir("profiles")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(names)
	return names
}

// LoadProfile reads a built-in profile by name, or a profile file by path.
func LoadProfile(nameOrPath string) (*Profile, error) {
	if nameOrPath == "" {
		nameOrPath = DefaultProfile
	}
	data, err := builtin.ReadFile(path.Join("profiles", nameOrPath+".yaml"))
	if err != nil {
		data, err = os.ReadFile(nameOrPath)
		if err != nil {
			return nil, fmt.Errorf("simulator profile %q is neither a built-in profile (%s) nor a readable file: %w",
				nameOrPath, strings.Join(BuiltinProfiles(), ", "), err)
		}
	}
	return ParseProfile(data)
}

// ParseProfile decodes and checks a profile.
func ParseProfile(data []byte) (*Profile, error) {
	var p Profile
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		return nil, fmt.Errorf("simulator profile: %w", err)
	}
	if _, err := p.Node(); err != nil {
		return nil, err
	}
	return &p, nil
}

// gpuSpecs expands the template form into one spec per GPU.
func (p *Profile) gpuSpecs() ([]GPUSpec, error) {
	if len(p.GPUs) > 0 && p.Template != nil {
		return nil, fmt.Errorf("profile %q: give either gpus or template+count, not both", p.Name)
	}
	specs := append([]GPUSpec(nil), p.GPUs...)
	if p.Template != nil {
		if p.Count <= 0 {
			return nil, fmt.Errorf("profile %q: template needs a positive count", p.Name)
		}
		for i := 0; i < p.Count; i++ {
			specs = append(specs, *p.Template)
		}
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("profile %q has no GPUs", p.Name)
	}
	if len(specs) > 1024 {
		return nil, fmt.Errorf("profile %q has %d GPUs; at most 1024 are supported", p.Name, len(specs))
	}
	for _, list := range []struct {
		name string
		n    int
	}{{"pciBusIDs", len(p.PCIBusIDs)}, {"numaNodes", len(p.NUMANodes)}} {
		if list.n != 0 && list.n != len(specs) {
			return nil, fmt.Errorf("profile %q: %s has %d entries for %d GPUs", p.Name, list.name, list.n, len(specs))
		}
	}
	return specs, nil
}

// Node builds the simulated node the profile describes. UUIDs not given in
// the profile are derived from its name and the GPU index, so they are stable
// across restarts, as real UUIDs are.
func (p *Profile) Node() (*inventory.Node, error) {
	specs, err := p.gpuSpecs()
	if err != nil {
		return nil, err
	}
	n := &inventory.Node{
		Backend:           "sim",
		Profile:           p.Name,
		DriverVersion:     p.DriverVersion,
		CUDADriverVersion: p.CUDADriverVersion,
	}
	for i, s := range specs {
		g := inventory.GPU{
			UUID:              s.UUID,
			Index:             i,
			Minor:             i,
			Name:              s.Name,
			Architecture:      s.Architecture,
			Brand:             s.Brand,
			AddressingMode:    s.AddressingMode,
			MemoryBytes:       s.MemoryMiB << 20,
			ComputeCapability: s.ComputeCapability,
			PCIBusID:          s.PCIBusID,
			NUMANode:          -1,
			Serial:            s.Serial,
			MIGCapable:        s.MIGCapable || s.MIG != nil,
			PCIClass:          pciClass3D, // data-centre GPUs are 3D controllers (compute mode)
		}
		if g.Brand == "" {
			g.Brand = "Nvidia"
		}
		if g.UUID == "" {
			g.UUID = stableUUID("GPU", p.Name, i)
		}
		if g.PCIBusID == "" && len(p.PCIBusIDs) > 0 {
			g.PCIBusID = p.PCIBusIDs[i]
		}
		if g.PCIBusID == "" {
			g.PCIBusID = fmt.Sprintf("00000000:%02X:00.0", 0x10+i)
		}
		if s.NUMANode != nil {
			g.NUMANode = *s.NUMANode
		} else if len(p.NUMANodes) > 0 {
			g.NUMANode = p.NUMANodes[i]
		}
		if s.MIG != nil {
			if g.MIGDevices, err = p.migDevices(i, s); err != nil {
				return nil, err
			}
			g.MIGEnabled = true
		}
		n.GPUs = append(n.GPUs, g)
	}
	n.Links, err = p.links(len(specs))
	if err != nil {
		return nil, err
	}
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("profile %q: %w", p.Name, err)
	}
	return n, nil
}

// migDevices expands GPU i's MIG spec into its instances and checks each
// profile's size against its memory as NVML would name it, so a profile
// cannot claim a 1g.18gb that a real H200 would call something else.
func (p *Profile) migDevices(i int, s GPUSpec) ([]inventory.MIGDevice, error) {
	m := s.MIG
	list := m.Instances
	if len(list) > 0 && (m.Profile != "" || m.Count != 0 || m.MemoryMiB != 0) {
		return nil, fmt.Errorf("profile %q: GPU %d: mig gives either profile+count+memoryMiB or instances, not both", p.Name, i)
	}
	if len(list) == 0 {
		if m.Count <= 0 || m.Profile == "" {
			return nil, fmt.Errorf("profile %q: GPU %d: mig needs a profile and a positive count, or instances", p.Name, i)
		}
		for k := 0; k < m.Count; k++ {
			idx := k
			list = append(list, MIGInstanceSpec{Profile: m.Profile, MemoryMiB: m.MemoryMiB, GI: k + 1, Index: &idx})
		}
	}
	var out []inventory.MIGDevice
	next := 0 // the first free memory slice
	for k, in := range list {
		idx := k
		if in.Index != nil {
			idx = *in.Index
		}
		if in.Profile == "" || in.GI < 0 || in.CI < 0 {
			return nil, fmt.Errorf("profile %q: GPU %d: MIG instance %d needs a profile and non-negative gi and ci", p.Name, i, k)
		}
		if gb, ok := profileGB(in.Profile); ok && s.MemoryMiB > 0 {
			if want := inventory.MIGMemoryGB(in.MemoryMiB<<20, s.MemoryMiB<<20); gb != want {
				return nil, fmt.Errorf("profile %q: GPU %d: MIG instance %d of %d MiB on a %d MiB GPU is a %dgb profile, not %s",
					p.Name, i, k, in.MemoryMiB, s.MemoryMiB, want, in.Profile)
			}
		}
		id, size := giProfileOf(in.Profile, in.MemoryMiB, s.MemoryMiB)
		if in.GIProfileID != nil {
			id = *in.GIProfileID
		}
		start := (next + size - 1) / size * size
		if in.PlacementStart != nil {
			start = *in.PlacementStart
		}
		next = start + size
		gip := &inventory.MIGGIProfile{ID: id, PlacementStart: start, PlacementSize: size, MemoryBytes: in.MemoryMiB << 20}
		if a := m.Attributes; a != nil {
			gip.Multiprocessors, gip.CopyEngines, gip.Decoders, gip.Encoders, gip.JPEGs, gip.OFAs =
				a.Multiprocessors, a.CopyEngines, a.Decoders, a.Encoders, a.JPEGs, a.OFAs
		}
		out = append(out, inventory.MIGDevice{
			UUID:        stableUUID("MIG", fmt.Sprintf("%s/%d", p.Name, i), k),
			Index:       idx,
			Profile:     in.Profile,
			GI:          in.GI,
			CI:          in.CI,
			MemoryBytes: in.MemoryMiB << 20,
			Attributes:  m.Attributes,
			GIProfile:   gip,
		})
	}
	return out, nil
}

// giProfileOf is the GPU-instance profile ID and placement size (memory
// slices) an A100 or H100 gives a MIG profile name; other shapes get ID
// 100+slices and one memory slice per compute slice.
func giProfileOf(profile string, memMiB, gpuMiB uint64) (id, size int) {
	m := profileSlices.FindStringSubmatch(profile)
	if m == nil {
		return 100, 1
	}
	g, _ := strconv.Atoi(m[1])
	switch {
	case g == 1 && strings.HasSuffix(profile, "+me"):
		return 20, 1
	case g == 1 && gpuMiB > 0 && memMiB*8 > gpuMiB+gpuMiB/16:
		return 15, 2 // one compute slice, two memory slices (1g.20gb)
	case g == 1:
		return 19, 1
	case g == 2:
		return 14, 2
	case g == 3:
		return 9, 4
	case g == 4:
		return 5, 4
	case g == 7:
		return 0, 8
	}
	return 100 + g, g
}

var profileSlices = regexp.MustCompile(`^(?:[0-9]+c\.)?([0-9]+)g\.`)

// profileGB reads the memory size of a profile name (18 of 1g.18gb+me).
func profileGB(profile string) (uint64, bool) {
	m := profileSize.FindStringSubmatch(profile)
	if m == nil {
		return 0, false
	}
	gb, err := strconv.ParseUint(m[1], 10, 64)
	return gb, err == nil
}

var profileSize = regexp.MustCompile(`^(?:[0-9]+c\.)?[0-9]+g\.([0-9]+)gb`)

// links builds the link matrix from the profile's matrices; without a PCIe
// matrix, GPUs on one NUMA node are NODE and others SYS.
func (p *Profile) links(count int) ([][]inventory.Link, error) {
	if p.NVLinks != nil && len(p.NVLinks) != count {
		return nil, fmt.Errorf("profile %q: nvlinks has %d rows for %d GPUs", p.Name, len(p.NVLinks), count)
	}
	if p.PCIe != nil && len(p.PCIe) != count {
		return nil, fmt.Errorf("profile %q: pcie has %d rows for %d GPUs", p.Name, len(p.PCIe), count)
	}
	links := make([][]inventory.Link, count)
	for i := range links {
		links[i] = make([]inventory.Link, count)
		for j := range links[i] {
			if i == j {
				continue
			}
			l := &links[i][j]
			if p.NVLinks != nil {
				if len(p.NVLinks[i]) != count {
					return nil, fmt.Errorf("profile %q: nvlinks row %d has %d entries for %d GPUs", p.Name, i, len(p.NVLinks[i]), count)
				}
				if p.NVLinks[i][j] < 0 {
					return nil, fmt.Errorf("profile %q: nvlinks[%d][%d] is negative", p.Name, i, j)
				}
				l.NVLinks = p.NVLinks[i][j]
			}
			switch {
			case p.PCIe != nil:
				if len(p.PCIe[i]) != count {
					return nil, fmt.Errorf("profile %q: pcie row %d has %d entries for %d GPUs", p.Name, i, len(p.PCIe[i]), count)
				}
				lvl, err := inventory.ParseLevel(p.PCIe[i][j])
				if err != nil {
					return nil, fmt.Errorf("profile %q: pcie[%d][%d]: %w", p.Name, i, j, err)
				}
				l.PCIe = lvl
			case len(p.NUMANodes) == count && p.NUMANodes[i] == p.NUMANodes[j]:
				l.PCIe = inventory.LevelNODE
			default:
				l.PCIe = inventory.LevelSYS
			}
		}
	}
	return links, nil
}

// stableUUID formats a deterministic UUID the way NVML prints them
// (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx).
func stableUUID(prefix, seed string, i int) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("gpulet-sim/%s/%s/%d", prefix, seed, i)))
	return fmt.Sprintf("%s-%x-%x-%x-%x-%x", prefix, h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}
