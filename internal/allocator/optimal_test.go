package allocator

import (
	"context"
	"math/bits"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/inventory"
)

// TestOptimalSmallExhaustive checks, on every fixture of at most 8 devices,
// every availability pattern, every size and every must-include set (up to
// one device under -short), that the answer is valid, has the
// brute-force optimal score, and among optimal sets leaves the best score for
// the remaining devices (the fragmentation tie-break).
func TestOptimalSmallExhaustive(t *testing.T) {
	maxMust := 8
	if testing.Short() {
		maxMust = 1
	}
	for _, f := range Fixtures() {
		n := len(f.Devices)
		if n > 8 {
			continue
		}
		t.Run(f.Name, func(t *testing.T) {
			topo := mustTopo(t, f)
			p := refPairs(f.Links, f.Devices)
			// score[m] is the brute-force score of the set m.
			score := make([]int, 1<<n)
			for m := 1; m < 1<<n; m++ {
				score[m] = setScore(p, maskIdx(uint64(m)))
			}
			ctx := context.Background()
			queries := 0
			for am := 1; am < 1<<n; am++ {
				avail := maskIdx(uint64(am))
				availIDs := idsOf(f.Devices, avail)
				for mm := am; ; mm = (mm - 1) & am {
					if bits.OnesCount(uint(mm)) <= maxMust {
						mustIDs := idsOf(f.Devices, maskIdx(uint64(mm)))
						for k := max(1, bits.OnesCount(uint(mm))); k <= len(avail); k++ {
							bestS, bestRest := -1, -1
							for xm := am; ; xm = (xm - 1) & am {
								if xm&mm == mm && bits.OnesCount(uint(xm)) == k {
									s, r := score[xm], score[am&^xm]
									if s > bestS || (s == bestS && r > bestRest) {
										bestS, bestRest = s, r
									}
								}
								if xm == 0 {
									break
								}
							}
							got, err := topo.Preferred(ctx, availIDs, mustIDs, k)
							if err != nil {
								t.Fatalf("%s: %v", describe(f.Devices, avail, maskIdx(uint64(mm)), k), err)
							}
							checkValid(t, topo, availIDs, mustIDs, k, got)
							var gm int
							for _, g := range indexOf(topo, got) {
								gm |= 1 << g
							}
							if score[gm] != bestS || score[am&^gm] != bestRest {
								t.Fatalf("%s: got %v score %d rest %d, optimum score %d rest %d",
									describe(f.Devices, avail, maskIdx(uint64(mm)), k), got, score[gm], score[am&^gm], bestS, bestRest)
							}
							if ts := topo.Score(got); ts != score[gm] {
								t.Fatalf("Score(%v) = %d, reference %d", got, ts, score[gm])
							}
							queries++
						}
					}
					if mm == 0 {
						break
					}
				}
			}
			t.Logf("%d requests optimal", queries)
		})
	}
}

// TestOptimalMIGSmall checks exact optimality on the 56-device MIG node when
// few devices are free: random availability of up to 10 devices, every size,
// with and without a must-include device.
func TestOptimalMIGSmall(t *testing.T) {
	f := fixture(t, "dgx-h100-mig56")
	topo := mustTopo(t, f)
	p := refPairs(f.Links, f.Devices)
	r := rand.New(rand.NewPCG(1, 2))
	trials := 150
	if testing.Short() {
		trials = 40
	}
	for range trials {
		a := 2 + r.IntN(9)
		avail := randSubset(r, len(f.Devices), a)
		for k := 1; k <= a; k++ {
			for _, must := range [][]int{nil, avail[:1]} {
				checkOptimal(t, topo, f, p, avail, must, k)
			}
		}
	}
}

// checkOptimal compares one answer with brute force.
func checkOptimal(t *testing.T, topo *Topology, f Fixture, p [][]int, avail, must []int, k int) bool {
	t.Helper()
	best, bestRest, ok := refBest(p, avail, must, k, 50000)
	if !ok {
		return false
	}
	availIDs, mustIDs := idsOf(f.Devices, avail), idsOf(f.Devices, must)
	got, st, err := topo.PreferredStats(longCtx(t), availIDs, mustIDs, k)
	if err != nil {
		t.Fatalf("%s: %v", describe(f.Devices, avail, must, k), err)
	}
	checkValid(t, topo, availIDs, mustIDs, k, got)
	gi := indexOf(topo, got)
	in := map[int]bool{}
	for _, g := range gi {
		in[g] = true
	}
	var left []int
	for _, a := range avail {
		if !in[a] {
			left = append(left, a)
		}
	}
	s, rest := setScore(p, gi), setScore(p, left)
	if !st.Exact {
		t.Fatalf("%s: search did not finish in 30s", describe(f.Devices, avail, must, k))
	}
	if s != best || rest != bestRest {
		t.Fatalf("%s (%s): got %v score %d rest %d, optimum score %d rest %d",
			f.Name, describe(f.Devices, avail, must, k), got, s, rest, best, bestRest)
	}
	return true
}

