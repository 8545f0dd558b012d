// Package allocator answers the kubelet's GetPreferredAllocation: given the
// devices still free on a node, it picks the set of a requested size whose
// members are best connected to each other, and among equally good sets the
// one that leaves the free devices best connected for the next request.
//
// # Objective
//
// A pair of devices on different GPUs g and h scores
//
//	100 × NVLinks(g,h) + PCIe level score(g,h)
//
// with the level scores of inventory.Level (SYS 10, NODE 20, PHB 30, PXB 40,
// PIX 50): the table NVIDIA's go-gpuallocator uses, so scores compare with
// theirs. A pair with no known PCIe level (no link matrix, or LevelUnknown)
// scores NODE when both devices sit on the same known NUMA node and SYS
// otherwise. Two devices on the same parent GPU (MIG instances, time-slice
// replicas) are the closest pair there is: they score
//
//	100 × (most NVLinks between any two GPUs) + 60 (LevelSame)
//
// raised to one above the best cross-GPU pair if that were ever not higher.
//
// The primary objective is the set's score: the sum of its pair scores
// (Topology.Score). The secondary objective, which only breaks ties of the
// primary, is fragmentation: among sets of the best score, prefer the one whose
// removal leaves the remaining free devices with the highest sum of pair
// scores among themselves. As the total over all free devices is fixed, that is
// the set with the smallest score "cut" between the chosen and the remaining
// devices, i.e. the smallest sum of its members' degrees (a member's degree is
// the sum of its pair scores with all other free devices). For a single device
// the primary score is always 0, so the pick is the device whose loss costs
// the others least: the least connected one, which keeps well-connected
// groups (NVLink cliques, whole GPUs of MIG instances) whole.
//
// # Search
//
// Devices that are interchangeable for the objective (devices on one parent
// GPU; GPUs whose pair scores to every other free device are equal) are merged
// into classes, and the search chooses how many devices to take from each
// class. Greedy starts (from the must-include devices, and from them plus one
// device of each of the first classes), improved by moving one or several
// devices between classes, give an answer at once; a depth-first
// branch-and-bound over the class counts then either proves it optimal or
// finds the optimum. Classes are searched cluster by cluster (each next class
// is the one most strongly tied to those already placed), so an NVLink island
// or a GPU's partitions are decided together. The upper bound charges every
// device still addable its score to what is already chosen plus half of its
// best possible pair scores among the devices still addable; ties on the
// score are bounded by the smallest degrees still addable. The search stops
// at the ctx deadline (DefaultSearchBudget when ctx has none) and keeps
// the best answer so far; a search space of at most exactSpace count vectors
// (at least every request over at most 12 free devices) always runs to the
// end, so small nodes always get the exact optimum.
package allocator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/gpulet/gpulet/internal/inventory"
)

// DefaultSearchBudget bounds the search when ctx carries no deadline.
const DefaultSearchBudget = 50 * time.Millisecond

// exactSpace is the largest search (product over classes of count choices)
// that ignores the deadline: it finishes in microseconds.
const exactSpace = 1 << 12

// maxNVLinks bounds link counts so scores cannot overflow.
const maxNVLinks = 1 << 10

// Device is one allocatable device: a whole GPU or a partition (MIG instance /
// time-slice replica) of one.
type Device struct {
	ID   string // device-plugin ID
	GPU  int    // index into the node's GPUs / link matrix (the parent GPU)
	NUMA int    // -1 when unknown
}

// Topology is the precomputed pair-score table of one node's devices. It is
// read-only after NewTopology and safe for concurrent use.
type Topology struct {
	devices []Device
	index   map[string]int
	// Devices with the same GPU and NUMA node score alike against everyone:
	// they form one group and w is kept per group pair.
	group   []int
	ngroups int
	w       []int64 // ngroups × ngroups; the diagonal is the same-GPU score
	same    int64
	// gpuDevices[g] counts the devices of GPU g, so a request can tell how
	// many are in use; shared says some GPU has two or more.
	ngpus      int
	gpuDevices []int
	shared     bool
	policy     Policy
}

// Stats describes how a request was answered.
type Stats struct {
	Exact   bool  // the search finished: the answer is optimal
	Nodes   int64 // branch-and-bound nodes visited
	Classes int   // classes of interchangeable devices the request reduced to
}

