// Package inventory owns gpulet's model of a GPU node: the GPUs a hardware
// backend discovered, the links between them, and their live health. Every
// layer above the hardware (resources, device-plugin servers, CLI) reads this
// model and nothing else, so the NVML and simulated backends share all of it.
package inventory

import (
	"fmt"
	"strings"
)

// Level is how two GPUs reach each other over PCIe, as `nvidia-smi topo -m`
// names it. Its value is the pair score NVIDIA's allocator uses, so a higher
// level is a closer pair and scores compare with theirs.
type Level int

const (
	LevelUnknown Level = 0
	LevelSYS     Level = 10 // across the SMP interconnect between NUMA nodes
	LevelNODE    Level = 20 // between host bridges within one NUMA node
	LevelPHB     Level = 30 // through one PCIe host bridge
	LevelPXB     Level = 40 // through several PCIe bridges, no host bridge
	LevelPIX     Level = 50 // through at most one PCIe bridge
	LevelSame    Level = 60 // the same board (MIG instances of one GPU)
)

var levelNames = map[Level]string{
	LevelUnknown: "UNKNOWN", LevelSYS: "SYS", LevelNODE: "NODE", LevelPHB: "PHB",
	LevelPXB: "PXB", LevelPIX: "PIX", LevelSame: "SAME",
}

