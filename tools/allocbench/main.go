// Command allocbench measures internal/allocator: latency and optimality of
// Preferred per reference topology and request size, and a fragmentation
// replay of a long seeded allocate/free sequence against naive baselines.
// With -balance it instead replays time-sliced replicas on pcie-4 (the
// pcie-4x-l4 link matrix) and dgx-h100 and reports how evenly the
// shared-devices policies, gpulet's and NVIDIA's greedy ones, load the GPUs.
//
//	go run ./tools/allocbench [-trials 1000] [-reftrials 200] [-steps 20000] [-deadline 10ms] [-seed 1] [-topo a,b] [-replay=false]
//	go run ./tools/allocbench -balance [-replicas 4] [-steps 20000] [-seed 1] [-topo a,b]
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gpulet/gpulet/internal/allocator"
	"github.com/gpulet/gpulet/internal/allocator/allocatortest"
)

func main() {
	trials := flag.Int("trials", 1000, "requests per topology and size for latency")
	refTrials := flag.Int("reftrials", 200, "of those, how many are checked against the exact optimum")
	steps := flag.Int("steps", 20000, "events per fragmentation replay")
	deadline := flag.Duration("deadline", 10*time.Millisecond, "ctx deadline per request")
	seed := flag.Uint64("seed", 1, "random seed")
	only := flag.String("topo", "", "comma-separated topologies to measure (default all)")
	doReplay := flag.Bool("replay", true, "run the fragmentation replays")
	doBalance := flag.Bool("balance", false, "only run the time-slicing balance replays (shared-devices allocation policies)")
	replicas := flag.Int("replicas", 4, "time-slicing replicas per GPU for -balance")
	flag.Parse()
	if *only != "" {
		selected = map[string]bool{}
		for _, n := range strings.Split(*only, ",") {
			selected[n] = true
		}
	}

	if *doBalance {
		fmt.Printf("allocbench -balance: replicas=%d steps=%d deadline=%s seed=%d\n\n", *replicas, *steps, *deadline, *seed)
		for _, name := range []string{"pcie-4", "dgx-h100"} {
			if selected == nil || selected[name] {
				balance(name, *replicas, *steps, *deadline, *seed)
				fmt.Println()
			}
		}
		return
	}
	fmt.Printf("allocbench: trials=%d reftrials=%d steps=%d deadline=%s seed=%d\n\n", *trials, *refTrials, *steps, *deadline, *seed)
	latency(*trials, *refTrials, *deadline, *seed)
	fmt.Println()
	for _, name := range []string{"dgx1-v100", "islands-16"} {
		if *doReplay && (selected == nil || selected[name]) {
			replay(name, *steps, *deadline, *seed)
			fmt.Println()
		}
	}
}

// selected limits the topologies measured; nil means all.
var selected map[string]bool

// bench is one fixture prepared for measuring.
type bench struct {
	f    allocatortest.Fixture
	topo *allocator.Topology
	pair [][]int // device pair scores, from Topology.Score
	gpus int
}

func load(f allocatortest.Fixture) *bench {
	topo, err := allocator.NewTopology(f.Links, allocatortest.To[allocator.Device](f.Devices))
	if err != nil {
		fmt.Fprintln(os.Stderr, "allocbench:", err)
		os.Exit(1)
	}
	b := &bench{f: f, topo: topo}
	n := len(f.Devices)
	b.pair = make([][]int, n)
	for i := range n {
		b.pair[i] = make([]int, n)
		for j := range n {
			if i != j {
				b.pair[i][j] = topo.Score([]string{f.Devices[i].ID, f.Devices[j].ID})
			}
		}
		b.gpus = max(b.gpus, f.Devices[i].GPU+1)
	}
	return b
}

func (b *bench) ids(idx []int) []string {
	out := make([]string, len(idx))
	for i, d := range idx {
		out[i] = b.f.Devices[d].ID
	}
	return out
}

func (b *bench) index(ids []string) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		for d, dev := range b.f.Devices {
			if dev.ID == id {
				out[i] = d
			}
		}
	}
	return out
}

func (b *bench) score(set []int) int {
	s := 0
	for i := range set {
		for j := i + 1; j < len(set); j++ {
			s += b.pair[set[i]][set[j]]
		}
	}
	return s
}

