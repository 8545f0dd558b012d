package allocator

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/inventory"
)

func TestDGX1PairIsNV2(t *testing.T) {
	f := fixture(t, "dgx1-v100")
	topo := mustTopo(t, f)
	all := idsOf(f.Devices, []int{0, 1, 2, 3, 4, 5, 6, 7})
	got, err := topo.Preferred(context.Background(), all, nil, 2)
	if err != nil {
		t.Fatal(err)
	}
	a, b := topo.devices[topo.index[got[0]]].GPU, topo.devices[topo.index[got[1]]].GPU
	if nv := f.Links[a][b].NVLinks; nv != 2 {
		t.Fatalf("got %v joined by NV%d, want an NV2 pair", got, nv)
	}
}

// TestSizeOnePicksLeastConnected: the naive first pick is wrong when it would
// take a device the others need.
func TestSizeOnePicksLeastConnected(t *testing.T) {
	tests := []struct {
		fixture string
		avail   []string
		want    string
	}{
		// GPU7 reaches GPUs 0–3 only by SYS and one NVLink to GPU3; taking
		// gpu0 would break the NVLink quad 0–3.
		{"dgx1-v100", []string{"gpu0", "gpu1", "gpu2", "gpu3", "gpu7"}, "gpu7"},
		// gpu6 has one NVLink (to gpu2) and is on the other socket; gpu0–2
		// are an NVLink triangle.
		{"dgx1-v100", []string{"gpu0", "gpu1", "gpu2", "gpu6"}, "gpu6"},
		// On PCIe, the GPU without its switch partner goes first.
		{"pcie-8", []string{"gpu0", "gpu1", "gpu2", "gpu3", "gpu5"}, "gpu5"},
		// NVSwitch islands: the full island stays whole, and in the other
		// the GPU whose switch partner is gone goes first.
		{"islands-16", []string{"gpu0", "gpu1", "gpu2", "gpu3", "gpu8", "gpu9", "gpu10", "gpu11", "gpu12", "gpu13", "gpu14", "gpu15", "gpu4"}, "gpu4"},
	}
	for _, tc := range tests {
		f := fixture(t, tc.fixture)
		topo := mustTopo(t, f)
		got, err := topo.Preferred(context.Background(), tc.avail, nil, 1)
		if err != nil {
			t.Fatal(err)
		}
		if got[0] != tc.want {
			t.Errorf("%s %v: got %v, want %s", tc.fixture, tc.avail, got, tc.want)
		}
	}
}

// TestMIGKeepsGPUsWhole: a single MIG device comes from the already-split GPU,
// and a 7-device request takes a whole free GPU.
func TestMIGKeepsGPUsWhole(t *testing.T) {
	f := fixture(t, "dgx-h100-mig56")
	topo := mustTopo(t, f)
	var avail []string
	for _, d := range f.Devices {
		if d.GPU == 5 && !strings.HasSuffix(d.ID, "mig0") && !strings.HasSuffix(d.ID, "mig1") {
			avail = append(avail, d.ID) // five left on GPU 5
		} else if d.GPU != 5 {
			avail = append(avail, d.ID)
		}
	}
	got, err := topo.Preferred(context.Background(), avail, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got[0], "gpu5-") {
		t.Fatalf("size 1 got %v, want a device of the split GPU 5", got)
	}
	got, err = topo.Preferred(context.Background(), avail, nil, 7)
	if err != nil {
		t.Fatal(err)
	}
	gpu := topo.devices[topo.index[got[0]]].GPU
	for _, id := range got {
		if topo.devices[topo.index[id]].GPU != gpu || gpu == 5 {
			t.Fatalf("size 7 got %v, want all seven instances of one whole GPU", got)
		}
	}
}

