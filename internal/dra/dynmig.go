package dra

// Dynamic MIG publishing (KEP-4815 partitionable devices): a GPU given to
// dynamic MIG is published whole and as every GPU-instance placement its
// profiles allow, with one counter set per GPU whose counters (memory
// slices, memory, engines) the whole GPU consumes entirely and each
// placement in part. The scheduler then never allocates the whole GPU
// with a partition, nor two partitions that share a memory slice. The
// instance itself is cut at Prepare (dynmig_prepare.go).
//
// Names and attributes are NVIDIA's DynamicMIG ones: gpu-<minor>-mig-
// <profile>-<GI profile ID>-<placement start>, type mig, profile,
// parentUUID, memorySlice<N> capacities; the counter set is
// gpu-<minor>-counter-set with counters memory, multiprocessors,
// copy-engines, decoders, encoders, jpeg-engines, ofa-engines and
// memory-slice-<N>.
//
// Order: the allocator is first-fit over a pool's slices (by name, which
// the slice controller prefixes with the slice's index) and their devices
// in order. Each dynamic GPU's devices are one slice, the whole GPU first,
// then each profile's placements from the lowest memory slice up, GPUs in
// index order: plain first fit, NVIDIA's order. Other orders (small
// profiles from the top, whole GPUs from the last GPU, an order recomputed
// from the instances held) were replayed on Kubernetes' allocator and none
// accepted more claims consistently (docs/benchmarks.md, solver_test.go).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/dynamic-resource-allocation/resourceslice"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

// DynamicMIG maps the UUID of each GPU given to dynamic MIG to its
// GPU-instance profiles (hardware.DynamicMIG.MIGProfiles). A GPU without
// an entry, or with no profiles, is published as before.
type DynamicMIG map[string][]hardware.MIGProfile

// placement is a GPU-instance placement published as a device.
type placement struct {
	Profile hardware.MIGProfile
	Start   int
}

// counterSetName is NVIDIA's name of a GPU's counter set.
func counterSetName(g inventory.GPU) string { return "gpu-" + strconv.Itoa(g.Minor) + "-counter-set" }

// placementName is NVIDIA's DynamicMIG device name of a placement.
func placementName(g inventory.GPU, p hardware.MIGProfile, start int) string {
	return fmt.Sprintf("gpu-%d-mig-%s-%d-%d", g.Minor, migNamePart(p.Name), p.ID, start)
}

// counters are the counters a profile at start consumes; the whole GPU
// consumes full (every memory slice, and the GPU's memory and engines).
func counters(p hardware.MIGProfile, start, memSlices int, memBytes uint64) map[string]resourceapi.Counter {
	q := func(n int64) resourceapi.Counter {
		return resourceapi.Counter{Value: *resource.NewQuantity(n, resource.DecimalSI)}
	}
	out := map[string]resourceapi.Counter{
		"memory":          {Value: *resource.NewQuantity(int64(memBytes), resource.BinarySI)},
		"multiprocessors": q(int64(p.Multiprocessors)),
		"copy-engines":    q(int64(p.CopyEngines)),
		"decoders":        q(int64(p.Decoders)),
		"encoders":        q(int64(p.Encoders)),
		"jpeg-engines":    q(int64(p.JPEGs)),
		"ofa-engines":     q(int64(p.OFAs)),
	}
	for i := start; i < start+memSlices; i++ {
		out["memory-slice-"+strconv.Itoa(i)] = q(1)
	}
	return out
}

// fullCounters is a GPU's counter set content: for each engine the most
// any profile has (the full profile's), all memory slices, all memory.
func fullCounters(g inventory.GPU, ps []hardware.MIGProfile) map[string]resourceapi.Counter {
	var full hardware.MIGProfile
	slots := 0
	for _, p := range ps {
		full.Multiprocessors = max(full.Multiprocessors, p.Multiprocessors)
		full.CopyEngines = max(full.CopyEngines, p.CopyEngines)
		full.Decoders = max(full.Decoders, p.Decoders)
		full.Encoders = max(full.Encoders, p.Encoders)
		full.JPEGs = max(full.JPEGs, p.JPEGs)
		full.OFAs = max(full.OFAs, p.OFAs)
		for _, s := range p.Placements {
			slots = max(slots, s+p.MemorySlices)
		}
	}
	return counters(full, 0, slots, g.MemoryBytes)
}

// fixedMIGMode says whether g cannot switch MIG mode without a GPU reset
// (Ampere: A100, A30; Hopper and later switch in place). Such a GPU is
// dynamic only while MIG mode is on, is then published without its whole
// device, and its MIG mode is never switched.
func fixedMIGMode(g inventory.GPU) bool { return g.Architecture == "Ampere" }

// dynamicProfiles are the profiles GPU g is published with, or nil when it
// is not a dynamic MIG GPU.
func (dyn DynamicMIG) dynamicProfiles(g inventory.GPU) []hardware.MIGProfile {
	ps := dyn[g.UUID]
	if len(ps) == 0 {
		return nil
	}
	return ps
}