// optimum is the best score of k devices among avail, by enumerating how
// many devices to take from each GPU (devices of one GPU are interchangeable
// in every fixture). ok is false past limit leaves.
func (b *bench) optimum(avail []int, k, limit int) (best int, ok bool) {
	caps := make([]int, b.gpus)
	rep := make([]int, b.gpus)
	for _, d := range avail {
		g := b.f.Devices[d].GPU
		caps[g]++
		rep[g] = d
	}
	var gs []int
	for g, c := range caps {
		if c > 0 {
			gs = append(gs, g)
		}
	}
	rest := make([]int, len(gs)+1)
	for i := len(gs) - 1; i >= 0; i-- {
		rest[i] = rest[i+1] + caps[gs[i]]
	}
	same := b.topo.SameGPUScore()
	cnt := make([]int, len(gs))
	leaves := 0
	best = -1
	var rec func(i, left, s int) bool
	rec = func(i, left, s int) bool {
		if left == 0 {
			leaves++
			best = max(best, s)
			return leaves <= limit
		}
		if i == len(gs) || rest[i] < left {
			return true
		}
		g := gs[i]
		att := 0
		for j := 0; j < i; j++ {
			if cnt[j] > 0 {
				att += cnt[j] * b.pair[rep[g]][rep[gs[j]]]
			}
		}
		for c := min(caps[g], left); c >= 0; c-- {
			cnt[i] = c
			if !rec(i+1, left-c, s+c*att+c*(c-1)/2*same) {
				return false
			}
		}
		cnt[i] = 0
		return true
	}
	ok = rec(0, k, 0)
	return best, ok
}

type stat struct {
	lat, cpu              []time.Duration
	ratios                []float64
	naive                 []float64
	exact, refEnum, refBB int
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(math.Ceil(p*float64(len(s))))-1)]
}

func meanMin(x []float64) (mean, worst float64) {
	if len(x) == 0 {
		return math.NaN(), math.NaN()
	}
	worst = math.Inf(1)
	for _, v := range x {
		mean += v
		worst = min(worst, v)
	}
	return mean / float64(len(x)), worst
}

func sizesFor(name string) []int {
	switch name {
	case "pcie-4":
		return []int{1, 2, 3}
	case "islands-16":
		return []int{1, 2, 4, 8, 12}
	case "islands-32":
		return []int{1, 2, 4, 8, 16, 24}
	case "dgx-h100-mig56":
		return []int{1, 2, 4, 7, 14, 28}
	case "islands-16-mig64":
		return []int{1, 2, 4, 8, 16, 32}
	default:
		return []int{1, 2, 4, 6}
	}
}