// TestFragmentationH100: two pairs in a row on DGX H100 stay in one NUMA node
// so the other stays whole for a 4-GPU request.
func TestFragmentationH100(t *testing.T) {
	f := fixture(t, "dgx-h100")
	topo := mustTopo(t, f)
	free := idsOf(f.Devices, []int{0, 1, 2, 3, 4, 5, 6, 7})
	take := func(k int) []string {
		got, err := topo.Preferred(context.Background(), free, nil, k)
		if err != nil {
			t.Fatal(err)
		}
		free = slices.DeleteFunc(free, func(id string) bool { return slices.Contains(got, id) })
		return got
	}
	take(2)
	take(2)
	got := take(4)
	numa := topo.devices[topo.index[got[0]]].NUMA
	for _, id := range got {
		if topo.devices[topo.index[id]].NUMA != numa {
			t.Fatalf("4-GPU request got %v across NUMA nodes", got)
		}
	}
}

func TestPreferredErrors(t *testing.T) {
	f := fixture(t, "dgx1-v100")
	topo := mustTopo(t, f)
	all := idsOf(f.Devices, []int{0, 1, 2, 3, 4, 5, 6, 7})
	tests := []struct {
		name        string
		avail, must []string
		size        int
		want        string
	}{
		{"zero size", all, nil, 0, "want at least 1"},
		{"negative size", all, nil, -3, "want at least 1"},
		{"too large", all[:3], nil, 4, "only 3 are available"},
		{"unknown available", []string{"gpu0", "nope"}, nil, 1, `"nope" is not in the topology`},
		{"duplicate available", []string{"gpu0", "gpu1", "gpu0"}, nil, 1, `"gpu0" is listed twice`},
		{"unknown must", all, []string{"x"}, 2, `must-include device "x" is not in the topology`},
		{"must not available", all[:3], []string{"gpu5"}, 2, `"gpu5" is not available`},
		{"duplicate must", all, []string{"gpu1", "gpu1"}, 2, `"gpu1" is listed twice`},
		{"must exceeds size", all, []string{"gpu1", "gpu2"}, 1, "exceed the requested size"},
		{"empty available", nil, nil, 1, "only 0 are available"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := topo.Preferred(context.Background(), tc.avail, tc.must, tc.size)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, %v; want error containing %q", got, err, tc.want)
			}
		})
	}
}

func TestNewTopologyErrors(t *testing.T) {
	good, devs := DGX1V100()
	asym, _ := DGX1V100()
	asym[0][1].NVLinks = 3
	ragged, _ := DGX1V100()
	ragged[2] = ragged[2][:5]
	negative, _ := DGX1V100()
	negative[1][2].NVLinks, negative[2][1].NVLinks = -1, -1
	tests := []struct {
		name  string
		links [][]inventory.Link
		devs  []Device
		want  string
	}{
		{"asymmetric", asym, devs, "not symmetric"},
		{"ragged", ragged, devs, "row 2 has 5 entries"},
		{"negative nvlinks", negative, devs, "-1 NVLinks"},
		{"gpu out of range", good, []Device{{ID: "a", GPU: 8}}, "GPU index 8"},
		{"negative gpu", nil, []Device{{ID: "a", GPU: -1}}, "GPU index -1"},
		{"empty id", good, []Device{{ID: "", GPU: 0}}, "empty ID"},
		{"duplicate id", good, []Device{{ID: "a", GPU: 0}, {ID: "a", GPU: 1}}, `"a" appears twice`},
	}
	for _, tc := range tests {
		if _, err := NewTopology(tc.links, tc.devs); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want error containing %q", tc.name, err, tc.want)
		}
	}
}

