package dra

// Dynamic MIG at Prepare and Unprepare. The record of a claim's placement
// device (preparedDevice.MIG) says which instance it stands for (GPU,
// profile, placement) before the instance exists: Prepare saves it as
// PrepareStarted, then creates the instance, then writes the spec, then
// saves PrepareCompleted with the instance's IDs. Whatever step a crash
// interrupts, the record finds the instance again by its placement (no
// two instances share a memory slice), so release destroys it; and at
// start any instance on a dynamic GPU that no record holds is destroyed
// (sweepMIG), while one a PrepareCompleted record holds is never touched.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

// Steps of dynamic MIG between which a crash is survivable (Driver.crashAt).
const (
	stepPrepareInstances   = "prepare: instances created"
	stepUnprepareInstances = "unprepare: spec removed, instances not yet destroyed"
)

// migRecord is the dynamic MIG instance a prepared device stands for.
type migRecord struct {
	GPU       string `json:"gpu"` // the parent GPU's UUID
	ProfileID int    `json:"profileId"`
	Profile   string `json:"profile"`
	Start     int    `json:"start"`
	Size      int    `json:"size"`
	// Made is the instance once created (its GI, CI and UUID).
	Made *hardware.MIGInstance `json:"made,omitempty"`
}

// migSliceKey and migGPUKey are inUse keys: a memory slice of a GPU held
// by a claim's instance, and a GPU with any such instance.
func migSliceKey(gpu string, slice int) string { return "mig/" + gpu + "/" + strconv.Itoa(slice) }
func migGPUKey(gpu string) string              { return "migs/" + gpu }

// markMIGInUse adds a record's dynamic MIG holdings to inUse.
func markMIGInUse(inUse map[string]string, uid string, p preparedDevice) {
	if m := p.MIG; m != nil {
		inUse[migGPUKey(m.GPU)] = uid
		for s := m.Start; s < m.Start+m.Size; s++ {
			inUse[migSliceKey(m.GPU, s)] = uid
		}
	}
}

// migConflict says which claim already holds what a device of claim uid
// needs: for a placement, its GPU whole or one of its memory slices; for a
// whole dynamic GPU, any instance on it. "" when free.
func (d *Driver) migConflict(inUse map[string]string, uid string, e entry) string {
	held := func(key string) string {
		if owner, ok := inUse[key]; ok && owner != uid {
			return owner
		}
		return ""
	}
	if p := e.Place; p != nil {
		if o := held(e.Parent); o != "" {
			return o
		}
		for s := p.Start; s < p.Start+p.Profile.MemorySlices; s++ {
			if o := held(migSliceKey(e.Parent, s)); o != "" {
				return o
			}
		}
		return ""
	}
	if d.o.Devices.DynamicMIG.dynamicProfiles(d.o.Store.Snapshot().Node.GPUs[e.GPU]) != nil {
		return held(migGPUKey(e.UUID))
	}
	return ""
}

// prepareMIG makes the claim's dynamic devices real: MIG mode on and the
// instance created for each placement, MIG mode off for a whole dynamic
// GPU. It returns the record with the instances filled in; on error what
// it created is still in the returned record, for release to destroy.
func (d *Driver) prepareMIG(ctx context.Context, pc preparedClaim) (preparedClaim, error) {
	pc.Devices = slices.Clone(pc.Devices)
	for i, p := range pc.Devices {
		if p.MIG == nil {
			if d.o.Devices.DynamicMIG[p.UUID] != nil {
				if err := d.wholeGPU(ctx, p.UUID); err != nil {
					return pc, fmt.Errorf("device %s: %w", p.Device, err)
				}
			}
			continue
		}
		m := *p.MIG
		if d.o.MIG == nil {
			return pc, fmt.Errorf("device %s: this backend cannot create MIG instances", p.Device)
		}
		on, err := d.o.MIG.MIGMode(ctx, m.GPU)
		if err == nil && !on {
			if err = d.o.MIG.SetMIGMode(ctx, m.GPU, true); err == nil {
				d.log.Info("dynamic MIG: MIG mode turned on", "gpu", m.GPU)
			}
		}
		if err != nil {
			return pc, fmt.Errorf("device %s: turn MIG mode on: %w", p.Device, err)
		}
		in, err := d.o.MIG.CreateMIGInstance(ctx, m.GPU, m.ProfileID, m.Start)
		if err != nil {
			return pc, fmt.Errorf("device %s: create the %s instance at memory slice %d: %w", p.Device, m.Profile, m.Start, err)
		}
		m.Made = &in
		p.MIG, p.UUID = &m, in.UUID
		pc.Devices[i] = p
		if in.UUID == "" {
			return pc, fmt.Errorf("device %s: the new MIG instance (GI %d, CI %d) has no UUID in NVML's list", p.Device, in.GI, in.CI)
		}
		d.log.Info("dynamic MIG: instance created", "device", p.Device, "gpu", m.GPU, "gi", in.GI, "ci", in.CI, "uuid", in.UUID)
	}
	return pc, nil
}

