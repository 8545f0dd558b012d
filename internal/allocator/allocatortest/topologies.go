// Package allocatortest holds the allocator's reference topologies, shared
// by its tests and tools/allocbench (test code: no product package imports
// it, hack/layers.sh checks). Each returns a link matrix as
// inventory.Node.Links holds it and one whole-GPU device per GPU (or seven
// MIG devices per GPU).
package allocatortest

import (
	"fmt"

	"github.com/gpulet/gpulet/internal/inventory"
)

// Device is allocator.Device's shape (ID, parent GPU, NUMA node): convert
// with allocator.Device(d). This package cannot import the allocator, whose
// own tests import it.
type Device struct {
	ID   string
	GPU  int
	NUMA int
}

// Fixture names a reference topology.
type Fixture struct {
	Name    string
	Links   [][]inventory.Link
	Devices []Device
}

// Fixtures returns every reference topology, smallest first.
func Fixtures() []Fixture {
	var out []Fixture
	add := func(name string, l [][]inventory.Link, d []Device) {
		out = append(out, Fixture{Name: name, Links: l, Devices: d})
	}
	l, d := PCIe4()
	add("pcie-4", l, d)
	l, d = PCIe8()
	add("pcie-8", l, d)
	l, d = DGX1V100()
	add("dgx1-v100", l, d)
	l, d = DGXH100()
	add("dgx-h100", l, d)
	l, d = Islands16()
	add("islands-16", l, d)
	l, d = Islands32()
	add("islands-32", l, d)
	l, d = DGXH100MIG7()
	add("dgx-h100-mig56", l, d)
	l, d = Islands16MIG4()
	add("islands-16-mig64", l, d)
	return out
}

// NewLinks returns an n×n matrix filled by f for every i≠j (f is called for
// i<j and mirrored, so the matrix is symmetric by construction).
func NewLinks(n int, f func(i, j int) inventory.Link) [][]inventory.Link {
	m := make([][]inventory.Link, n)
	for i := range m {
		m[i] = make([]inventory.Link, n)
	}
	for i := 0; i < n; i++ {
		for j := i + 1; j < n; j++ {
			m[i][j] = f(i, j)
			m[j][i] = m[i][j]
		}
	}
	return m
}

// WholeGPUs returns one device per GPU, named gpuN, with NUMA numa(N).
func WholeGPUs(n int, numa func(int) int) []Device {
	d := make([]Device, n)
	for i := range d {
		d[i] = Device{ID: fmt.Sprintf("gpu%d", i), GPU: i, NUMA: numa(i)}
	}
	return d
}

// dgx1NVLinks is `nvidia-smi topo -m` on a DGX-1 with V100s (hybrid
// cube-mesh): NV1 or NV2 between neighbours, none elsewhere.
var dgx1NVLinks = [8][8]int{
	{0, 1, 1, 2, 2, 0, 0, 0},
	{1, 0, 2, 1, 0, 2, 0, 0},
	{1, 2, 0, 2, 0, 0, 1, 0},
	{2, 1, 2, 0, 0, 0, 0, 1},
	{2, 0, 0, 0, 0, 1, 1, 2},
	{0, 2, 0, 0, 1, 0, 2, 1},
	{0, 0, 1, 0, 1, 2, 0, 2},
	{0, 0, 0, 1, 2, 1, 2, 0},
}

// DGX1V100 is a DGX-1 with eight V100s: hybrid cube-mesh NVLink, GPU pairs
// (0,1) (2,3) (4,5) (6,7) behind one PCIe switch (PIX), the rest of a socket
// through the host bridge (PHB), GPUs 0–3 on NUMA 0 and 4–7 on NUMA 1 (SYS).
func DGX1V100() ([][]inventory.Link, []Device) {
	links := NewLinks(8, func(i, j int) inventory.Link {
		l := inventory.Link{NVLinks: dgx1NVLinks[i][j]}
		switch {
		case i/2 == j/2:
			l.PCIe = inventory.LevelPIX
		case i/4 == j/4:
			l.PCIe = inventory.LevelPHB
		default:
			l.PCIe = inventory.LevelSYS
		}
		return l
	})
	return links, WholeGPUs(8, func(i int) int { return i / 4 })
}

// h100Links is the DGX H100 matrix over n GPUs: NVSwitch (18 links) between
// every pair, NODE within a NUMA node of four GPUs, SYS across.
func h100Links(n int) [][]inventory.Link {
	return NewLinks(n, func(i, j int) inventory.Link {
		l := inventory.Link{NVLinks: 18, PCIe: inventory.LevelSYS}
		if i/4 == j/4 {
			l.PCIe = inventory.LevelNODE
		}
		return l
	})
}