// TestNoLinks: without a link matrix pairs score by NUMA, and same-GPU
// partitions still outrank everything.
func TestNoLinks(t *testing.T) {
	devs := []Device{
		{ID: "a", GPU: 0, NUMA: 0}, {ID: "b", GPU: 1, NUMA: 1}, {ID: "c", GPU: 2, NUMA: 0},
		{ID: "d", GPU: 3, NUMA: -1}, {ID: "e0", GPU: 4, NUMA: 1}, {ID: "e1", GPU: 4, NUMA: 1},
	}
	topo, err := NewTopology(nil, devs)
	if err != nil {
		t.Fatal(err)
	}
	if s := topo.Score([]string{"a", "c"}); s != 20 {
		t.Errorf("same NUMA pair scores %d, want 20 (NODE)", s)
	}
	if s := topo.Score([]string{"a", "b"}); s != 10 {
		t.Errorf("cross NUMA pair scores %d, want 10 (SYS)", s)
	}
	if s := topo.Score([]string{"d", "a"}); s != 10 {
		t.Errorf("unknown NUMA pair scores %d, want 10 (SYS)", s)
	}
	if s := topo.Score([]string{"e0", "e1"}); s != 60 {
		t.Errorf("same GPU pair scores %d, want 60", s)
	}
	got, err := topo.Preferred(context.Background(), []string{"a", "b", "c", "e0", "e1"}, nil, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"e0", "e1"}) {
		t.Errorf("got %v, want the two partitions of GPU 4", got)
	}
}

// TestSameGPUScoreAboveCross: a partition pair outranks even the best
// cross-GPU pair.
func TestSameGPUScoreAboveCross(t *testing.T) {
	for _, f := range Fixtures() {
		topo := mustTopo(t, f)
		for i := range f.Links {
			for j := range f.Links[i] {
				if i != j && 100*f.Links[i][j].NVLinks+int(f.Links[i][j].PCIe) >= topo.SameGPUScore() {
					t.Fatalf("%s: GPU%d/GPU%d scores at least the same-GPU score %d", f.Name, i, j, topo.SameGPUScore())
				}
			}
		}
	}
}

// TestPropertyValid: random requests on every fixture always get a valid
// answer, with random availability, must-include sets and sizes.
func TestPropertyValid(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	trials := 400
	if testing.Short() {
		trials = 100
	}
	for _, f := range Fixtures() {
		topo := mustTopo(t, f)
		for range trials {
			a := 1 + r.IntN(len(f.Devices))
			avail := idsOf(f.Devices, randSubset(r, len(f.Devices), a))
			k := 1 + r.IntN(a)
			var must []string
			if r.IntN(2) == 0 {
				must = slices.Clone(avail[:r.IntN(k+1)])
				r.Shuffle(len(must), func(i, j int) { must[i], must[j] = must[j], must[i] })
			}
			got, err := topo.Preferred(context.Background(), avail, must, k)
			if err != nil {
				t.Fatalf("%s: %v", f.Name, err)
			}
			checkValid(t, topo, avail, must, k, got)
		}
	}
}

// TestConcurrent: a Topology is shared by concurrent RPCs.
func TestConcurrent(t *testing.T) {
	f := fixture(t, "dgx-h100-mig56")
	topo := mustTopo(t, f)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 50 {
				avail := idsOf(f.Devices, randSubset(r, len(f.Devices), 20))
				k := 1 + r.IntN(20)
				got, err := topo.Preferred(context.Background(), avail, nil, k)
				if err != nil {
					t.Error(err)
					return
				}
				if len(got) != k {
					t.Errorf("got %d devices, want %d", len(got), k)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestHugeNode: a node far beyond the fixtures (128 GPUs, random links) still
// gets a valid answer within its deadline.
func TestHugeNode(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 13))
	n := 128
	links := newLinks(n, func(i, j int) inventory.Link {
		return inventory.Link{NVLinks: r.IntN(3), PCIe: inventory.Level(10 * (1 + r.IntN(5)))}
	})
	devs := wholeGPUs(n, func(i int) int { return i % 2 })
	topo, err := NewTopology(links, devs)
	if err != nil {
		t.Fatal(err)
	}
	all := idsOf(devs, r.Perm(n))
	for _, k := range []int{1, 5, 64, 127} {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		start := time.Now()
		got, err := topo.Preferred(ctx, all, all[:1], k)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		checkValid(t, topo, all, all[:1], k, got)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("size %d took %s with a 50ms deadline", k, d)
		}
	}
}
