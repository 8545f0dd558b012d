package dra

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
)

// dynNode is a simulated node with every MIG-capable GPU given to dynamic
// MIG, and the backend that cuts its instances.
// An Ampere GPU is turned to MIG mode first (it cannot switch by itself).
func dynNode(t testing.TB, profile string) (*inventory.Node, hardware.DynamicMIG, DynamicMIG) {
	t.Helper()
	ctx := context.Background()
	b, node := simtest.Backend(t, profile)
	for _, g := range node.GPUs {
		if fixedMIGMode(g) && g.MIGCapable {
			if err := b.SetMIGMode(ctx, g.UUID, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	node, err := b.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dyn := LoadDynamicMIG(ctx, b, node, func(inventory.GPU) bool { return true }, slog.New(slog.DiscardHandler))
	return node, b, dyn
}

func TestDynamicMIGDevicesH200(t *testing.T) {
	node, _, dyn := dynNode(t, "h200")
	snap := inventory.NewStore(node).Snapshot()
	devs := Devices(snap, DeviceOptions{DynamicMIG: dyn})
	// The whole GPU and 7+7+4+3+2+1+1 placements.
	if len(devs) != 26 {
		t.Fatalf("%d devices, want 26", len(devs))
	}
	byName := map[string]resourceapi.Device{}
	for _, d := range devs {
		byName[d.Name] = d
	}
	whole := byName["gpu-0"]
	if attrString(whole, "type") != "gpu" || attrString(whole, "uuid") != node.GPUs[0].UUID || len(whole.ConsumesCounters) != 1 {
		t.Fatalf("whole GPU: %+v", whole)
	}
	three, ok := byName["gpu-0-mig-3g71gb-9-4"]
	if !ok {
		t.Fatalf("no gpu-0-mig-3g71gb-9-4 among %v", slices.Collect(func(y func(string) bool) {
			for n := range byName {
				if !y(n) {
					return
				}
			}
		}))
	}
	for k, v := range map[resourceapi.QualifiedName]string{
		"type": "mig", "profile": "3g.71gb", "parentUUID": node.GPUs[0].UUID, "uuid": "<none>", "productName": "NVIDIA H200",
	} {
		if got := attrString(three, k); got != v {
			t.Errorf("3g.71gb@4: %s = %s, want %s", k, got, v)
		}
	}
	for _, c := range []resourceapi.QualifiedName{"memorySlice4", "memorySlice5", "memorySlice6", "memorySlice7"} {
		if q, ok := three.Capacity[c]; !ok || q.Value.Value() != 1 {
			t.Errorf("3g.71gb@4: capacity %s = %v", c, q.Value.String())
		}
	}
	if _, ok := three.Capacity["memorySlice3"]; ok {
		t.Error("3g.71gb@4 has memorySlice3")
	}
	cc := three.ConsumesCounters
	if len(cc) != 1 || cc[0].CounterSet != "gpu-0-counter-set" {
		t.Fatalf("3g.71gb@4 consumes %+v", cc)
	}
	if _, ok := byName["gpu-0-mig-1g18gb-me-20-6"]; !ok {
		t.Error("no gpu-0-mig-1g18gb-me-20-6")
	}
	for _, d := range devs {
		if n := len(d.Attributes) + len(d.Capacity); n > resourceapi.ResourceSliceMaxAttributesAndCapacitiesPerDevice {
			t.Errorf("%s: %d attributes and capacities", d.Name, n)
		}
		for _, c := range d.ConsumesCounters {
			if len(c.Counters) > resourceapi.ResourceSliceMaxCountersPerDeviceCounterConsumption {
				t.Errorf("%s: %d counters", d.Name, len(c.Counters))
			}
		}
	}
	b, _ := json.MarshalIndent(three, "", "  ")
	t.Logf("gpu-0-mig-3g71gb-9-4 as published:\n%s", b)
}

// consumed adds up what devs consume from each counter; fits says whether
// that stays within sets.
func fitsCounters(sets []resourceapi.CounterSet, devs ...resourceapi.Device) bool {
	avail := map[string]map[string]int64{}
	for _, s := range sets {
		avail[s.Name] = map[string]int64{}
		for n, c := range s.Counters {
			avail[s.Name][n] = c.Value.Value()
		}
	}
	for _, d := range devs {
		for _, cc := range d.ConsumesCounters {
			for n, c := range cc.Counters {
				avail[cc.CounterSet][n] -= c.Value.Value()
				if avail[cc.CounterSet][n] < 0 {
					return false
				}
			}
		}
	}
	return true
}

// The counters are exactly as strict as the hardware, on each product's
// table: every set of placements the GPU can hold at once fits the
// counters, and every set it cannot hold (shared memory slice, more than
// seven compute slices, two media-extension instances) does not; the whole
// GPU fits alone and with nothing else.
func TestDynamicMIGCountersMatchHardware(t *testing.T) {
	for _, profile := range []string{a100Dyn, "dgx-h100", "h200"} {
		node, _, dyn := dynNode(t, profile)
		snap := inventory.NewStore(node).Snapshot()
		o := DeviceOptions{DynamicMIG: dyn}
		sets := counterSets(node, dyn)
		g := node.GPUs[0]
		ps := dyn[g.UUID]
		var parts []resourceapi.Device
		var place []placement
		for _, e := range catalog(node, dyn) {
			if e.GPU == 0 && e.Place != nil {
				place = append(place, *e.Place)
			}
		}
		for _, d := range Devices(snap, o) {
			if strings.HasPrefix(d.Name, "gpu-0-mig-") {
				parts = append(parts, d)
			}
		}
		if len(parts) != len(place) {
			t.Fatalf("%s: %d placement devices, %d catalog entries", g.Name, len(parts), len(place))
		}
		full := slices.MaxFunc(ps, func(a, b hardware.MIGProfile) int { return a.ComputeSlices - b.ComputeSlices })
		hwFits := func(idx []int) bool {
			used := make([]bool, 8)
			compute, ofa := 0, 0
			for _, i := range idx {
				p := place[i]
				for s := p.Start; s < p.Start+p.Profile.MemorySlices; s++ {
					if used[s] {
						return false
					}
					used[s] = true
				}
				compute += p.Profile.ComputeSlices
				ofa += p.Profile.OFAs
			}
			return compute <= full.ComputeSlices && ofa <= full.OFAs
		}
		// Every subset up to the GPU's seven instances, grown one
		// placement at a time: a subset the hardware refuses is checked
		// and not grown.
		checked := 0
		var grow func(idx []int, from int)
		grow = func(idx []int, from int) {
			for i := from; i < len(place); i++ {
				next := append(slices.Clone(idx), i)
				devs := make([]resourceapi.Device, len(next))
				for k, j := range next {
					devs[k] = parts[j]
				}
				hw, ctr := hwFits(next), fitsCounters(sets, devs...)
				checked++
				if hw != ctr {
					var names []string
					for _, d := range devs {
						names = append(names, d.Name)
					}
					t.Fatalf("%s: %v: hardware fits %v, counters fit %v", g.Name, names, hw, ctr)
				}
				if hw {
					grow(next, i+1)
				}
			}
		}
		grow(nil, 0)
		all := Devices(snap, o)
		w := slices.IndexFunc(all, func(d resourceapi.Device) bool { return d.Name == "gpu-0" })
		if fixedMIGMode(g) {
			if w >= 0 {
				t.Fatalf("%s in MIG mode published whole", g.Name)
			}
			t.Logf("%s: %d placement sets checked (no whole device: MIG mode switches only with a reset)", g.Name, checked)
			continue
		}
		whole := all[w]
		if !fitsCounters(sets, whole) {
			t.Fatalf("%s: the whole GPU alone does not fit", g.Name)
		}
		for _, p := range parts {
			if fitsCounters(sets, whole, p) {
				t.Fatalf("%s: the whole GPU fits with %s", g.Name, p.Name)
			}
		}
		t.Logf("%s: %d placement sets checked", g.Name, checked)
	}
}

// a100Dyn is one A100-40GB, MIG off (dynNode turns it on).
const a100Dyn = `name: a100
driverVersion: 580.159.04
cudaDriverVersion: "13.0"
gpus:
  - {name: NVIDIA A100-SXM4-40GB, architecture: Ampere, memoryMiB: 40960, computeCapability: "8.0", migCapable: true}
`

// A node of eight H100s: one counter slice (eight sets), then one slice
// per GPU of the whole GPU and its 25 placements (first fit: lowest memory
// slice first); every slice within the API's limits. A GPU that cannot do
// MIG stays whole and needs no counters (NVIDIA's #1092).
func TestDynamicMIGPool(t *testing.T) {
	node, _, dyn := dynNode(t, "dgx-h100")
	snap := inventory.NewStore(node).Snapshot()
	pool := Pool(snap, DeviceOptions{DynamicMIG: dyn})
	if len(pool.Slices) != 9 {
		t.Fatalf("%d slices, want 9", len(pool.Slices))
	}
	if s := pool.Slices[0]; len(s.SharedCounters) != 8 || len(s.Devices) != 0 {
		t.Fatalf("first slice: %d counter sets, %d devices", len(s.SharedCounters), len(s.Devices))
	}
	devices, counters := 0, 0
	for i, s := range pool.Slices {
		if len(s.SharedCounters) > resourceapi.ResourceSliceMaxCounterSets || len(s.Devices) > resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures {
			t.Errorf("slice %d: %d counter sets, %d devices", i, len(s.SharedCounters), len(s.Devices))
		}
		for _, cs := range s.SharedCounters {
			if len(cs.Counters) > resourceapi.ResourceSliceMaxCountersPerCounterSet {
				t.Errorf("%s: %d counters", cs.Name, len(cs.Counters))
			}
			counters += len(cs.Counters)
		}
		devices += len(s.Devices)
		if i == 0 {
			continue
		}
		g := "gpu-" + strconv.Itoa(i-1)
		if len(s.Devices) != 26 || s.Devices[0].Name != g || s.Devices[1].Name != g+"-mig-1g10gb-19-0" || s.Devices[7].Name != g+"-mig-1g10gb-19-6" {
			t.Errorf("slice %d: %d devices, starting %s, %s", i, len(s.Devices), s.Devices[0].Name, s.Devices[1].Name)
		}
	}
	if devices != 8*26 || counters != 8*15 {
		t.Errorf("%d devices, %d counters", devices, counters)
	}
	js, _ := json.Marshal(pool.Slices)
	t.Logf("8×H100 dynamic MIG pool: %d slices, %d devices, %d counter sets, %d counters, %d bytes of JSON", len(pool.Slices), devices, 8, counters, len(js))

	node, _, dyn = dynNode(t, "pcie-4x-l4")
	if len(dyn) != 0 {
		t.Fatalf("L4s given profiles: %v", dyn)
	}
	pool = Pool(inventory.NewStore(node).Snapshot(), DeviceOptions{DynamicMIG: dyn})
	if len(pool.Slices) != 1 || len(pool.Slices[0].Devices) != 4 || pool.Slices[0].Devices[0].ConsumesCounters != nil {
		t.Fatalf("L4 node: %+v", pool.Slices)
	}
}

// A fault on a dynamic GPU taints the whole GPU and every one of its
// placements (NVIDIA's xid key); the other GPU's devices stay clean.
func TestDynamicMIGTaints(t *testing.T) {
	node, _, dyn := dynNode(t, "dgx-h100")
	store := inventory.NewStore(node)
	store.SetHealth(node.GPUs[1].UUID, inventory.Health{Reason: "XID 48", XID: 48})
	tainted, clean := 0, 0
	for _, d := range Devices(store.Snapshot(), DeviceOptions{DynamicMIG: dyn}) {
		onGPU1 := d.Name == "gpu-1" || strings.HasPrefix(d.Name, "gpu-1-mig-")
		switch {
		case onGPU1 && (len(d.Taints) != 1 || d.Taints[0].Key != TaintKeyXID || d.Taints[0].Value != "48"):
			t.Errorf("%s: taints %+v", d.Name, d.Taints)
		case !onGPU1 && len(d.Taints) != 0:
			t.Errorf("%s tainted: %+v", d.Name, d.Taints)
		case onGPU1:
			tainted++
		default:
			clean++
		}
	}
	if tainted != 26 || clean != 7*26 {
		t.Fatalf("%d tainted, %d clean", tainted, clean)
	}
}

// An A100 (Ampere: MIG mode switches only with a GPU reset) is dynamic
// only in MIG mode, then published without its whole device; in MIG mode
// off it is published whole, without counters.
func TestDynamicMIGAmpere(t *testing.T) {
	ctx := context.Background()
	b, node := simtest.Backend(t, a100Dyn)
	all := func(inventory.GPU) bool { return true }
	dyn := LoadDynamicMIG(ctx, b, node, all, slog.New(slog.DiscardHandler))
	devs := Devices(inventory.NewStore(node).Snapshot(), DeviceOptions{DynamicMIG: dyn})
	if len(dyn) != 0 || len(devs) != 1 || devs[0].Name != "gpu-0" || devs[0].ConsumesCounters != nil {
		t.Fatalf("A100, MIG off: %d dynamic, devices %+v", len(dyn), devs)
	}
	if err := b.SetMIGMode(ctx, node.GPUs[0].UUID, true); err != nil {
		t.Fatal(err)
	}
	node, _ = b.Discover(ctx)
	dyn = LoadDynamicMIG(ctx, b, node, all, slog.New(slog.DiscardHandler))
	devs = Devices(inventory.NewStore(node).Snapshot(), DeviceOptions{DynamicMIG: dyn})
	if len(devs) != 25 || slices.ContainsFunc(devs, func(d resourceapi.Device) bool { return d.Name == "gpu-0" }) {
		t.Fatalf("A100, MIG on: %d devices (whole GPU among them: %v)", len(devs), slices.ContainsFunc(devs, func(d resourceapi.Device) bool { return d.Name == "gpu-0" }))
	}
}
