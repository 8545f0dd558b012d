package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gpulet/gpulet/internal/allocator"
	"github.com/gpulet/gpulet/internal/allocator/allocatortest"
)

// balancePolicy picks size of the free replicas (IDs, sorted).
type balancePolicy struct {
	name string
	pick func(free []string, size int) []string
}

// nvidiaGreedy is NVIDIA's replica allocation as its internal/rm/allocate.go
// describes it (reimplemented, not copied): one replica at a time, from the
// GPU the comparator prefers by replicas in use (fewest for distributed,
// most for packed), ties to the GPU picked least in this request, then
// candidate order (ID order here; NVIDIA's unstable sort leaves it open).
func nvidiaGreedy(f allocatortest.Fixture, fewest bool) func(free []string, size int) []string {
	gpuOf := map[string]int{}
	total := map[int]int{}
	for _, d := range f.Devices {
		gpuOf[d.ID] = d.GPU
		total[d.GPU]++
	}
	return func(free []string, size int) []string {
		avail := map[int]int{}
		for _, id := range free {
			avail[gpuOf[id]]++
		}
		cand := slices.Clone(free)
		picked := map[int]int{}
		var out []string
		for range size {
			slices.SortStableFunc(cand, func(a, b string) int {
				ga, gb := gpuOf[a], gpuOf[b]
				ua, ub := total[ga]-avail[ga], total[gb]-avail[gb]
				if ua != ub {
					if fewest == (ua < ub) {
						return -1
					}
					return 1
				}
				return picked[ga] - picked[gb]
			})
			g := gpuOf[cand[0]]
			picked[g]++
			avail[g]--
			out = append(out, cand[0])
			cand = cand[1:]
		}
		return out
	}
}

// balance replays allocate/free sequences of time-sliced replicas on a
// fixture shared `replicas` ways and reports how evenly each policy keeps the
// GPUs loaded: spread = max − min replicas in use over the GPUs, after
// every event.
func balance(name string, replicas, steps int, deadline time.Duration, seed uint64) {
	var base allocatortest.Fixture
	for _, x := range allocatortest.Fixtures() {
		if x.Name == name {
			base = x
		}
	}
	f := allocatortest.Replicated(base, replicas)
	topo, err := allocator.NewTopology(f.Links, allocatortest.To[allocator.Device](f.Devices))
	if err != nil {
		fmt.Fprintln(os.Stderr, "allocbench:", err)
		os.Exit(1)
	}
	gpuOf := map[string]int{}
	gpus := 0
	for _, d := range f.Devices {
		gpuOf[d.ID] = d.GPU
		gpus = max(gpus, d.GPU+1)
	}
	gpulet := func(p allocator.Policy) func([]string, int) []string {
		t, err := topo.WithPolicy(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "allocbench:", err)
			os.Exit(1)
		}
		return func(free []string, size int) []string {
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			got, err := t.Preferred(ctx, free, nil, size)
			if err != nil {
				fmt.Fprintln(os.Stderr, "allocbench:", err)
				os.Exit(1)
			}
			return got
		}
	}
	pols := []balancePolicy{
		{"gpulet distributed", gpulet(allocator.PolicyDistributed)},
		{"NVIDIA distributed (greedy)", nvidiaGreedy(f, true)},
		{"gpulet packed", gpulet(allocator.PolicyPacked)},
		{"NVIDIA packed (greedy)", nvidiaGreedy(f, false)},
		// What gpulet did before the policies: the best-connected set only.
		{"gpulet topology only (before)", gpulet(allocator.PolicyTopology)},
	}
	spread := func(free []string) int {
		l := make([]int, gpus)
		for _, d := range f.Devices {
			l[d.GPU]++
		}
		for _, id := range free {
			l[gpuOf[id]]--
		}
		return slices.Max(l) - slices.Min(l)
	}
	all := make([]string, len(f.Devices))
	for i, d := range f.Devices {
		all[i] = d.ID
	}
	slices.Sort(all)

	fmt.Printf("== Balance replay on %s, %d replicas per GPU (%d devices) ==\n", name, replicas, len(f.Devices))
	fmt.Println("spread = max - min replicas in use over the GPUs after each step")
	fmt.Println()
	fmt.Println("Successive one-replica requests on an empty node, spread per step:")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, p := range pols {
		free := slices.Clone(all)
		var row []string
		for len(free) > 0 {
			got := p.pick(free, 1)
			free = slices.DeleteFunc(free, func(id string) bool { return slices.Contains(got, id) })
			row = append(row, fmt.Sprint(spread(free)))
		}
		fmt.Fprintf(tw, "%s\t%s\n", p.name, strings.Join(row, " "))
	}
	tw.Flush()

	// Random sequence: half frees of a random live allocation, half requests
	// of 1 (60%), 2 (30%) or 4 (10%) replicas; every policy sees the same
	// events and frees allocations by the same position in its live list.
	r := rand.New(rand.NewPCG(seed, 11))
	events := make([]event, steps)
	for i := range events {
		if r.IntN(2) == 0 {
			events[i] = event{pick: r.Float64()}
		} else {
			events[i] = event{size: []int{1, 1, 1, 1, 1, 1, 2, 2, 2, 4}[r.IntN(10)]}
		}
	}
	fmt.Println()
	fmt.Printf("Random replay: %d events (half frees of a random live allocation, half requests of 1, 2 or 4 replicas at 6:3:1)\n", steps)
	fmt.Println("spread: mean and max over the steps, and the share of steps at most 1; distinct = multi-replica requests")
	fmt.Println("served on distinct GPUs when enough GPUs had one free; score = mean pair score of 2-replica answers")
	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tserved\tmean spread\tmax spread\tspread<=1\tdistinct\tscore size 2\t")
	for _, p := range pols {
		free := slices.Clone(all)
		var live [][]string
		var served, sum, worst, low, multi, distinct, pairs, pairScore, n int
		for _, e := range events {
			if e.size == 0 {
				if len(live) > 0 {
					i := int(e.pick * float64(len(live)))
					free = append(free, live[i]...)
					slices.Sort(free)
					live = slices.Delete(live, i, i+1)
				}
			} else if len(free) >= e.size {
				got := p.pick(free, e.size)
				served++
				if e.size > 1 {
					withFree := map[int]bool{}
					for _, id := range free {
						withFree[gpuOf[id]] = true
					}
					if len(withFree) >= e.size {
						multi++
						on := map[int]bool{}
						for _, id := range got {
							on[gpuOf[id]] = true
						}
						if len(on) == e.size {
							distinct++
						}
					}
				}
				if e.size == 2 {
					pairs++
					pairScore += topo.Score(got)
				}
				free = slices.DeleteFunc(free, func(id string) bool { return slices.Contains(got, id) })
				live = append(live, got)
			}
			s := spread(free)
			sum += s
			worst = max(worst, s)
			if s <= 1 {
				low++
			}
			n++
		}
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%d\t%.1f%%\t%.1f%%\t%.1f\t\n", p.name, served, float64(sum)/float64(n), worst,
			100*float64(low)/float64(n), 100*float64(distinct)/float64(max(1, multi)), float64(pairScore)/float64(max(1, pairs)))
	}
	tw.Flush()
}