// wholeGPU readies a dynamic GPU to be handed out whole: MIG mode off. An
// instance left on it (not a claim's: the scheduler would not have given
// the GPU) is refused rather than destroyed here.
func (d *Driver) wholeGPU(ctx context.Context, gpu string) error {
	if d.o.MIG == nil {
		return nil
	}
	on, err := d.o.MIG.MIGMode(ctx, gpu)
	if err != nil || !on {
		return err
	}
	ins, err := d.o.MIG.MIGInstances(ctx, gpu)
	if err != nil {
		return err
	}
	if len(ins) > 0 {
		return fmt.Errorf("GPU %s still has %d MIG instances that no claim holds; they are destroyed when gpulet restarts, or destroy them with nvidia-smi mig -dci/-dgi", gpu, len(ins))
	}
	if err := d.o.MIG.SetMIGMode(ctx, gpu, false); err != nil {
		return fmt.Errorf("turn MIG mode off to hand the GPU out whole: %w", err)
	}
	d.log.Info("dynamic MIG: MIG mode turned off for a whole-GPU claim", "gpu", gpu)
	return nil
}

// releaseMIG destroys the instances of claim uid's record pc, found by
// their placement, unless another claim of cp holds that placement; then
// returns each GPU left without instances to whole when so configured.
func (d *Driver) releaseMIG(ctx context.Context, cp *checkpoint, uid string, pc preparedClaim) error {
	if d.o.MIG == nil {
		return nil
	}
	var gpus []string
	for _, p := range pc.Devices {
		m := p.MIG
		if m == nil {
			continue
		}
		if owner := heldElsewhere(cp, uid, m); owner != "" {
			d.log.Warn("dynamic MIG: instance not destroyed: another claim holds its placement", "device", p.Device, "claim", owner)
			continue
		}
		if err := d.destroyAt(ctx, m.GPU, m.ProfileID, m.Start); err != nil {
			return fmt.Errorf("device %s: %w", p.Device, err)
		}
		if !slices.Contains(gpus, m.GPU) {
			gpus = append(gpus, m.GPU)
		}
	}
	for _, g := range gpus {
		d.maybeWhole(ctx, cp, uid, g)
	}
	return nil
}

// heldElsewhere returns the claim of cp other than uid whose record holds
// an instance overlapping m, or "".
func heldElsewhere(cp *checkpoint, uid string, m *migRecord) string {
	for other, pc := range cp.Claims {
		if other == uid {
			continue
		}
		for _, p := range pc.Devices {
			if o := p.MIG; o != nil && o.GPU == m.GPU && o.Start < m.Start+m.Size && m.Start < o.Start+o.Size {
				return other
			}
		}
	}
	return ""
}

// destroyAt destroys the instance of the profile at start, if any.
func (d *Driver) destroyAt(ctx context.Context, gpu string, profileID, start int) error {
	ins, err := d.o.MIG.MIGInstances(ctx, gpu)
	if err != nil {
		return fmt.Errorf("list MIG instances of GPU %s: %w", gpu, err)
	}
	for _, in := range ins {
		if in.Start != start || in.ProfileID != profileID {
			continue
		}
		if err := d.o.MIG.DestroyMIGInstance(ctx, gpu, in.GI, in.CI); err != nil {
			return fmt.Errorf("destroy MIG instance GI %d CI %d of GPU %s: %w", in.GI, in.CI, gpu, err)
		}
		d.log.Info("dynamic MIG: instance destroyed", "gpu", gpu, "gi", in.GI, "ci", in.CI, "start", start)
	}
	return nil
}

