package allocator

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
)

// Policy says how devices that share a parent GPU (time-slice replicas, MIG
// instances) are spread over their GPUs. The names and defaults are NVIDIA's
// (flags.plugin.sharedDevicesAllocationPolicy).
//
// A device of a GPU is "in use" when the kubelet did not offer it: the
// kubelet offers the free devices of a resource, so the others of that GPU
// are held by running containers (or are unhealthy, which equally makes
// the GPU less attractive to spread onto).
type Policy string

const (
	// PolicyTopology ignores load: the best-connected set by the package
	// objective, which packs shared devices onto few GPUs. It is what a
	// Topology does until WithPolicy, and what whole GPUs always get.
	PolicyTopology Policy = ""
	// PolicyDistributed (NVIDIA's default) spreads: a request takes devices
	// of distinct GPUs whenever enough GPUs have one free, as evenly as
	// possible otherwise, and the least-used GPUs first.
	PolicyDistributed Policy = "distributed"
	// PolicyPacked fills the GPU with the most devices in use first.
	PolicyPacked Policy = "packed"
)

// Policies lists the valid policy names, the default first.
var Policies = []Policy{PolicyDistributed, PolicyPacked}

// ParsePolicy reads a policy name as a user typed it.
func ParsePolicy(s string) (Policy, error) {
	for _, p := range Policies {
		if string(p) == s {
			return p, nil
		}
	}
	names := make([]string, len(Policies))
	for i, p := range Policies {
		names[i] = string(p)
	}
	return "", fmt.Errorf("shared-devices allocation policy %q is not one of %s", s, strings.Join(names, ", "))
}

// WithPolicy returns the topology answering with p for shared devices. The
// copy shares the precomputed tables (read-only), so it is cheap. On a
// device list where no two devices share a GPU the policy changes nothing:
// whole GPUs always get the topology-optimal set.
func (t *Topology) WithPolicy(p Policy) (*Topology, error) {
	if t == nil {
		return nil, fmt.Errorf("allocator: nil topology")
	}
	if p != PolicyTopology {
		if _, err := ParsePolicy(string(p)); err != nil {
			return nil, fmt.Errorf("allocator: %w", err)
		}
	}
	c := *t
	c.policy = p
	return &c, nil
}

// Policy is the policy the topology answers with.
func (t *Topology) Policy() Policy {
	if t == nil {
		return PolicyTopology
	}
	return t.policy
}

// maxTieSets bounds the exact enumeration of equally loaded GPU sets; past
// it a greedy start improved by swaps answers (C(16,8) = 12870 still fits).
const maxTieSets = 1 << 14

// gpuLoad is one GPU that has free devices in a request.
type gpuLoad struct {
	gpu   int
	free  []int // free device indices, must-include first, then by index
	must  int   // how many of free are must-include
	inUse int   // devices of this GPU the kubelet did not offer
	take  int   // devices chosen so far
}

