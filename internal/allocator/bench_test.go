package allocator

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// BenchmarkPreferred measures one request with random availability (a fresh
// pattern per iteration, drawn ahead of time) under a 10 ms deadline.
func BenchmarkPreferred(b *testing.B) {
	cases := []struct {
		fixture string
		size    int
	}{
		{"dgx1-v100", 1}, {"dgx1-v100", 2}, {"dgx1-v100", 4},
		{"dgx-h100", 4},
		{"islands-16", 2}, {"islands-16", 4}, {"islands-16", 8},
		{"islands-32", 4}, {"islands-32", 8}, {"islands-32", 16},
		{"dgx-h100-mig56", 1}, {"dgx-h100-mig56", 4}, {"dgx-h100-mig56", 14}, {"dgx-h100-mig56", 28},
		{"islands-16-mig64", 4}, {"islands-16-mig64", 16}, {"islands-16-mig64", 32},
	}
	for _, bc := range cases {
		f := fixture(b, bc.fixture)
		topo := mustTopo(b, f)
		r := rand.New(rand.NewPCG(11, uint64(bc.size)))
		var reqs [][]string
		for range 256 {
			a := bc.size + r.IntN(len(f.Devices)-bc.size+1)
			reqs = append(reqs, idsOf(f.Devices, randSubset(r, len(f.Devices), a)))
		}
		b.Run(bc.fixture+"/size="+itoa(bc.size), func(b *testing.B) {
			i := 0
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
				if _, err := topo.Preferred(ctx, reqs[i%len(reqs)], nil, bc.size); err != nil {
					b.Fatal(err)
				}
				cancel()
				i++
			}
		})
	}
}

// BenchmarkPreferredShared measures one request on shared devices under
// each policy: time-sliced replicas (4 per GPU) and MIG instances.
func BenchmarkPreferredShared(b *testing.B) {
	cases := []struct {
		fixture string
		size    int
	}{
		{"pcie-4-x4", 1}, {"pcie-4-x4", 2}, {"pcie-4-x4", 4},
		{"dgx-h100-x4", 1}, {"dgx-h100-x4", 4}, {"dgx-h100-x4", 8},
		{"islands-16-x4", 8}, {"islands-16-x4", 16},
		{"dgx-h100-mig56", 4}, {"dgx-h100-mig56", 14},
	}
	for _, bc := range cases {
		var f Fixture
		if base, ok := strings.CutSuffix(bc.fixture, "-x4"); ok {
			f = Replicated(fixture(b, base), 4)
		} else {
			f = fixture(b, bc.fixture)
		}
		r := rand.New(rand.NewPCG(13, uint64(bc.size)))
		var reqs [][]string
		for range 256 {
			a := bc.size + r.IntN(len(f.Devices)-bc.size+1)
			reqs = append(reqs, idsOf(f.Devices, randSubset(r, len(f.Devices), a)))
		}
		for _, p := range Policies {
			topo, err := mustTopo(b, f).WithPolicy(p)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(bc.fixture+"/"+string(p)+"/size="+itoa(bc.size), func(b *testing.B) {
				i := 0
				for b.Loop() {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
					if _, err := topo.Preferred(ctx, reqs[i%len(reqs)], nil, bc.size); err != nil {
						b.Fatal(err)
					}
					cancel()
					i++
				}
			})
		}
	}
}