// latency measures Preferred on random availability (every device free with
// probability 1/2..1, at least size free) per topology and size.
func latency(trials, refTrials int, deadline time.Duration, seed uint64) {
	fmt.Println("== Latency and optimality (random availability, no must-include) ==")
	fmt.Println("wall = wall-clock time of one Preferred call with its deadline; cpu = CPU time of the calling thread")
	fmt.Println("(what the call costs without waiting for a core); done = share of searches that finished (proved optimal)")
	fmt.Println("ratio = score / exact optimum over the first reftrials requests (size 1: always 1); ref = how the optimum")
	fmt.Println("was known (enum = enumeration over per-GPU counts, bb = the allocator's own search run to completion with 5s)")
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "topology\tdevices\tsize\twall p50\twall p99\twall max\tcpu p50\tcpu p99\tcpu max\tdone\tchecked\tmean ratio\tworst ratio\tref enum/bb\tfirst-N mean\tfirst-N worst\t")
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, f := range allocatortest.Fixtures() {
		if selected != nil && !selected[f.Name] {
			continue
		}
		b := load(f)
		n := len(f.Devices)
		for _, k := range sizesFor(f.Name) {
			r := rand.New(rand.NewPCG(seed, uint64(n*100+k)))
			reqs := make([][]int, trials)
			for t := range reqs {
				keep := 0.5 + r.Float64()/2
				var avail []int
				for d := range n {
					if r.Float64() < keep {
						avail = append(avail, d)
					}
				}
				for len(avail) < k {
					avail = append(avail, r.IntN(n))
					slices.Sort(avail)
					avail = slices.Compact(avail)
				}
				r.Shuffle(len(avail), func(i, j int) { avail[i], avail[j] = avail[j], avail[i] })
				reqs[t] = avail
			}
			ids := make([][]string, trials)
			for t, avail := range reqs {
				ids[t] = b.ids(avail)
			}
			got := make([][]string, trials)
			var st stat
			// Warm up (caches, heap growth) untimed, then start from a clean heap.
			for t := range min(trials, 50) {
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				_, _ = b.topo.Preferred(ctx, ids[t], nil, k)
				cancel()
			}
			runtime.GC()
			for t := range reqs {
				c0, w0 := threadCPU(), time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				g, s, err := b.topo.PreferredStats(ctx, ids[t], nil, k)
				cancel()
				st.lat = append(st.lat, time.Since(w0))
				st.cpu = append(st.cpu, threadCPU()-c0)
				if err != nil {
					fmt.Fprintln(os.Stderr, "allocbench:", err)
					os.Exit(1)
				}
				got[t] = g
				if s.Exact {
					st.exact++
				}
			}
			for t := 0; t < min(refTrials, trials) && k > 1; t++ {
				avail := reqs[t]
				opt, ok := b.optimum(avail, k, 300000)
				if ok {
					st.refEnum++
				} else {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					ref, rs, err := b.topo.PreferredStats(ctx, ids[t], nil, k)
					cancel()
					if err != nil || !rs.Exact {
						continue // optimum unknown
					}
					opt = b.score(b.index(ref))
					st.refBB++
				}
				if opt <= 0 {
					continue
				}
				st.ratios = append(st.ratios, float64(b.score(b.index(got[t])))/float64(opt))
				sorted := slices.Clone(avail)
				slices.Sort(sorted)
				st.naive = append(st.naive, float64(b.score(sorted[:k]))/float64(opt))
			}
			mean, worst := meanMin(st.ratios)
			nm, nw := meanMin(st.naive)
			checked := fmt.Sprint(len(st.ratios))
			if k == 1 {
				checked, mean, worst, nm, nw = "-", 1, 1, 1, 1
			}
			cpu50, cpu99, cpuMax := "n/a", "n/a", "n/a"
			if threadCPU() > 0 {
				cpu50, cpu99, cpuMax = round(pct(st.cpu, 0.5)), round(pct(st.cpu, 0.99)), round(pct(st.cpu, 1))
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f%%\t%s\t%.4f\t%.4f\t%d/%d\t%.4f\t%.4f\t\n",
				f.Name, n, k, round(pct(st.lat, 0.5)), round(pct(st.lat, 0.99)), round(pct(st.lat, 1)), cpu50, cpu99, cpuMax,
				100*float64(st.exact)/float64(trials), checked, mean, worst, st.refEnum, st.refBB, nm, nw)
		}
	}
	tw.Flush()
}

func round(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	default:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
}

// policy picks k of free (sorted device indices).
type policy struct {
	name string
	pick func(b *bench, free []int, k int) []int
}

var policies = []policy{
	{"gpulet", nil}, // set per run: needs the deadline
	{"best-score, first found", func(b *bench, free []int, k int) []int {
		// The exact primary optimum without the fragmentation tie-break:
		// the first optimal set in device order.
		var best []int
		bestS := -1
		cur := make([]int, 0, k)
		var rec func(i int)
		rec = func(i int) {
			if len(cur) == k {
				if s := b.score(cur); s > bestS {
					bestS, best = s, slices.Clone(cur)
				}
				return
			}
			for j := i; j <= len(free)-(k-len(cur)); j++ {
				cur = append(cur, free[j])
				rec(j + 1)
				cur = cur[:len(cur)-1]
			}
		}
		rec(0)
		return best
	}},
	{"first-N", func(b *bench, free []int, k int) []int { return slices.Clone(free[:k]) }},
}

// nvClique reports whether every pair of set is joined by NVLink.
func (b *bench) nvClique(set []int) bool {
	for i := range set {
		for j := i + 1; j < len(set); j++ {
			gi, gj := b.f.Devices[set[i]].GPU, b.f.Devices[set[j]].GPU
			if gi != gj && b.f.Links[gi][gj].NVLinks == 0 {
				return false
			}
		}
	}
	return true
}