// preferShared answers a request on a device list with shared GPUs under
// t.policy. avail holds the free device indices (sorted), state marks the
// must-include ones.
//
// The policy fixes how many devices each GPU gives; the topology only breaks
// ties between equally loaded GPUs: among them it takes the set with the
// best score together with everything already chosen, then the one that
// leaves the free devices best connected (the smallest degree sum), then
// the lowest GPU numbers.
func (t *Topology) preferShared(ctx context.Context, avail []int, state []uint8, must uint8, size int) ([]int, Stats) {
	pos := make([]int, t.ngpus)
	for i := range pos {
		pos[i] = -1
	}
	var gs []gpuLoad
	for _, d := range avail {
		g := t.devices[d].GPU
		if pos[g] < 0 {
			pos[g] = len(gs)
			gs = append(gs, gpuLoad{gpu: g})
		}
		l := &gs[pos[g]]
		l.free = append(l.free, d)
		if state[d] == must {
			l.must++
		}
	}
	need := size
	for i := range gs {
		l := &gs[i]
		slices.SortStableFunc(l.free, func(a, b int) int { return cmp.Compare(state[b], state[a]) })
		l.inUse = t.gpuDevices[l.gpu] - len(l.free)
		l.take = l.must
		need -= l.must
	}
	st := Stats{Exact: true, Classes: len(gs)}
	if need > 0 {
		// deg[d]: d's pair scores to every other free device, so a smaller
		// degree sum leaves the rest better connected.
		deg := make(map[int]int64, len(avail))
		degOf := func(d int) int64 {
			if v, ok := deg[d]; ok {
				return v
			}
			var s int64
			for _, y := range avail {
				if y != d {
					s += t.pair(d, y)
				}
			}
			deg[d] = s
			return s
		}
		if t.policy == PolicyPacked {
			t.packed(gs, need, degOf)
		} else {
			st = t.distributed(ctx, gs, need, degOf, st)
		}
	}
	chosen := make([]int, 0, size)
	for _, l := range gs {
		chosen = append(chosen, l.free[:l.take]...)
	}
	slices.Sort(chosen)
	return chosen, st
}

func (t *Topology) pair(a, b int) int64 {
	return t.w[t.group[a]*t.ngroups+t.group[b]]
}

// distributed spreads need more devices over gs. Taking the k-th device of
// a GPU with u devices in use costs (k, u+k), compared lexicographically: the
// first part keeps the request itself spread (distinct GPUs while there are
// enough, then as even as it gets), the second sends it to the least-used
// GPUs. Both grow with k, so the cheapest need steps are an optimal choice;
// steps cheaper than the need-th are forced and the GPUs whose next step
// costs exactly as much are the ties the topology decides (one device each,
// as a GPU has at most one step of any cost).
func (t *Topology) distributed(ctx context.Context, gs []gpuLoad, need int, degOf func(int) int64, st Stats) Stats {
	scale := int64(len(t.devices) + 1) // > any u+k, so the pair packs into one int64
	cost := func(l *gpuLoad, k int) int64 { return int64(k)*scale + int64(l.inUse+k) }
	var steps []int64
	for i := range gs {
		l := &gs[i]
		for k := l.take; k < len(l.free); k++ {
			steps = append(steps, cost(l, k))
		}
	}
	slices.Sort(steps)
	limit := steps[need-1]
	var ties []int
	for i := range gs {
		l := &gs[i]
		for l.take < len(l.free) && cost(l, l.take) < limit {
			l.take++
			need--
		}
		if l.take < len(l.free) && cost(l, l.take) == limit {
			ties = append(ties, i)
		}
	}
	if need == 0 {
		return st
	}
	var chosen []int
	for _, l := range gs {
		chosen = append(chosen, l.free[:l.take]...)
	}
	cand := make([]int, len(ties)) // the device each tied GPU would give
	for j, i := range ties {
		cand[j] = gs[i].free[gs[i].take]
	}
	pick, exact, nodes := t.bestTies(ctx, chosen, cand, need, degOf)
	for _, j := range pick {
		gs[ties[j]].take++
	}
	st.Exact, st.Nodes = exact, nodes
	return st
}

