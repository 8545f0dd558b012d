package dra

// The order of the published devices, measured on Kubernetes' own
// allocator: the scheduler's structured allocator
// (k8s.io/dynamic-resource-allocation/structured, the code kube-scheduler
// runs) allocates a replayed sequence of mixed MIG and whole-GPU claims,
// arriving and leaving, against the slices gpulet publishes (first fit:
// each GPU's placements from the lowest memory slice, GPUs in order) and
// against two alternatives: each profile's placements from the top (the
// one that keeps the largest profiles placeable on an empty GPU), and an
// order recomputed after every allocation from the instances held (best
// fit: the placement that blocks the fewest larger placements still
// possible, on the fullest GPU). Metric: the claims accepted.

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/dynamic-resource-allocation/structured"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

type classList []*resourceapi.DeviceClass

func (c classList) List() ([]*resourceapi.DeviceClass, error) { return c, nil }
func (c classList) Get(name string) (*resourceapi.DeviceClass, error) {
	for _, x := range c {
		if x.Name == name {
			return x, nil
		}
	}
	return nil, fmt.Errorf("no class %s", name)
}

// nvidiaClasses are deploy/dra-deviceclasses.yaml's classList.
var nvidiaClasses = classList{
	{ObjectMeta: metav1.ObjectMeta{Name: "gpu.nvidia.com"}, Spec: resourceapi.DeviceClassSpec{Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
		Expression: "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"}}}}},
	{ObjectMeta: metav1.ObjectMeta{Name: "mig.nvidia.com"}, Spec: resourceapi.DeviceClassSpec{Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
		Expression: "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'mig'"}}}}},
}

// apiSlices turns a pool into the ResourceSlices the slice controller
// writes: named with their index first, as it names them.
func apiSlices(pool resourceslice.Pool, node string) []*resourceapi.ResourceSlice {
	var out []*resourceapi.ResourceSlice
	for i, s := range pool.Slices {
		out = append(out, &resourceapi.ResourceSlice{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%02x-%s-%s-x", i, DriverName, node)},
			Spec: resourceapi.ResourceSliceSpec{
				Driver: DriverName, NodeName: &node,
				Pool:    resourceapi.ResourcePool{Name: node, Generation: 1, ResourceSliceCount: int64(len(pool.Slices))},
				Devices: s.Devices, SharedCounters: s.SharedCounters,
			},
		})
	}
	return out
}

// replayClaim is one arrival: a MIG profile ("" for a whole GPU), when it
// comes and how long it stays.
type replayClaim struct {
	profile     string
	at, leaveAt int
}

// replaySequence draws n arrivals, one per step, from the mix (profile ->
// weight), each staying 5 to 40 steps.
func replaySequence(seed uint64, n int, mix map[string]int) []replayClaim {
	r := rand.New(rand.NewPCG(seed, 4815))
	names := slices.Sorted(func(y func(string) bool) {
		for k := range mix {
			if !y(k) {
				return
			}
		}
	})
	total := 0
	for _, k := range names {
		total += mix[k]
	}
	out := make([]replayClaim, n)
	for i := range out {
		x := r.IntN(total)
		for _, k := range names {
			if x -= mix[k]; x < 0 {
				out[i].profile = k
				break
			}
		}
		out[i].at, out[i].leaveAt = i, i+5+r.IntN(36)
	}
	return out
}

