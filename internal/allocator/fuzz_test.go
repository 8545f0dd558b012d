package allocator

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/inventory"
)

// fuzzTopos are the topologies FuzzPreferred picks from.
func fuzzTopos(t testing.TB) []*Topology {
	var out []*Topology
	for _, name := range []string{"dgx1-v100", "dgx-h100-mig56", "islands-16"} {
		out = append(out, mustTopo(t, fixture(t, name)))
	}
	noLinks, err := NewTopology(nil, []Device{{ID: "a", GPU: 0, NUMA: 0}, {ID: "b", GPU: 0, NUMA: 0}, {ID: "c", GPU: 3, NUMA: -1}})
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, noLinks)
	// Shared devices under each policy.
	for _, tc := range []struct {
		f Fixture
		p Policy
	}{{fixture(t, "dgx-h100-mig56"), PolicyDistributed}, {Replicated(fixture(t, "pcie-4"), 4), PolicyPacked}, {Replicated(fixture(t, "dgx1-v100"), 3), PolicyDistributed}} {
		topo, err := mustTopo(t, tc.f).WithPolicy(tc.p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, topo)
	}
	return out
}

// fuzzIDs splits a comma list; a token "#n" names the topology's device n
// so the fuzzer reaches valid requests, anything else is taken verbatim.
func fuzzIDs(topo *Topology, s string) []string {
	if s == "" {
		return nil
	}
	var out []string
	for _, tok := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimPrefix(tok, "#")); err == nil && strings.HasPrefix(tok, "#") && n >= 0 && len(topo.devices) > 0 {
			tok = topo.devices[n%len(topo.devices)].ID
		}
		out = append(out, tok)
	}
	return out
}

// FuzzPreferred: arbitrary requests never panic, and the answer is an error
// exactly when the request is invalid, otherwise a valid set.
func FuzzPreferred(f *testing.F) {
	f.Add(uint8(0), "#0,#1,#2,#3", "#1", 2, false)
	f.Add(uint8(1), "#0,#1,#2,#3,#7,#8,#9,#10,#20,#30,#40,#50", "#9,#10", 5, false)
	f.Add(uint8(2), "#0,#1,#2,#3,#4,#5,#6,#7,#8,#9,#10,#11,#12,#13,#14,#15", "", 8, true)
	f.Add(uint8(3), "a,b,c", "", 2, false)
	f.Add(uint8(0), "#0,#0", "", 1, false)
	f.Add(uint8(0), "#0,#1", "#2", 1, false)
	f.Add(uint8(0), "gpu0,zzz", "", 0, false)
	f.Add(uint8(1), "#1,#2,#3", "#1,#1", 3, false)
	f.Add(uint8(4), "#0,#1,#2,#3,#7,#8,#14,#15,#21,#22", "#7", 4, false)
	f.Add(uint8(5), "#0,#1,#2,#3,#4,#5,#9,#13", "#4", 3, false)
	f.Add(uint8(6), "#0,#1,#3,#4,#6,#8,#9,#12,#15,#18,#20,#23", "", 6, true)
	topos := fuzzTopos(f)
	f.Fuzz(func(t *testing.T, which uint8, availS, mustS string, size int, expired bool) {
		topo := topos[int(which)%len(topos)]
		avail, must := fuzzIDs(topo, availS), fuzzIDs(topo, mustS)
		ctx := context.Background()
		if expired {
			c, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
			defer cancel()
			ctx = c
		}
		got, err := topo.Preferred(ctx, avail, must, size)
		valid := size > 0 && size <= len(avail) && len(must) <= size
		seen := map[string]int{}
		for _, a := range avail {
			if _, ok := topo.index[a]; !ok || seen[a] != 0 {
				valid = false
			}
			seen[a] = 1
		}
		for _, m := range must {
			if seen[m] != 1 {
				valid = false // unknown, unavailable or repeated
			}
			seen[m] = 2
		}
		if !valid {
			if err == nil {
				t.Fatalf("invalid request avail=%q must=%q size=%d answered %v", avail, must, size, got)
			}
			return
		}
		if err != nil {
			t.Fatalf("valid request avail=%q must=%q size=%d: %v", avail, must, size, err)
		}
		checkValid(t, topo, avail, must, size, got)
	})
}

// FuzzNewTopology: arbitrary link matrices and device lists never panic; a
// topology that builds answers every valid request validly.
func FuzzNewTopology(f *testing.F) {
	f.Add([]byte{3, 2, 1, 50, 0, 10, 7, 20, 1, 0, 2, 1}, uint8(2))
	f.Add([]byte{0, 5, 1, 2, 3}, uint8(1))
	f.Add([]byte{2, 200, 255, 60, 61}, uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, size uint8) {
		next := func() int {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return int(b)
		}
		n := next() % 6
		links := make([][]inventory.Link, n)
		for i := range links {
			links[i] = make([]inventory.Link, n)
		}
		for i := range n {
			for j := i + 1; j < n; j++ {
				l := inventory.Link{NVLinks: next() % 20, PCIe: inventory.Level(next() % 70)}
				links[i][j], links[j][i] = l, l
			}
		}
		if next()%7 == 0 && n > 1 {
			links[0][1].NVLinks++ // asymmetric
		}
		var devs []Device
		for d := next() % 12; d > 0; d-- {
			devs = append(devs, Device{ID: "d" + itoa(next()%16), GPU: next()%8 - 1, NUMA: next()%3 - 1})
		}
		topo, err := NewTopology(links, devs)
		if err != nil {
			return
		}
		var all []string
		for _, d := range devs {
			all = append(all, d.ID)
		}
		k := int(size)%max(1, len(all)) + 1
		got, err := topo.Preferred(context.Background(), all, nil, k)
		if k > len(all) {
			if err == nil {
				t.Fatalf("size %d of %d answered %v", k, len(all), got)
			}
			return
		}
		if err != nil {
			t.Fatalf("%v", err)
		}
		checkValid(t, topo, all, nil, k, got)
	})
}
