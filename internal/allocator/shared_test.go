package allocator

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestParsePolicy(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Policy
		wantErr bool
	}{
		{"distributed", PolicyDistributed, false},
		{"packed", PolicyPacked, false},
		{"", "", true},
		{"Packed", "", true},
		{"spread", "", true},
	} {
		got, err := ParsePolicy(tc.in)
		if tc.wantErr {
			if err == nil || !strings.Contains(err.Error(), "distributed, packed") || !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.in)) {
				t.Errorf("ParsePolicy(%q) error %v, want one naming the value and distributed, packed", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParsePolicy(%q) = %q, %v", tc.in, got, err)
		}
	}
	topo := mustTopo(t, fixture(t, "pcie-4"))
	if _, err := topo.WithPolicy("spread"); err == nil {
		t.Error("WithPolicy accepted an unknown policy")
	}
}

// sharedTopo is fixture name shared n ways under policy p.
func sharedTopo(t testing.TB, name string, n int, p Policy) (*Topology, Fixture) {
	t.Helper()
	f := Replicated(fixture(t, name), n)
	topo, err := mustTopo(t, f).WithPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	return topo, f
}

// freeExcept lists every device of f but the used ones ("gpuN::r").
func freeExcept(f Fixture, used ...string) []string {
	var out []string
	for _, d := range f.Devices {
		if !slices.Contains(used, d.ID) {
			out = append(out, d.ID)
		}
	}
	return out
}

// perGPU counts an answer's devices by GPU name ("gpu1" → 2).
func perGPU(ids []string) map[string]int {
	out := map[string]int{}
	for _, id := range ids {
		out[strings.SplitN(id, "::", 2)[0]]++
	}
	return out
}