func (l Level) String() string {
	if s, ok := levelNames[l]; ok {
		return s
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// ParseLevel reads a level name as `nvidia-smi topo -m` prints it.
func ParseLevel(s string) (Level, error) {
	u := strings.ToUpper(strings.TrimSpace(s))
	for l, name := range levelNames {
		if name == u {
			return l, nil
		}
	}
	return LevelUnknown, fmt.Errorf("unknown PCIe level %q: want one of SYS, NODE, PHB, PXB, PIX", s)
}

// MarshalText writes the level by name, so profiles and JSON output read like
// nvidia-smi.
func (l Level) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText reads a level by name.
func (l *Level) UnmarshalText(b []byte) error {
	v, err := ParseLevel(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// Link is the connection between two GPUs.
type Link struct {
	NVLinks int   `json:"nvlinks"` // bonded NVLink lanes between the pair (NV#)
	PCIe    Level `json:"pcie"`    // their PCIe common-ancestor level
}

// MIGDevice is one MIG instance carved out of a GPU.
type MIGDevice struct {
	UUID string `json:"uuid"`
	// Index is NVML's MIG device handle index on the parent GPU, the N of
	// GetMigDeviceHandleByIndex(N). Slots can be empty, so indexes can have
	// gaps; "<gpu>:<index>" is how NVIDIA's tools name the instance.
	Index       int    `json:"index"`
	Profile     string `json:"profile"` // e.g. 1g.18gb, 1g.18gb+me
	GI          int    `json:"gi"`      // GPU instance ID
	CI          int    `json:"ci"`      // compute instance ID
	MemoryBytes uint64 `json:"memoryBytes"`
	// Attributes are the instance's NVML attributes; nil when the backend
	// does not know them (the NVML backend fills them, the simulator only
	// when its profile lists them). Node labels about MIG profiles need them.
	Attributes *MIGAttributes `json:"attributes,omitempty"`
	// GIProfile is the instance's GPU-instance profile and placement, as
	// NVML's GPU-instance info gives them; nil when unknown (reading GPU
	// instances may need privileges). NVIDIA's DRA driver names and sizes
	// MIG devices by it.
	GIProfile *MIGGIProfile `json:"giProfile,omitempty"`
}

// MIGGIProfile is a MIG instance's GPU-instance profile (nvmlGpuInstanceProfileInfo)
// and where the instance sits on its GPU (nvmlGpuInstancePlacement).
type MIGGIProfile struct {
	ID              int    `json:"id"`             // the profile's ID on this GPU
	PlacementStart  int    `json:"placementStart"` // first memory slice
	PlacementSize   int    `json:"placementSize"`  // memory slices
	MemoryBytes     uint64 `json:"memoryBytes"`
	Multiprocessors int    `json:"multiprocessors"`
	CopyEngines     int    `json:"copyEngines"`
	Decoders        int    `json:"decoders"`
	Encoders        int    `json:"encoders"`
	JPEGs           int    `json:"jpegs"`
	OFAs            int    `json:"ofas"`
}

// MIGAttributes are what NVML reports for a MIG instance (nvmlDeviceAttributes).
type MIGAttributes struct {
	Multiprocessors int `json:"multiprocessors"`
	GISlices        int `json:"giSlices"`
	CISlices        int `json:"ciSlices"`
	CopyEngines     int `json:"copyEngines"`
	Decoders        int `json:"decoders"`
	Encoders        int `json:"encoders"`
	JPEGs           int `json:"jpegs"`
	OFAs            int `json:"ofas"`
}

// GPU is one physical GPU as discovered. It carries no health: that is live
// state the Store keeps beside it.
type GPU struct {
	UUID         string `json:"uuid"`
	Index        int    `json:"index"`
	Minor        int    `json:"minor"` // N of /dev/nvidiaN
	Name         string `json:"name"`
	Architecture string `json:"architecture,omitempty"`
	// Brand is NVML's brand as NVIDIA's tools spell it (Nvidia, Tesla,
	// GeForce, ...); empty when unknown.
	Brand string `json:"brand,omitempty"`
	// AddressingMode is NVML's memory addressing mode (HMM, ATS, None);
	// empty where the platform does not support the query.
	AddressingMode    string      `json:"addressingMode,omitempty"`
	MemoryBytes       uint64      `json:"memoryBytes"`
	ComputeCapability string      `json:"computeCapability"`
	PCIBusID          string      `json:"pciBusID"`
	NUMANode          int         `json:"numaNode"` // -1 when the platform does not say
	Serial            string      `json:"serial,omitempty"`
	MIGCapable        bool        `json:"migCapable"`
	MIGEnabled        bool        `json:"migEnabled"`
	MIGDevices        []MIGDevice `json:"migDevices,omitempty"`
	// PCIClass is the PCI class code (0x030200 3D controller = compute mode,
	// 0x030000 VGA = graphics mode); 0 when the backend did not read it.
	PCIClass uint32 `json:"pciClass,omitempty"`
	// Fabric is the GPU's place in an NVLink fabric (a multi-node NVLink
	// domain, IMEX) once the fabric manager has attached it; nil otherwise.
	Fabric *Fabric `json:"fabric,omitempty"`
}

// Fabric is what NVML says of a GPU attached to an NVLink fabric.
type Fabric struct {
	ClusterUUID string `json:"clusterUUID"` // the NVLink domain, as a UUID string
	CliqueID    uint32 `json:"cliqueID"`    // the clique within it
}

// Node is everything a backend discovered about one machine.
type Node struct {
	Backend           string `json:"backend"`
	Profile           string `json:"profile,omitempty"` // simulator profile, if simulated
	DriverVersion     string `json:"driverVersion"`
	CUDADriverVersion string `json:"cudaDriverVersion"`
	GPUs              []GPU  `json:"gpus"`
	// Links[i][j] connects GPUs[i] and GPUs[j]; the diagonal is unused.
	Links [][]Link `json:"links"`
	// LinksPending: the links are still being scanned (Links is nil); the
	// store gets them with SetLinks. Placement that needs them waits.
	LinksPending bool `json:"linksPending,omitempty"`
	// DevRoot is the host folder holding the device nodes (/dev on a real node).
	DevRoot string `json:"devRoot"`
}

// Validate checks the invariants every layer above relies on.
func (n *Node) Validate() error {
	seen := map[string]bool{}
	minors := map[int]bool{}
	for i, g := range n.GPUs {
		if g.UUID == "" {
			return fmt.Errorf("GPU %d has no UUID", i)
		}
		if seen[g.UUID] {
			return fmt.Errorf("GPU UUID %s appears twice", g.UUID)
		}
		seen[g.UUID] = true
		if minors[g.Minor] {
			return fmt.Errorf("device minor %d appears twice (GPU %s)", g.Minor, g.UUID)
		}
		minors[g.Minor] = true
		migIndex := map[int]bool{}
		for _, m := range g.MIGDevices {
			if m.UUID == "" || seen[m.UUID] {
				return fmt.Errorf("GPU %s has a MIG device with a missing or repeated UUID %q", g.UUID, m.UUID)
			}
			seen[m.UUID] = true
			// Index names the instance (<gpu>:<index>) in device IDs and CDI names.
			if m.Index < 0 || migIndex[m.Index] {
				return fmt.Errorf("GPU %s: MIG device %s has a negative or repeated index %d", g.UUID, m.UUID, m.Index)
			}
			migIndex[m.Index] = true
		}
	}
	if len(n.Links) != 0 {
		if len(n.Links) != len(n.GPUs) {
			return fmt.Errorf("link matrix has %d rows for %d GPUs", len(n.Links), len(n.GPUs))
		}
		for i, row := range n.Links {
			if len(row) != len(n.GPUs) {
				return fmt.Errorf("link matrix row %d has %d entries for %d GPUs", i, len(row), len(n.GPUs))
			}
			for j := range row {
				if i != j && n.Links[i][j] != n.Links[j][i] {
					return fmt.Errorf("link matrix is not symmetric at GPU%d/GPU%d: %+v vs %+v", i, j, n.Links[i][j], n.Links[j][i])
				}
			}
		}
	}
	return nil
}

// GPUByUUID returns the GPU with that UUID.
func (n *Node) GPUByUUID(uuid string) (GPU, int, bool) {
	for i, g := range n.GPUs {
		if g.UUID == uuid {
			return g, i, true
		}
	}
	return GPU{}, -1, false
}

// Link returns the link between GPUs at positions i and j, tolerating a node
// without a matrix.
func (n *Node) Link(i, j int) Link {
	if i < len(n.Links) && j < len(n.Links[i]) {
		return n.Links[i][j]
	}
	return Link{}
}