// bestTies picks r of cand (one device per tied GPU, in GPU order) to join
// chosen: the largest score of the whole set, then the smallest degree sum,
// then the first in order. It enumerates every choice when there are at
// most maxTieSets and ctx allows; otherwise it improves a greedy choice by
// swaps.
func (t *Topology) bestTies(ctx context.Context, chosen, cand []int, r int, degOf func(int) int64) (pick []int, exact bool, nodes int64) {
	n := len(cand)
	attach := make([]int64, n)
	degs := make([]int64, n)
	for j, c := range cand {
		for _, x := range chosen {
			attach[j] += t.pair(c, x)
		}
		degs[j] = degOf(c)
	}
	eval := func(set []int) (s, d int64) {
		for a, x := range set {
			s += attach[x]
			d += degs[x]
			for _, y := range set[a+1:] {
				s += t.pair(cand[x], cand[y])
			}
		}
		return s, d
	}
	better := func(s, d, bs, bd int64) bool { return s > bs || (s == bs && d < bd) }

	// Greedy start: repeatedly the candidate best tied to what is chosen.
	in := make([]bool, n)
	pick = make([]int, 0, r)
	for len(pick) < r {
		bx, bg := -1, int64(0)
		for x := range n {
			if in[x] {
				continue
			}
			g := attach[x]
			for _, y := range pick {
				g += t.pair(cand[x], cand[y])
			}
			if bx < 0 || g > bg || (g == bg && degs[x] < degs[bx]) {
				bx, bg = x, g
			}
		}
		in[bx] = true
		pick = append(pick, bx)
	}
	slices.Sort(pick)
	bs, bd := eval(pick)

	if binomial(n, r) <= maxTieSets {
		done := ctx.Done()
		set := make([]int, r)
		for i := range set {
			set[i] = i
		}
		for {
			nodes++
			if s, d := eval(set); better(s, d, bs, bd) || (s == bs && d == bd && slices.Compare(set, pick) < 0) {
				pick, bs, bd = slices.Clone(set), s, d
			}
			// Next combination in lexicographic order.
			i := r - 1
			for i >= 0 && set[i] == n-r+i {
				i--
			}
			if i < 0 {
				return pick, true, nodes
			}
			set[i]++
			for j := i + 1; j < r; j++ {
				set[j] = set[j-1] + 1
			}
			if nodes%256 == 0 && done != nil {
				select {
				case <-done:
					return pick, false, nodes
				default:
				}
			}
		}
	}
	// Too many sets: swap one picked candidate for one left out while that
	// improves, within the deadline.
	for improved := true; improved && ctx.Err() == nil; {
		improved = false
		for a := range pick {
			for x := range n {
				if in[x] {
					continue
				}
				nodes++
				old := pick[a]
				pick[a] = x
				if s, d := eval(pick); better(s, d, bs, bd) {
					in[old], in[x] = false, true
					bs, bd, improved = s, d, true
					continue
				}
				pick[a] = old
			}
		}
	}
	return pick, false, nodes
}

// packed fills GPUs with the most devices in use first, counting the
// must-include devices as in use already. Among equally used GPUs it fills
// first the one best tied to what is chosen, then the one whose devices
// are least connected to the other free devices.
func (t *Topology) packed(gs []gpuLoad, need int, degOf func(int) int64) {
	var chosen []int
	for _, l := range gs {
		chosen = append(chosen, l.free[:l.take]...)
	}
	done := make([]bool, len(gs))
	for need > 0 {
		bi := -1
		var bAtt int64
		for i := range gs {
			l := &gs[i]
			if done[i] || l.take == len(l.free) {
				continue
			}
			c := l.free[l.take]
			var att int64
			for _, x := range chosen {
				att += t.pair(c, x)
			}
			if bi < 0 {
				bi, bAtt = i, att
				continue
			}
			b := &gs[bi]
			u, bu := l.inUse+l.take, b.inUse+b.take
			switch {
			case u != bu:
				if u > bu {
					bi, bAtt = i, att
				}
			case att != bAtt:
				if att > bAtt {
					bi, bAtt = i, att
				}
			case degOf(c) < degOf(b.free[b.take]):
				bi, bAtt = i, att
			}
		}
		l := &gs[bi]
		done[bi] = true
		n := min(need, len(l.free)-l.take)
		chosen = append(chosen, l.free[l.take:l.take+n]...)
		l.take += n
		need -= n
	}
}

// binomial is C(n, k), saturating above maxTieSets.
func binomial(n, k int) int {
	k = min(k, n-k)
	if k < 0 {
		return 0
	}
	b := 1
	for i := 1; i <= k; i++ {
		b = b * (n - k + i) / i
		if b > maxTieSets {
			return maxTieSets + 1
		}
	}
	return b
}