// TestSharedPlacement: what each policy answers on four PCIe GPUs (PIX pairs
// 0–1 and 2–3, SYS across) shared four ways.
func TestSharedPlacement(t *testing.T) {
	gpu0Busy := []string{"gpu0::0", "gpu0::1", "gpu0::2"} // 3 of 4 in use
	for _, tc := range []struct {
		name   string
		policy Policy
		used   []string
		must   []string
		size   int
		want   map[string]int
	}{
		// The least-used GPUs, and of those GPU1: its PIX partner is nearly
		// full, so taking from it costs the free devices least.
		{"one avoids the busy GPU", PolicyDistributed, gpu0Busy, nil, 1, map[string]int{"gpu1": 1}},
		{"two on distinct idle GPUs, the PIX pair", PolicyDistributed, gpu0Busy, nil, 2, map[string]int{"gpu2": 1, "gpu3": 1}},
		{"two on an idle node: one PIX pair", PolicyDistributed, nil, nil, 2, map[string]int{"gpu0": 1, "gpu1": 1}},
		{"four: one per GPU", PolicyDistributed, nil, nil, 4, map[string]int{"gpu0": 1, "gpu1": 1, "gpu2": 1, "gpu3": 1}},
		{"four with a busy GPU still one per GPU", PolicyDistributed, gpu0Busy, nil, 4, map[string]int{"gpu0": 1, "gpu1": 1, "gpu2": 1, "gpu3": 1}},
		{"six: as even as it gets, doubles on a PIX pair", PolicyDistributed, nil, nil, 6, map[string]int{"gpu0": 2, "gpu1": 2, "gpu2": 1, "gpu3": 1}},
		{"must-include kept, the rest best tied to it", PolicyDistributed, gpu0Busy, []string{"gpu0::3"}, 2, map[string]int{"gpu0": 1, "gpu1": 1}},
		{"two must-include on one GPU kept", PolicyDistributed, nil, []string{"gpu2::0", "gpu2::1"}, 3, map[string]int{"gpu2": 2, "gpu3": 1}},
		{"least used first", PolicyDistributed, []string{"gpu0::0", "gpu1::0", "gpu1::1", "gpu2::0", "gpu3::0"}, nil, 1, map[string]int{"gpu0": 1}},
		{"packed: the busiest GPU", PolicyPacked, []string{"gpu0::0", "gpu1::0", "gpu1::1", "gpu1::2"}, nil, 1, map[string]int{"gpu1": 1}},
		{"packed: fill, then its PIX partner", PolicyPacked, gpu0Busy, nil, 3, map[string]int{"gpu0": 1, "gpu1": 2}},
		{"packed: idle node fills one GPU", PolicyPacked, nil, nil, 4, map[string]int{"gpu0": 4}},
		{"packed: must-include counts as in use", PolicyPacked, []string{"gpu0::0"}, []string{"gpu3::0"}, 2, map[string]int{"gpu3": 2}},
		{"no policy packs by score alone", PolicyTopology, gpu0Busy, nil, 2, map[string]int{"gpu1": 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo, f := sharedTopo(t, "pcie-4", 4, tc.policy)
			avail := freeExcept(f, tc.used...)
			got, err := topo.Preferred(context.Background(), avail, tc.must, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			checkValid(t, topo, avail, tc.must, tc.size, got)
			if g := perGPU(got); fmt.Sprint(g) != fmt.Sprint(tc.want) {
				t.Errorf("got %v (%v), want per GPU %v", got, g, tc.want)
			}
		})
	}
}

// load is how many devices of each GPU are not in avail.
func load(f Fixture, avail []string) []int {
	gpus := 0
	for _, d := range f.Devices {
		gpus = max(gpus, d.GPU+1)
	}
	l := make([]int, gpus)
	for _, d := range f.Devices {
		if !slices.Contains(avail, d.ID) {
			l[d.GPU]++
		}
	}
	return l
}

// TestDistributedKeepsBalance: successive one-device requests keep every GPU
// within one device of the others, and each lands on a least-used GPU even
// after random frees; packed fills one GPU before touching the next.
func TestDistributedKeepsBalance(t *testing.T) {
	for _, name := range []string{"pcie-4", "dgx-h100", "dgx1-v100"} {
		t.Run(name, func(t *testing.T) {
			topo, f := sharedTopo(t, name, 4, PolicyDistributed)
			avail := freeExcept(f)
			for step := range len(f.Devices) {
				got, err := topo.Preferred(context.Background(), avail, nil, 1)
				if err != nil {
					t.Fatal(err)
				}
				avail = slices.DeleteFunc(avail, func(id string) bool { return id == got[0] })
				l := load(f, avail)
				if spread := slices.Max(l) - slices.Min(l); spread > 1 {
					t.Fatalf("step %d: loads %v differ by %d", step, l, spread)
				}
			}
			r := rand.New(rand.NewPCG(3, 4))
			avail = freeExcept(f)
			for range 300 {
				if r.IntN(3) == 0 && len(avail) < len(f.Devices) {
					used := freeExcept(Fixture{Devices: f.Devices}, avail...)
					avail = append(avail, used[r.IntN(len(used))])
					continue
				}
				if len(avail) == 0 {
					continue
				}
				before := load(f, avail)
				got, err := topo.Preferred(context.Background(), avail, nil, 1)
				if err != nil {
					t.Fatal(err)
				}
				g := topo.devices[topo.index[got[0]]].GPU
				least := len(f.Devices)
				for _, a := range avail {
					least = min(least, before[topo.devices[topo.index[a]].GPU])
				}
				if before[g] != least {
					t.Fatalf("loads %v: took GPU%d with %d in use, a GPU with %d was free", before, g, before[g], least)
				}
				avail = slices.DeleteFunc(avail, func(id string) bool { return id == got[0] })
			}

			packed, _ := sharedTopo(t, name, 4, PolicyPacked)
			avail = freeExcept(f)
			for step := range 8 {
				got, err := packed.Preferred(context.Background(), avail, nil, 1)
				if err != nil {
					t.Fatal(err)
				}
				avail = slices.DeleteFunc(avail, func(id string) bool { return id == got[0] })
				l := load(f, avail)
				slices.Sort(l)
				slices.Reverse(l)
				want := make([]int, len(l))
				for i, left := 0, step+1; left > 0; i++ {
					want[i] = min(4, left)
					left -= want[i]
				}
				if !slices.Equal(l, want) {
					t.Fatalf("packed step %d: loads %v, want %v (GPUs filled one after another)", step, l, want)
				}
			}
		})
	}
}

// distKey is the distributed policy's cost of per-GPU counts c on loads u:
// spread of the request first, then of the resulting loads.
func distKey(u, c []int) [2]int {
	var k [2]int
	for g := range c {
		k[0] += c[g] * c[g]
		k[1] += (u[g] + c[g]) * (u[g] + c[g])
	}
	return k
}

// TestDistributedOptimal checks random requests against brute force over
// every per-GPU count vector: the answer has the best policy cost, and among
// count vectors of that cost the best set score.
func TestDistributedOptimal(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, name := range []string{"pcie-4", "dgx1-v100"} {
		topo, f := sharedTopo(t, name, 3, PolicyDistributed)
		p := refPairs(f.Links, f.Devices)
		gpus := len(f.Links)
		for trial := range 120 {
			avail := idsOf(f.Devices, randSubset(r, len(f.Devices), 1+r.IntN(len(f.Devices))))
			size := 1 + r.IntN(len(avail))
			var must []string
			if trial%3 == 0 {
				must = avail[:r.IntN(min(size, 3)+1)]
			}
			got, err := topo.Preferred(context.Background(), avail, must, size)
			if err != nil {
				t.Fatal(err)
			}
			checkValid(t, topo, avail, must, size, got)
			u := load(f, avail)
			free, lo := make([]int, gpus), make([]int, gpus)
			byGPU := make([][]int, gpus) // free device indices, must first
			for _, id := range avail {
				g := topo.devices[topo.index[id]].GPU
				free[g]++
				if slices.Contains(must, id) {
					lo[g]++
					byGPU[g] = append([]int{topo.index[id]}, byGPU[g]...)
				} else {
					byGPU[g] = append(byGPU[g], topo.index[id])
				}
			}
			c := make([]int, gpus)
			for _, id := range got {
				c[topo.devices[topo.index[id]].GPU]++
			}
			gotKey, gotScore := distKey(u, c), setScore(p, indexOf(topo, got))
			// Enumerate every count vector with lo <= v <= free summing to size.
			v := make([]int, gpus)
			var rec func(g, left int)
			rec = func(g, left int) {
				if g == gpus {
					if left != 0 {
						return
					}
					k := distKey(u, v)
					var set []int
					for h := range v {
						set = append(set, byGPU[h][:v[h]]...)
					}
					s := setScore(p, set)
					if k[0] < gotKey[0] || (k[0] == gotKey[0] && k[1] < gotKey[1]) {
						t.Fatalf("%s loads %v avail %d must %v size %d: got counts %v cost %v, %v costs %v", f.Name, u, len(avail), must, size, c, gotKey, v, k)
					}
					if k == gotKey && s > gotScore {
						t.Fatalf("%s loads %v size %d: got counts %v score %d, %v scores %d at the same cost", f.Name, u, size, c, gotScore, v, s)
					}
					return
				}
				for n := lo[g]; n <= min(free[g], left); n++ {
					v[g] = n
					rec(g+1, left-n)
				}
				v[g] = 0
			}
			rec(0, size)
		}
	}
}

// TestPolicyLeavesWholeGPUsAlone: on whole GPUs a policy changes nothing.
func TestPolicyLeavesWholeGPUsAlone(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, f := range Fixtures() {
		if strings.Contains(f.Name, "mig") {
			continue
		}
		plain := mustTopo(t, f)
		for _, p := range Policies {
			topo, err := plain.WithPolicy(p)
			if err != nil {
				t.Fatal(err)
			}
			for range 20 {
				avail := idsOf(f.Devices, randSubset(r, len(f.Devices), 1+r.IntN(len(f.Devices))))
				size := 1 + r.IntN(len(avail))
				want, err1 := plain.Preferred(longCtx(t), avail, nil, size)
				got, err2 := topo.Preferred(longCtx(t), avail, nil, size)
				if err1 != nil || err2 != nil || !slices.Equal(got, want) {
					t.Fatalf("%s %s size %d: %v (%v), without policy %v (%v)", f.Name, p, size, got, err2, want, err1)
				}
			}
		}
	}
}

// TestSharedMIG: distributed spreads MIG instances over parent GPUs, where
// the policy-less objective keeps them on the split GPU.
func TestSharedMIG(t *testing.T) {
	f := fixture(t, "dgx-h100-mig56")
	topo, err := mustTopo(t, f).WithPolicy(PolicyDistributed)
	if err != nil {
		t.Fatal(err)
	}
	avail := freeExcept(f, "gpu5-mig0", "gpu5-mig1")
	got, err := topo.Preferred(context.Background(), avail, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(got[0], "gpu5-") {
		t.Errorf("distributed took %v from the GPU with two instances in use", got)
	}
	got, err = topo.Preferred(context.Background(), avail, nil, 8)
	if err != nil {
		t.Fatal(err)
	}
	gpus := map[string]bool{}
	for _, id := range got {
		gpus[strings.SplitN(id, "-", 2)[0]] = true
	}
	if len(gpus) != 8 {
		t.Errorf("8 instances on %d GPUs (%v), want one per GPU", len(gpus), got)
	}
}