// DGXH100 is a DGX H100: eight GPUs on NVSwitch (NV18 everywhere), GPUs 0–3
// on NUMA 0 and 4–7 on NUMA 1.
func DGXH100() ([][]inventory.Link, []Device) {
	return h100Links(8), WholeGPUs(8, func(i int) int { return i / 4 })
}

// DGXH100MIG7 is the DGX H100 with every GPU split into seven MIG instances
// (56 devices), named gpuN-migM.
func DGXH100MIG7() ([][]inventory.Link, []Device) {
	return h100Links(8), splitGPUs(WholeGPUs(8, func(i int) int { return i / 4 }), 7)
}

// Islands16MIG4 is Islands16 with every GPU split into four MIG instances
// (64 devices), named gpuN-migM.
func Islands16MIG4() ([][]inventory.Link, []Device) {
	links, gpus := Islands16()
	return links, splitGPUs(gpus, 4)
}

// splitGPUs replaces every whole-GPU device by per partitions.
func splitGPUs(gpus []Device, per int) []Device {
	var devs []Device
	for _, g := range gpus {
		for m := 0; m < per; m++ {
			devs = append(devs, Device{ID: fmt.Sprintf("%s-mig%d", g.ID, m), GPU: g.GPU, NUMA: g.NUMA})
		}
	}
	return devs
}

// pcieSwitched is n GPUs without NVLink, two per PCIe switch (PIX), perSocket
// per socket (NODE within a socket, SYS across).
func pcieSwitched(n, perSocket int) ([][]inventory.Link, []Device) {
	links := NewLinks(n, func(i, j int) inventory.Link {
		switch {
		case i/2 == j/2:
			return inventory.Link{PCIe: inventory.LevelPIX}
		case i/perSocket == j/perSocket:
			return inventory.Link{PCIe: inventory.LevelNODE}
		default:
			return inventory.Link{PCIe: inventory.LevelSYS}
		}
	})
	return links, WholeGPUs(n, func(i int) int { return i / perSocket })
}

// PCIe4 is four GPUs without NVLink on two sockets, one PCIe switch of two
// GPUs per socket.
func PCIe4() ([][]inventory.Link, []Device) { return pcieSwitched(4, 2) }

// PCIe8 is eight GPUs without NVLink on two sockets, two PCIe switches of two
// GPUs per socket.
func PCIe8() ([][]inventory.Link, []Device) { return pcieSwitched(8, 4) }

// islands is n GPUs in NVSwitch islands of eight (NV18 within, no NVLink
// across), two GPUs per PCIe switch (PIX), NODE within a socket, SYS across;
// islandsPerSocket islands share a socket.
func islands(n, islandsPerSocket int) ([][]inventory.Link, []Device) {
	socket := func(i int) int { return i / 8 / islandsPerSocket }
	links := NewLinks(n, func(i, j int) inventory.Link {
		var l inventory.Link
		if i/8 == j/8 {
			l.NVLinks = 18
		}
		switch {
		case i/2 == j/2:
			l.PCIe = inventory.LevelPIX
		case socket(i) == socket(j):
			l.PCIe = inventory.LevelNODE
		default:
			l.PCIe = inventory.LevelSYS
		}
		return l
	})
	return links, WholeGPUs(n, socket)
}

// Islands16 is sixteen GPUs in two NVSwitch islands of eight, one island per
// socket.
func Islands16() ([][]inventory.Link, []Device) { return islands(16, 1) }

// Islands32 is thirty-two GPUs in four NVSwitch islands of eight, two islands
// per socket.
func Islands32() ([][]inventory.Link, []Device) { return islands(32, 2) }

// Replicated is f with every device shared n ways by time-slicing: device
// <id> becomes <id>::0 … <id>::n-1 on the same GPU, as gpulet names them.
func Replicated(f Fixture, n int) Fixture {
	var devs []Device
	for _, d := range f.Devices {
		for r := 0; r < n; r++ {
			devs = append(devs, Device{ID: fmt.Sprintf("%s::%d", d.ID, r), GPU: d.GPU, NUMA: d.NUMA})
		}
	}
	return Fixture{Name: fmt.Sprintf("%s-x%d", f.Name, n), Links: f.Links, Devices: devs}
}

// deviceShape is allocator.Device's underlying type.
type deviceShape interface {
	~struct {
		ID   string
		GPU  int
		NUMA int
	}
}

// To converts devices to the allocator's type: To[allocator.Device](f.Devices).
func To[T deviceShape](ds []Device) []T {
	out := make([]T, len(ds))
	for i, d := range ds {
		out[i] = T(d)
	}
	return out
}

// From converts the allocator's devices back.
func From[T deviceShape](ds []T) []Device {
	out := make([]Device, len(ds))
	for i, d := range ds {
		out[i] = Device(d)
	}
	return out
}