// replay allocates seq with the scheduler's allocator against the slices
// build returns for the devices held (by name) and returns how many
// claims it accepted. Every set of devices it holds must fit the counters.
func replay(t testing.TB, sets_ []resourceapi.CounterSet, build func(held map[string]bool) []*resourceapi.ResourceSlice, seq []replayClaim) int {
	ctx := context.Background()
	state := structured.AllocatedState{AllocatedDevices: sets.New[structured.DeviceID]()}
	held := map[int]structured.DeviceID{}
	names := map[string]bool{}
	devs := map[string]resourceapi.Device{}
	cache := cel.NewCache(100, cel.Features{})
	nodeObj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}}
	accepted := 0
	for i, c := range seq {
		for j, id := range held {
			if seq[j].leaveAt <= c.at {
				state.AllocatedDevices.Delete(id)
				delete(names, id.Device.String())
				delete(held, j)
			}
		}
		req := resourceapi.ExactDeviceRequest{DeviceClassName: "gpu.nvidia.com", AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1}
		if c.profile != "" {
			req.DeviceClassName = "mig.nvidia.com"
			req.Selectors = []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{
				Expression: fmt.Sprintf("device.attributes['gpu.nvidia.com'].profile == '%s'", c.profile)}}}
		}
		claim := &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("c%d", i), UID: types.UID(fmt.Sprintf("uid-%d", i))},
			Spec:       resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{Name: "r", Exactly: &req}}}},
		}
		rs := build(names)
		for _, sl := range rs {
			for _, d := range sl.Spec.Devices {
				devs[d.Name] = d
			}
		}
		a, err := structured.NewAllocator(ctx, structured.Features{PartitionableDevices: true}, state, nvidiaClasses, rs, cache)
		if err != nil {
			t.Fatal(err)
		}
		res, err := a.Allocate(ctx, nodeObj, []*resourceapi.ResourceClaim{claim})
		if err != nil {
			t.Fatalf("claim %d (%q): %v", i, c.profile, err)
		}
		if len(res) == 0 {
			continue // does not fit now: rejected
		}
		r := res[0].Devices.Results[0]
		id := structured.MakeDeviceID(r.Driver, r.Pool, r.Device)
		state.AllocatedDevices.Insert(id)
		held[i] = id
		names[r.Device] = true
		var all []resourceapi.Device
		for n := range names {
			all = append(all, devs[n])
		}
		if !fitsCounters(sets_, all...) {
			t.Fatalf("claim %d: the allocator holds %v, beyond the counters", i, slices.Sorted(maps.Keys(names)))
		}
		accepted++
	}
	return accepted
}

// topDown is pool with each GPU's placements of a profile from the
// highest memory slice down.
func topDown(pool resourceslice.Pool) resourceslice.Pool {
	var out resourceslice.Pool
	for _, s := range pool.Slices {
		devs := slices.Clone(s.Devices)
		slices.SortStableFunc(devs, func(a, b resourceapi.Device) int {
			pa, sa := profStart(a)
			pb, sb := profStart(b)
			if pa != pb {
				return 0
			}
			return sb - sa
		})
		out.Slices = append(out.Slices, resourceslice.Slice{Devices: devs, SharedCounters: s.SharedCounters})
	}
	return out
}

func profStart(d resourceapi.Device) (string, int) {
	a, ok := d.Attributes["profile"]
	if !ok {
		return "", 0
	}
	n, _ := strconv.Atoi(d.Name[strings.LastIndex(d.Name, "-")+1:])
	return *a.StringValue, n
}

type pdev struct {
	d          resourceapi.Device
	gpu, start int
	prof       *hardware.MIGProfile // nil: whole
}

func parseDevs(pool resourceslice.Pool, ps []hardware.MIGProfile) []pdev {
	var out []pdev
	for _, s := range pool.Slices {
		for _, d := range s.Devices {
			g, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(d.Name, "gpu-"), "-", 2)[0])
			pd := pdev{d: d, gpu: g}
			if a, ok := d.Attributes["profile"]; ok {
				i := strings.LastIndex(d.Name, "-")
				pd.start, _ = strconv.Atoi(d.Name[i+1:])
				for k := range ps {
					if ps[k].Name == *a.StringValue {
						pd.prof = &ps[k]
					}
				}
			}
			out = append(out, pd)
		}
	}
	return out
}