// NewTopology precomputes pair scores once. links[i][j] is
// inventory.Node.Links; nil or empty means every pair scores by NUMA only.
func NewTopology(links [][]inventory.Link, devices []Device) (*Topology, error) {
	n := len(links)
	maxNV := 0
	for i, row := range links {
		if len(row) != n {
			return nil, fmt.Errorf("allocator: link matrix row %d has %d entries for %d GPUs", i, len(row), n)
		}
		for j, l := range row {
			if i == j {
				continue
			}
			if l.NVLinks < 0 || l.NVLinks > maxNVLinks {
				return nil, fmt.Errorf("allocator: GPU%d/GPU%d has %d NVLinks, want 0..%d", i, j, l.NVLinks, maxNVLinks)
			}
			if l.PCIe < inventory.LevelUnknown || l.PCIe > inventory.LevelSame {
				return nil, fmt.Errorf("allocator: GPU%d/GPU%d has PCIe level %d, want 0..%d", i, j, int(l.PCIe), int(inventory.LevelSame))
			}
			if links[j][i] != l {
				return nil, fmt.Errorf("allocator: link matrix is not symmetric at GPU%d/GPU%d: %+v vs %+v", i, j, l, links[j][i])
			}
			maxNV = max(maxNV, l.NVLinks)
		}
	}
	t := &Topology{
		devices: slices.Clone(devices),
		index:   make(map[string]int, len(devices)),
		group:   make([]int, len(devices)),
	}
	type key struct{ gpu, numa int }
	groupOf := map[key]int{}
	var keys []key
	for i, d := range t.devices {
		if d.ID == "" {
			return nil, fmt.Errorf("allocator: device %d has an empty ID", i)
		}
		if _, dup := t.index[d.ID]; dup {
			return nil, fmt.Errorf("allocator: device ID %q appears twice", d.ID)
		}
		if d.GPU < 0 || (n > 0 && d.GPU >= n) {
			return nil, fmt.Errorf("allocator: device %q has GPU index %d outside the %d-GPU link matrix", d.ID, d.GPU, n)
		}
		if d.NUMA < 0 {
			t.devices[i].NUMA = -1
		}
		t.index[d.ID] = i
		k := key{d.GPU, t.devices[i].NUMA}
		g, ok := groupOf[k]
		if !ok {
			g = len(keys)
			groupOf[k] = g
			keys = append(keys, k)
		}
		t.group[i] = g
	}
	cross := func(a, b key) int64 {
		var l inventory.Link
		if n > 0 {
			l = links[a.gpu][b.gpu]
		}
		lvl := l.PCIe
		if lvl == inventory.LevelUnknown {
			lvl = inventory.LevelSYS
			if a.numa >= 0 && a.numa == b.numa {
				lvl = inventory.LevelNODE
			}
		}
		return int64(100*l.NVLinks + int(lvl))
	}
	for _, d := range t.devices {
		t.ngpus = max(t.ngpus, d.GPU+1)
	}
	t.gpuDevices = make([]int, t.ngpus)
	for _, d := range t.devices {
		t.gpuDevices[d.GPU]++
		t.shared = t.shared || t.gpuDevices[d.GPU] > 1
	}
	t.ngroups = len(keys)
	t.same = int64(100*maxNV + int(inventory.LevelSame))
	t.w = make([]int64, t.ngroups*t.ngroups)
	for a := range keys {
		for b := range keys {
			if keys[a].gpu != keys[b].gpu {
				t.same = max(t.same, cross(keys[a], keys[b])+1)
			}
		}
	}
	for a := range keys {
		for b := range keys {
			v := t.same
			if keys[a].gpu != keys[b].gpu {
				v = cross(keys[a], keys[b])
			}
			t.w[a*t.ngroups+b] = v
		}
	}
	return t, nil
}

// SameGPUScore is the pair score of two devices on one parent GPU.
func (t *Topology) SameGPUScore() int {
	if t == nil {
		return 0
	}
	return int(t.same)
}

// Score returns the objective of a set: the sum of its pair scores. IDs the
// topology does not know are ignored; it does not check for duplicates.
func (t *Topology) Score(ids []string) int {
	if t == nil {
		return 0
	}
	idx := make([]int, 0, len(ids))
	for _, id := range ids {
		if i, ok := t.index[id]; ok {
			idx = append(idx, t.group[i])
		}
	}
	var s int64
	for a := range idx {
		for b := a + 1; b < len(idx); b++ {
			s += t.w[idx[a]*t.ngroups+idx[b]]
		}
	}
	return int(s)
}

// Preferred returns size device IDs chosen among available, containing all of
// mustInclude, best by the package objective. Bad input (size <= 0, size >
// len(available), len(mustInclude) > size, unknown or repeated IDs,
// mustInclude not within available) is an error. When ctx's deadline passes
// mid-search it returns the best answer found so far, never an error.
func (t *Topology) Preferred(ctx context.Context, available, mustInclude []string, size int) ([]string, error) {
	ids, _, err := t.PreferredStats(ctx, available, mustInclude, size)
	return ids, err
}