// anyClique4 reports whether free holds four devices all joined by NVLink.
func (b *bench) anyClique4(free []int) bool {
	n := len(free)
	for a := 0; a < n; a++ {
		for c := a + 1; c < n; c++ {
			for d := c + 1; d < n; d++ {
				for e := d + 1; e < n; e++ {
					if b.nvClique([]int{free[a], free[c], free[d], free[e]}) {
						return true
					}
				}
			}
		}
	}
	return false
}

type event struct {
	size int     // > 0: allocate this many
	pick float64 // size 0: free the live allocation at pick×len(live)
}

// replay runs one seeded allocate/free sequence through every policy. Every
// policy sees the same requests and frees the same allocations (by age), so
// free counts match and only the placement differs.
func replay(name string, steps int, deadline time.Duration, seed uint64) {
	var f allocatortest.Fixture
	for _, x := range allocatortest.Fixtures() {
		if x.Name == name {
			f = x
		}
	}
	b := load(f)
	n := len(f.Devices)
	r := rand.New(rand.NewPCG(seed, 7))
	events := make([]event, steps)
	for i := range events {
		if r.IntN(2) == 0 {
			events[i] = event{pick: r.Float64()}
		} else {
			events[i] = event{size: []int{1, 2, 4}[r.IntN(3)]}
		}
	}
	fresh := map[int]int{}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	for _, k := range []int{2, 4} {
		fresh[k], _ = b.optimum(all, k, 1<<30)
	}
	fmt.Printf("== Fragmentation replay on %s: %d events (half frees of a random live allocation, half requests of 1, 2 or 4 devices) ==\n", name, steps)
	fmt.Println("ratio = score / optimum over the devices free at that request; fresh = score / best score on an empty node")
	fmt.Println("4-GPU NVLink: requests served with a set whose every pair has NVLink; lost = no such set was free although")
	fmt.Println("at most n-4 devices were in use (so some placement of the earlier allocations would have kept one);")
	fmt.Println("passed over = one was free but not chosen")
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tserved\tratio size 2\tratio size 4\tfresh size 2\tfresh size 4\t4-GPU served\tNVLink\tlost\tpassed over\t")
	for _, p := range policies {
		pick := p.pick
		if pick == nil {
			pick = func(b *bench, free []int, k int) []int {
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				got, err := b.topo.Preferred(ctx, b.ids(free), nil, k)
				if err != nil {
					fmt.Fprintln(os.Stderr, "allocbench:", err)
					os.Exit(1)
				}
				return b.index(got)
			}
		}
		used := make([]bool, n)
		var live [][]int
		served := 0
		ratio := map[int][]float64{}
		freshR := map[int][]float64{}
		var four, nv, lost, passed int
		for _, e := range events {
			if e.size == 0 {
				if len(live) == 0 {
					continue
				}
				i := int(e.pick * float64(len(live)))
				for _, d := range live[i] {
					used[d] = false
				}
				live = slices.Delete(live, i, i+1)
				continue
			}
			var free []int
			for d := range n {
				if !used[d] {
					free = append(free, d)
				}
			}
			if len(free) < e.size {
				continue
			}
			got := pick(b, free, e.size)
			served++
			if e.size > 1 {
				opt, _ := b.optimum(free, e.size, 1<<30)
				s := b.score(got)
				ratio[e.size] = append(ratio[e.size], float64(s)/float64(opt))
				freshR[e.size] = append(freshR[e.size], float64(s)/float64(fresh[e.size]))
			}
			if e.size == 4 {
				four++
				had := b.anyClique4(free)
				switch {
				case b.nvClique(got):
					nv++
				case had:
					passed++
				default:
					lost++
				}
			}
			for _, d := range got {
				used[d] = true
			}
			live = append(live, got)
		}
		r2, _ := meanMin(ratio[2])
		r4, _ := meanMin(ratio[4])
		f2, _ := meanMin(freshR[2])
		f4, _ := meanMin(freshR[4])
		fmt.Fprintf(tw, "%s\t%d\t%.4f\t%.4f\t%.4f\t%.4f\t%d\t%d (%.1f%%)\t%d (%.1f%%)\t%d\t\n",
			p.name, served, r2, r4, f2, f4, four, nv, 100*float64(nv)/float64(four), lost, 100*float64(lost)/float64(four), passed)
	}
	tw.Flush()
}
