package allocator

import (
	"context"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/allocator/allocatortest"
	"github.com/gpulet/gpulet/internal/inventory"
)

// refPairs computes the pair-score matrix of a fixture straight from the
// package doc, independently of NewTopology.
func refPairs(links [][]inventory.Link, devs []Device) [][]int {
	maxNV := 0
	for i := range links {
		for j := range links[i] {
			if i != j {
				maxNV = max(maxNV, links[i][j].NVLinks)
			}
		}
	}
	same := 100*maxNV + 60
	p := make([][]int, len(devs))
	for a := range devs {
		p[a] = make([]int, len(devs))
		for b := range devs {
			da, db := devs[a], devs[b]
			switch {
			case a == b:
			case da.GPU == db.GPU:
				p[a][b] = same
			default:
				var l inventory.Link
				if len(links) > 0 {
					l = links[da.GPU][db.GPU]
				}
				lvl := int(l.PCIe)
				if lvl == 0 {
					lvl = 10
					if da.NUMA >= 0 && da.NUMA == db.NUMA {
						lvl = 20
					}
				}
				p[a][b] = 100*l.NVLinks + lvl
			}
		}
	}
	return p
}

func setScore(p [][]int, set []int) int {
	s := 0
	for i := range set {
		for j := i + 1; j < len(set); j++ {
			s += p[set[i]][set[j]]
		}
	}
	return s
}

// refBest enumerates every size-k subset of avail containing must and returns
// the best score and, among sets of that score, the best score left among the
// remaining available devices. ok is false when there are more than limit
// candidate sets.
func refBest(p [][]int, avail, must []int, k, limit int) (best, bestRest int, ok bool) {
	isMust := map[int]bool{}
	for _, m := range must {
		isMust[m] = true
	}
	var rest []int
	for _, a := range avail {
		if !isMust[a] {
			rest = append(rest, a)
		}
	}
	need := k - len(must)
	if binom(len(rest), need) > float64(limit) {
		return 0, 0, false
	}
	best, bestRest = -1, -1
	chosen := append([]int(nil), must...)
	inSet := map[int]bool{}
	var rec func(start int)
	rec = func(start int) {
		if len(chosen) == k {
			s := setScore(p, chosen)
			if s < best {
				return
			}
			for _, c := range chosen {
				inSet[c] = true
			}
			var left []int
			for _, a := range avail {
				if !inSet[a] {
					left = append(left, a)
				}
			}
			for _, c := range chosen {
				delete(inSet, c)
			}
			r := setScore(p, left)
			if s > best || r > bestRest {
				best, bestRest = s, r
			}
			return
		}
		for i := start; i <= len(rest)-(k-len(chosen)); i++ {
			chosen = append(chosen, rest[i])
			rec(i + 1)
			chosen = chosen[:len(chosen)-1]
		}
	}
	rec(0)
	return best, bestRest, true
}

func binom(n, k int) float64 {
	if k < 0 || k > n {
		return 0
	}
	r := 1.0
	for i := 0; i < k; i++ {
		r = r * float64(n-i) / float64(i+1)
	}
	return r
}

// checkValid fails unless got is a valid answer to the request.
func checkValid(t testing.TB, topo *Topology, avail, must []string, size int, got []string) {
	t.Helper()
	if len(got) != size {
		t.Fatalf("got %d devices %v, want %d", len(got), got, size)
	}
	inAvail := map[string]bool{}
	for _, a := range avail {
		inAvail[a] = true
	}
	seen := map[string]bool{}
	for _, g := range got {
		if seen[g] {
			t.Fatalf("device %s returned twice in %v", g, got)
		}
		seen[g] = true
		if !inAvail[g] {
			t.Fatalf("device %s returned but not available (avail %v)", g, avail)
		}
		if _, ok := topo.index[g]; !ok {
			t.Fatalf("unknown device %s returned", g)
		}
	}
	for _, m := range must {
		if !seen[m] {
			t.Fatalf("must-include %s missing from %v", m, got)
		}
	}
}

func idsOf(devs []Device, idx []int) []string {
	out := make([]string, len(idx))
	for i, d := range idx {
		out[i] = devs[d].ID
	}
	return out
}

func indexOf(topo *Topology, ids []string) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = topo.index[id]
	}
	return out
}

func maskIdx(m uint64) []int {
	var out []int
	for m != 0 {
		b := bits.TrailingZeros64(m)
		out = append(out, b)
		m &^= 1 << b
	}
	return out
}

func mustTopo(t testing.TB, f Fixture) *Topology {
	t.Helper()
	topo, err := NewTopology(f.Links, f.Devices)
	if err != nil {
		t.Fatalf("%s: %v", f.Name, err)
	}
	return topo
}

func fixture(t testing.TB, name string) Fixture {
	t.Helper()
	for _, f := range Fixtures() {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("no fixture %s", name)
	return Fixture{}
}

// longCtx gives the search room to finish even under -race on slow machines.
func longCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func randSubset(r *rand.Rand, n, k int) []int {
	return r.Perm(n)[:k]
}

func describe(devs []Device, avail, must []int, k int) string {
	return fmt.Sprintf("avail=%v must=%v size=%d", idsOf(devs, avail), idsOf(devs, must), k)
}

// Fixture is a reference topology of allocatortest with this package's
// Device (allocatortest cannot import the allocator: its tests import it).
type Fixture struct {
	Name    string
	Links   [][]inventory.Link
	Devices []Device
}

func fromFixture(f allocatortest.Fixture) Fixture {
	return Fixture{Name: f.Name, Links: f.Links, Devices: allocatortest.To[Device](f.Devices)}
}

// Fixtures is allocatortest.Fixtures.
func Fixtures() []Fixture {
	var out []Fixture
	for _, f := range allocatortest.Fixtures() {
		out = append(out, fromFixture(f))
	}
	return out
}

// Replicated is allocatortest.Replicated.
func Replicated(f Fixture, n int) Fixture {
	return fromFixture(allocatortest.Replicated(allocatortest.Fixture{Name: f.Name, Links: f.Links, Devices: allocatortest.From(f.Devices)}, n))
}

// DGX1V100 is allocatortest.DGX1V100.
func DGX1V100() ([][]inventory.Link, []Device) {
	l, d := allocatortest.DGX1V100()
	return l, allocatortest.To[Device](d)
}

// newLinks is allocatortest.NewLinks.
var newLinks = allocatortest.NewLinks

// wholeGPUs is allocatortest.WholeGPUs.
func wholeGPUs(n int, numa func(int) int) []Device {
	return allocatortest.To[Device](allocatortest.WholeGPUs(n, numa))
}