// PreferredStats is Preferred that also says how the answer was found.
// With a policy (WithPolicy) on a device list where devices share GPUs, the
// policy decides how many devices each GPU gives and the objective only
// breaks ties between equally loaded GPUs (see Policy).
func (t *Topology) PreferredStats(ctx context.Context, available, mustInclude []string, size int) ([]string, Stats, error) {
	if t == nil {
		return nil, Stats{}, errors.New("allocator: nil topology")
	}
	if size <= 0 {
		return nil, Stats{}, fmt.Errorf("allocator: requested size %d, want at least 1", size)
	}
	if size > len(available) {
		return nil, Stats{}, fmt.Errorf("allocator: requested %d devices but only %d are available", size, len(available))
	}
	if len(mustInclude) > size {
		return nil, Stats{}, fmt.Errorf("allocator: %d must-include devices exceed the requested size %d", len(mustInclude), size)
	}
	const (
		free = 1
		must = 2
	)
	state := make([]uint8, len(t.devices))
	avail := make([]int, 0, len(available))
	for _, id := range available {
		i, ok := t.index[id]
		if !ok {
			return nil, Stats{}, fmt.Errorf("allocator: available device %q is not in the topology", id)
		}
		if state[i] != 0 {
			return nil, Stats{}, fmt.Errorf("allocator: available device %q is listed twice", id)
		}
		state[i] = free
		avail = append(avail, i)
	}
	for _, id := range mustInclude {
		i, ok := t.index[id]
		switch {
		case !ok:
			return nil, Stats{}, fmt.Errorf("allocator: must-include device %q is not in the topology", id)
		case state[i] == must:
			return nil, Stats{}, fmt.Errorf("allocator: must-include device %q is listed twice", id)
		case state[i] != free:
			return nil, Stats{}, fmt.Errorf("allocator: must-include device %q is not available", id)
		}
		state[i] = must
	}
	slices.Sort(avail)
	if size == len(avail) {
		return t.ids(avail), Stats{Exact: true}, nil
	}
	if t.shared && t.policy != PolicyTopology {
		chosen, st := t.preferShared(ctx, avail, state, must, size)
		return t.ids(chosen), st, nil
	}
	classes := t.classes(avail, state, must)
	s := newSolver(t, classes, size)
	s.solve(ctx)
	chosen := make([]int, 0, size)
	for x, c := range s.best {
		chosen = append(chosen, s.items[x][:c]...)
	}
	slices.Sort(chosen)
	return t.ids(chosen), Stats{Exact: !s.stopped, Nodes: s.nodes, Classes: len(classes)}, nil
}

func (t *Topology) ids(idx []int) []string {
	out := make([]string, len(idx))
	for i, d := range idx {
		out[i] = t.devices[d].ID
	}
	return out
}

// class is a set of available devices interchangeable for the objective.
type class struct {
	rep   int   // a topology group, for scores against other classes
	items []int // device indices, must-include first
	min   int   // how many of items are must-include
	win   int64 // pair score between two members
	twins bool  // made of single free devices, so more twins may join
}

// classes groups the available devices (sorted by index) into classes: each
// topology group with two or more free devices is one class; single free
// devices are merged while they are twins (equal scores to everyone outside
// the class and one score within it).
func (t *Topology) classes(avail []int, state []uint8, must uint8) []class {
	pos := make([]int, t.ngroups)
	for i := range pos {
		pos[i] = -1
	}
	var gs []class
	for _, d := range avail {
		g := t.group[d]
		if pos[g] < 0 {
			pos[g] = len(gs)
			gs = append(gs, class{rep: g, win: t.same, twins: true})
		}
		c := &gs[pos[g]]
		c.items = append(c.items, d)
		if state[d] == must {
			c.min++
		}
	}
	for i := range gs {
		c := &gs[i]
		// Must-include first, so taking the first n items honours them.
		slices.SortStableFunc(c.items, func(a, b int) int {
			return cmp.Compare(state[b], state[a])
		})
	}
	G := t.ngroups
	w := func(a, b int) int64 { return t.w[a*G+b] }
	var out []class
	member := make([]int, len(gs)) // query group -> merged class, -1 none
	for i := range member {
		member[i] = -1
	}
	for i := range gs {
		if len(gs[i].items) > 1 {
			gs[i].twins = false
			member[i] = len(out)
			out = append(out, gs[i])
		}
	}
	for i := range gs {
		if len(gs[i].items) > 1 {
			continue
		}
		s := gs[i].rep
		joined := false
		for ci := range out {
			c := &out[ci]
			if !c.twins {
				continue // several devices of one GPU: no other GPU scores the same-GPU score to them
			}
			win := int64(-1)
			if len(c.items) > 1 {
				win = c.win
			}
			ok := true
			for j := range gs {
				if j == i {
					continue
				}
				x := gs[j].rep
				if member[j] == ci {
					if win < 0 {
						win = w(s, x)
					}
					if w(s, x) != win {
						ok = false
						break
					}
				} else if w(s, x) != w(c.rep, x) {
					ok = false
					break
				}
			}
			if ok {
				c.win = win
				c.items = append(c.items, gs[i].items[0])
				c.min += gs[i].min
				member[i] = ci
				joined = true
				break
			}
		}
		if !joined {
			member[i] = len(out)
			out = append(out, gs[i])
		}
	}
	for i := range out {
		c := &out[i]
		slices.SortStableFunc(c.items, func(a, b int) int {
			return cmp.Compare(state[b], state[a])
		})
	}
	return out
}