// statePool orders each profile's devices best fit for the allocations held.
func statePool(counters []resourceslice.Slice, devs []pdev, held map[string]bool, ngpu int) resourceslice.Pool {
	used := make([]uint8, ngpu)
	comp := make([]int, ngpu)
	for _, p := range devs {
		if !held[p.d.Name] {
			continue
		}
		if p.prof == nil {
			used[p.gpu], comp[p.gpu] = 0xff, 7
			continue
		}
		used[p.gpu] |= uint8(((1 << p.prof.MemorySlices) - 1) << p.start)
		comp[p.gpu] += p.prof.ComputeSlices
	}
	mask := func(p pdev) uint8 { return uint8(((1 << p.prof.MemorySlices) - 1) << p.start) }
	fits := func(p pdev) bool {
		if p.prof == nil {
			return used[p.gpu] == 0
		}
		return used[p.gpu]&mask(p) == 0 && comp[p.gpu]+p.prof.ComputeSlices <= 7
	}
	damage := func(p pdev) int {
		if p.prof == nil {
			return 0
		}
		n := 0
		for _, q := range devs {
			if q.prof == nil || q.gpu != p.gpu || q.prof.ComputeSlices <= p.prof.ComputeSlices || !fits(q) {
				continue
			}
			if mask(q)&mask(p) != 0 {
				n += q.prof.ComputeSlices * q.prof.ComputeSlices
			}
		}
		return n
	}
	type keyed struct {
		p      pdev
		f      bool
		dmg, c int
	}
	groups := map[string][]keyed{}
	var names []string
	for _, p := range devs {
		name := ""
		if p.prof != nil {
			name = p.prof.Name
		}
		if _, ok := groups[name]; !ok {
			names = append(names, name)
		}
		groups[name] = append(groups[name], keyed{p, fits(p), damage(p), comp[p.gpu]})
	}
	out := resourceslice.Pool{Slices: slices.Clone(counters)}
	for _, n := range names {
		g := groups[n]
		slices.SortStableFunc(g, func(a, b keyed) int {
			if a.f != b.f {
				if a.f {
					return -1
				}
				return 1
			}
			if a.p.prof == nil {
				return cmp.Compare(b.p.gpu, a.p.gpu)
			}
			return cmp.Or(cmp.Compare(a.dmg, b.dmg), cmp.Compare(b.c, a.c), cmp.Compare(a.p.gpu, b.p.gpu), cmp.Compare(a.p.start, b.p.start))
		})
		var ds []resourceapi.Device
		for _, k := range g {
			ds = append(ds, k.p.d)
		}
		for c := range slices.Chunk(ds, 64) {
			out.Slices = append(out.Slices, resourceslice.Slice{Devices: c})
		}
	}
	return out
}

// The replay accepts claims on every order without the allocator ever
// holding devices beyond the counters; the acceptance of each order is
// docs/benchmarks.md's numbers.
func TestSolverReplay(t *testing.T) {
	if testing.Short() {
		t.Skip("replays thousands of allocations")
	}
	mixes := []struct {
		name string
		mix  map[string]int
	}{
		{"small-heavy", map[string]int{"1g.10gb": 40, "1g.20gb": 10, "2g.20gb": 20, "3g.40gb": 10, "4g.40gb": 10, "7g.80gb": 5, "": 5}},
		{"balanced", map[string]int{"1g.10gb": 20, "1g.20gb": 10, "2g.20gb": 20, "3g.40gb": 20, "4g.40gb": 15, "7g.80gb": 5, "": 10}},
		{"large-heavy", map[string]int{"1g.10gb": 20, "2g.20gb": 10, "3g.40gb": 25, "4g.40gb": 25, "": 20}},
	}
	seeds := uint64(1)
	if s := os.Getenv("GPULET_REPLAY_SEEDS"); s != "" {
		n, _ := strconv.Atoi(s)
		seeds = uint64(n)
	}
	for _, gpus := range []int{2, 8} {
		node, _, dyn := dynNode(t, fmt.Sprintf(`name: h100x%d
driverVersion: 580.159.04
cudaDriverVersion: "13.0"
template: {name: NVIDIA H100 80GB HBM3, architecture: Hopper, memoryMiB: 81559, computeCapability: "9.0", migCapable: true}
count: %d
`, gpus, gpus))
		snap := inventory.NewStore(node).Snapshot()
		ours := Pool(snap, DeviceOptions{DynamicMIG: dyn})
		counters := counterSets(node, dyn)
		devs := parseDevs(ours, dyn[node.GPUs[0].UUID])
		fixed := func(p resourceslice.Pool) func(map[string]bool) []*resourceapi.ResourceSlice {
			rs := apiSlices(p, "n")
			return func(map[string]bool) []*resourceapi.ResourceSlice { return rs }
		}
		orders := []struct {
			name  string
			build func(map[string]bool) []*resourceapi.ResourceSlice
		}{
			{"gpulet (first fit)", fixed(ours)},
			{"top-down", fixed(topDown(ours))},
			{"best fit, recomputed", func(h map[string]bool) []*resourceapi.ResourceSlice {
				return apiSlices(statePool(ours.Slices[:1], devs, h, gpus), "n")
			}},
		}
		for _, m := range mixes {
			var line []string
			claims := 0
			for _, o := range orders {
				n := 0
				for seed := uint64(1); seed <= seeds; seed++ {
					seq := replaySequence(seed, 60*gpus, m.mix)
					if o.name == orders[0].name {
						claims += len(seq)
					}
					n += replay(t, counters, o.build, seq)
				}
				line = append(line, fmt.Sprintf("%s %d (%.1f%%)", o.name, n, 100*float64(n)/float64(claims)))
			}
			t.Logf("replay %d×H100, mix %-11s, %d claims: %s", gpus, m.name, claims, strings.Join(line, ", "))
		}
	}
}