// TestOptimalRandomTopologies checks the branch-and-bound against brute force
// on random link matrices of 9–14 GPUs, some split into partitions, so that
// classes, twins and pruning all meet unstructured scores.
func TestOptimalRandomTopologies(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	topos := 30
	if testing.Short() {
		topos = 8
	}
	levels := []inventory.Level{0, inventory.LevelSYS, inventory.LevelNODE, inventory.LevelPHB, inventory.LevelPXB, inventory.LevelPIX}
	checked := 0
	for ti := range topos {
		n := 9 + r.IntN(6)
		links := newLinks(n, func(i, j int) inventory.Link {
			nv := 0
			if ti%3 != 0 { // every third topology has no NVLink at all
				nv = r.IntN(4)
				if r.IntN(3) == 0 {
					nv = 0
				}
			}
			return inventory.Link{NVLinks: nv, PCIe: levels[r.IntN(len(levels))]}
		})
		var devs []Device
		for g := range n {
			parts := 1
			if ti%2 == 1 && r.IntN(3) == 0 {
				parts = 2 + r.IntN(3)
			}
			for m := range parts {
				devs = append(devs, Device{ID: "d" + itoa(g) + "-" + itoa(m), GPU: g, NUMA: g % 2})
			}
		}
		f := Fixture{Name: "random", Links: links, Devices: devs}
		topo := mustTopo(t, f)
		p := refPairs(links, devs)
		for range 12 {
			a := 2 + r.IntN(min(len(devs), 16)-1)
			avail := randSubset(r, len(devs), a)
			k := 1 + r.IntN(a)
			var must []int
			if r.IntN(3) == 0 {
				must = avail[:r.IntN(k+1)]
			}
			if checkOptimal(t, topo, f, p, avail, must, k) {
				checked++
			}
		}
	}
	t.Logf("%d random requests optimal", checked)
}

// TestOptimalLargeFixtures checks exactness on the 16- and 32-GPU and MIG
// fixtures wherever brute force is affordable, under a generous deadline.
func TestOptimalLargeFixtures(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	trials := 60
	if testing.Short() {
		trials = 15
	}
	for _, f := range Fixtures() {
		if len(f.Devices) <= 8 {
			continue
		}
		t.Run(f.Name, func(t *testing.T) {
			topo := mustTopo(t, f)
			p := refPairs(f.Links, f.Devices)
			checked := 0
			for range trials {
				a := 1 + r.IntN(len(f.Devices))
				avail := randSubset(r, len(f.Devices), a)
				k := 1 + r.IntN(min(a, 6))
				if r.IntN(2) == 0 {
					k = max(1, a-r.IntN(4)) // nearly all of what is free
				}
				var must []int
				if r.IntN(3) == 0 {
					must = avail[:r.IntN(min(k, 3)+1)]
				}
				if checkOptimal(t, topo, f, p, avail, must, k) {
					checked++
				}
			}
			if checked < trials/3 {
				t.Fatalf("only %d of %d requests small enough to brute-force", checked, trials)
			}
		})
	}
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}

// TestDeadlineFallback checks that an expired or cancelled ctx still yields a
// valid answer on every fixture, and that large searches report it.
func TestDeadlineFallback(t *testing.T) {
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	r := rand.New(rand.NewPCG(7, 8))
	for _, f := range Fixtures() {
		topo := mustTopo(t, f)
		p := refPairs(f.Links, f.Devices)
		for range 30 {
			a := 1 + r.IntN(len(f.Devices))
			avail := idsOf(f.Devices, randSubset(r, len(f.Devices), a))
			k := 1 + r.IntN(a)
			must := avail[:r.IntN(k+1)]
			got, st, err := topo.PreferredStats(expired, avail, must, k)
			if err != nil {
				t.Fatalf("%s: %v", f.Name, err)
			}
			checkValid(t, topo, avail, must, k, got)
			if st.Exact {
				// A finished search must really be optimal.
				best, _, ok := refBest(p, indexOf(topo, avail), indexOf(topo, must), k, 20000)
				if ok && setScore(p, indexOf(topo, got)) != best {
					t.Fatalf("%s: claimed exact but score %d < %d", f.Name, setScore(p, indexOf(topo, got)), best)
				}
			}
		}
	}
}