// dynamicDevices are the devices of dynamic GPU g (position gi in the node):
// the whole GPU consuming everything (not on a fixedMIGMode GPU), and every
// placement.
func dynamicDevices(node *inventory.Node, gi int, ps []hardware.MIGProfile, whole resourceapi.Device, o DeviceOptions) []resourceapi.Device {
	g := node.GPUs[gi]
	set := counterSetName(g)
	whole.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{CounterSet: set, Counters: fullCounters(g, ps)}}
	var out []resourceapi.Device
	if !fixedMIGMode(g) {
		out = append(out, whole) // an Ampere GPU in MIG mode is never handed out whole
	}
	for _, p := range ps {
		for _, start := range p.Placements {
			out = append(out, placementDevice(node, gi, p, start, set, o))
		}
	}
	return out
}

// placementDevice is a not yet existing MIG instance: the MIG device's
// attributes less its UUID, the profile's capacities, and its counters.
func placementDevice(node *inventory.Node, gi int, p hardware.MIGProfile, start int, set string, o DeviceOptions) resourceapi.Device {
	g := node.GPUs[gi]
	m := inventory.MIGDevice{Profile: p.Name, MemoryBytes: p.MemoryBytes, GIProfile: &inventory.MIGGIProfile{
		ID: p.ID, PlacementStart: start, PlacementSize: p.MemorySlices, MemoryBytes: p.MemoryBytes,
		Multiprocessors: p.Multiprocessors, CopyEngines: p.CopyEngines, Decoders: p.Decoders, Encoders: p.Encoders, JPEGs: p.JPEGs, OFAs: p.OFAs,
	}}
	probe := *node
	probe.GPUs = slices.Clone(node.GPUs)
	probe.GPUs[gi].MIGDevices = []inventory.MIGDevice{m}
	d := device(&probe, entry{Name: placementName(g, p, start), Parent: g.UUID, GPU: gi, MIG: 0}, nil, o)
	delete(d.Attributes, "uuid") // the instance does not exist yet
	d.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{CounterSet: set, Counters: counters(p, start, p.MemorySlices, p.MemoryBytes)}}
	return d
}

// counterSets are the counter sets of the node's dynamic GPUs.
func counterSets(node *inventory.Node, dyn DynamicMIG) []resourceapi.CounterSet {
	var out []resourceapi.CounterSet
	for _, g := range node.GPUs {
		if ps := dyn.dynamicProfiles(g); ps != nil {
			out = append(out, resourceapi.CounterSet{Name: counterSetName(g), Counters: fullCounters(g, ps)})
		}
	}
	return out
}

// Pool returns the slices gpulet publishes for snap: counter sets first
// (at most ResourceSliceMaxCounterSets a slice; a slice holds devices or
// counter sets, never both), then the devices in their groups (plain
// devices; each dynamic GPU whole and its placements), each group cut into
// slices the API accepts.
func Pool(snap inventory.Snapshot, o DeviceOptions) resourceslice.Pool {
	groups := deviceGroups(snap, o)
	var pool resourceslice.Pool
	for chunk := range slices.Chunk(counterSets(snap.Node, o.DynamicMIG), resourceapi.ResourceSliceMaxCounterSets) {
		pool.Slices = append(pool.Slices, resourceslice.Slice{SharedCounters: chunk})
	}
	for _, g := range groups {
		for _, chunk := range slicesOf(g) {
			pool.Slices = append(pool.Slices, resourceslice.Slice{Devices: chunk})
		}
	}
	if len(pool.Slices) == 0 {
		// An empty slice keeps the pool (and its generation) visible.
		pool.Slices = []resourceslice.Slice{{}}
	}
	return pool
}

// LoadDynamicMIG reads the profiles of the node's GPUs that want says are
// for dynamic MIG. A GPU that cannot do MIG (not MIG-capable, or the
// backend says so) is left out and so published whole, as is one whose
// profiles cannot be read now (logged); the node keeps working either way.
func LoadDynamicMIG(ctx context.Context, mig hardware.DynamicMIG, node *inventory.Node, want func(inventory.GPU) bool, log *slog.Logger) DynamicMIG {
	out := DynamicMIG{}
	for _, g := range node.GPUs {
		if !want(g) {
			continue
		}
		if !g.MIGCapable || mig == nil {
			log.Info("dynamic MIG: GPU cannot do MIG; published whole", "gpu", g.Index, "uuid", g.UUID, "product", g.Name)
			continue
		}
		if fixedMIGMode(g) && !g.MIGEnabled {
			log.Info("dynamic MIG: this GPU switches MIG mode only with a GPU reset; turn MIG mode on (nvidia-smi -i <index> -mig 1, then a reset) to cut its instances on request; published whole",
				"gpu", g.Index, "uuid", g.UUID, "architecture", g.Architecture)
			continue
		}
		ps, err := mig.MIGProfiles(ctx, g.UUID)
		if err != nil {
			if errors.Is(err, hardware.ErrMIGUnsupported) {
				log.Info("dynamic MIG: GPU cannot do MIG; published whole", "gpu", g.Index, "uuid", g.UUID, "err", err)
			} else {
				log.Warn("dynamic MIG: GPU profiles not readable; published whole until gpulet restarts", "gpu", g.Index, "uuid", g.UUID, "err", err)
			}
			continue
		}
		out[g.UUID] = ps
	}
	return out
}