// maybeWhole turns MIG mode off on gpu when configured so, the GPU can
// switch without a reset, MIG mode is on, no claim of cp but uid holds an
// instance there, and none is left.
func (d *Driver) maybeWhole(ctx context.Context, cp *checkpoint, uid, gpu string) {
	if !d.o.MIGWholeWhenIdle {
		return
	}
	if g, _, ok := d.o.Store.Snapshot().Node.GPUByUUID(gpu); ok && fixedMIGMode(g) {
		return // switching back needs a GPU reset
	}
	if on, err := d.o.MIG.MIGMode(ctx, gpu); err != nil || !on {
		return
	}
	for other, pc := range cp.Claims {
		for _, p := range pc.Devices {
			if other != uid && p.MIG != nil && p.MIG.GPU == gpu {
				return
			}
		}
	}
	ins, err := d.o.MIG.MIGInstances(ctx, gpu)
	if err != nil || len(ins) > 0 {
		return
	}
	if err := d.o.MIG.SetMIGMode(ctx, gpu, false); err != nil {
		d.log.Warn("dynamic MIG: MIG mode left on", "gpu", gpu, "err", err)
		return
	}
	d.log.Info("dynamic MIG: last instance gone, MIG mode turned off", "gpu", gpu)
}

// sweepMIG destroys, on every dynamic GPU, the instances that no record
// of cp holds: what a crash left without a record, or anyone else's. Run
// at start, after the records were repaired; an instance that cannot be
// destroyed (in use) is logged and left.
func (d *Driver) sweepMIG(ctx context.Context, cp *checkpoint) {
	if d.o.MIG == nil {
		return
	}
	for _, gpu := range slices.Sorted(maps.Keys(d.o.Devices.DynamicMIG)) {
		ins, err := d.o.MIG.MIGInstances(ctx, gpu)
		if err != nil {
			d.log.Warn("dynamic MIG: instances not checked at start", "gpu", gpu, "err", err)
			continue
		}
		for _, in := range ins {
			m := &migRecord{GPU: gpu, Start: in.Start, Size: max(in.Size, 1)}
			if owner := heldElsewhere(cp, "", m); owner != "" {
				continue
			}
			if err := d.o.MIG.DestroyMIGInstance(ctx, gpu, in.GI, in.CI); err != nil {
				d.log.Warn("dynamic MIG: orphaned instance not destroyed", "gpu", gpu, "gi", in.GI, "ci", in.CI, "err", err)
				continue
			}
			d.log.Info("dynamic MIG: orphaned instance destroyed", "gpu", gpu, "gi", in.GI, "ci", in.CI, "start", in.Start)
		}
		d.maybeWhole(ctx, cp, "", gpu)
	}
}

// withInstances is node with the claim's dynamic instances added to their
// GPUs, so the CDI spec finds them (and their caps nodes) by UUID.
func withInstances(node *inventory.Node, devs []preparedDevice) *inventory.Node {
	var add []preparedDevice
	for _, p := range devs {
		if p.MIG != nil && p.MIG.Made != nil {
			add = append(add, p)
		}
	}
	if len(add) == 0 {
		return node
	}
	n := *node
	n.GPUs = slices.Clone(node.GPUs)
	for i := range n.GPUs {
		g := &n.GPUs[i]
		for _, p := range add {
			if p.MIG.GPU != g.UUID {
				continue
			}
			g.MIGDevices = append(slices.Clip(g.MIGDevices), inventory.MIGDevice{
				UUID: p.UUID, GI: p.MIG.Made.GI, CI: p.MIG.Made.CI, Profile: p.MIG.Profile, Index: -1,
			})
		}
	}
	return &n
}

// errNoDynamicSharing refuses sharing settings on a dynamic MIG device.
var errNoDynamicSharing = errors.New("sharing (time-slicing, MPS) is not supported on dynamically created MIG devices; drop the claim's sharing config")
