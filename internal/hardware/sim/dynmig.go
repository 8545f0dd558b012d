package sim

// Dynamic MIG in the simulator: MIG mode and the instances cut on request
// live in root/mig.json, so they outlive a restarted daemon as a real
// GPU's instances do, and Discover reports them. The hardware rules are
// the tables' (migtables.go): an instance covers its memory slices, no two
// instances share one, the compute slices in use never exceed seven, and
// only as many media-extension (+me) instances exist as the GPU has OFAs.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

const migStateFile = "mig.json"

var _ hardware.DynamicMIG = (*Backend)(nil)

// migState is what the simulator's GPUs hold beyond their profile.
type migState struct {
	GPUs map[string]*gpuMIG `json:"gpus"` // by UUID; only GPUs touched
}

type gpuMIG struct {
	Enabled   bool                   `json:"enabled"`
	Instances []hardware.MIGInstance `json:"instances"`
	// Made counts instances ever created, so each gets a new UUID.
	Made int `json:"made"`
}

func (b *Backend) readMIG() (migState, error) {
	st := migState{GPUs: map[string]*gpuMIG{}}
	data, err := os.ReadFile(filepath.Join(b.root, migStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read simulated MIG state: %w", err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("simulated MIG state %s is not valid JSON (delete it to start over): %w", filepath.Join(b.root, migStateFile), err)
	}
	if st.GPUs == nil {
		st.GPUs = map[string]*gpuMIG{}
	}
	return st, nil
}

// updateMIG applies change to GPU uuid's MIG state under the simulator's
// lock and saves it. The GPU's state starts from its profile.
func (b *Backend) updateMIG(uuid string, change func(g inventory.GPU, table []hardware.MIGProfile, st *gpuMIG) error) error {
	g, table, err := b.migGPU(uuid)
	if err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(b.root, lockFile), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("lock simulated MIG state: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock simulated MIG state: %w", err)
	}
	all, err := b.readMIG()
	if err != nil {
		return err
	}
	st := all.GPUs[uuid]
	if st == nil {
		st = initialMIG(g, table)
		all.GPUs[uuid] = st
	}
	if err := change(g, table, st); err != nil {
		return err
	}
	return writeJSONAtomic(filepath.Join(b.root, migStateFile), all)
}

// initialMIG is a GPU's state as its profile describes it.
func initialMIG(g inventory.GPU, table []hardware.MIGProfile) *gpuMIG {
	st := &gpuMIG{Enabled: g.MIGEnabled}
	for _, m := range g.MIGDevices {
		in := hardware.MIGInstance{UUID: m.UUID, GI: m.GI, CI: m.CI}
		if gp := m.GIProfile; gp != nil {
			in.ProfileID, in.Start, in.Size = gp.ID, gp.PlacementStart, gp.PlacementSize
		}
		st.Instances = append(st.Instances, in)
	}
	return st
}

// migGPU finds a GPU of the profile and its MIG table.
func (b *Backend) migGPU(uuid string) (inventory.GPU, []hardware.MIGProfile, error) {
	g, _, ok := b.full.GPUByUUID(uuid)
	if !ok {
		return g, nil, fmt.Errorf("no simulated GPU %s", uuid)
	}
	if !g.MIGCapable {
		return g, nil, fmt.Errorf("simulated GPU %s (%s): %w", uuid, g.Name, hardware.ErrMIGUnsupported)
	}
	table := migTableFor(g.Name, g.MemoryBytes>>20)
	if table == nil {
		return g, nil, fmt.Errorf("simulated GPU %s (%s): the simulator has no MIG profile table for this product (it has A100-40GB, H100-80GB, H200-141GB): %w",
			uuid, g.Name, hardware.ErrMIGUnsupported)
	}
	return g, table, nil
}

// MIGProfiles returns the product's profile table.
func (b *Backend) MIGProfiles(_ context.Context, uuid string) ([]hardware.MIGProfile, error) {
	_, table, err := b.migGPU(uuid)
	if err != nil {
		return nil, err
	}
	out := make([]hardware.MIGProfile, len(table))
	for i, p := range table {
		out[i] = p
		out[i].Placements = slices.Clone(p.Placements)
	}
	return out, nil
}

// MIGMode reports the simulated GPU's MIG mode.
func (b *Backend) MIGMode(_ context.Context, uuid string) (bool, error) {
	g, table, err := b.migGPU(uuid)
	if err != nil {
		return false, err
	}
	all, err := b.readMIG()
	if err != nil {
		return false, err
	}
	if st := all.GPUs[uuid]; st != nil {
		return st.Enabled, nil
	}
	return initialMIG(g, table).Enabled, nil
}

// SetMIGMode switches MIG mode; a GPU with instances cannot leave MIG
// mode, and a GPU with an injected fault refuses (as a busy GPU would).
func (b *Backend) SetMIGMode(ctx context.Context, uuid string, enabled bool) error {
	if err := b.Probe(ctx, uuid); err != nil {
		return fmt.Errorf("set MIG mode: %w", err)
	}
	return b.updateMIG(uuid, func(_ inventory.GPU, _ []hardware.MIGProfile, st *gpuMIG) error {
		if !enabled && len(st.Instances) > 0 {
			return fmt.Errorf("simulated GPU %s still has %d MIG instances; destroy them before turning MIG mode off", uuid, len(st.Instances))
		}
		st.Enabled = enabled
		return nil
	})
}

// CreateMIGInstance cuts an instance where the table allows one.
func (b *Backend) CreateMIGInstance(_ context.Context, uuid string, profileID, start int) (hardware.MIGInstance, error) {
	var made hardware.MIGInstance
	err := b.updateMIG(uuid, func(g inventory.GPU, table []hardware.MIGProfile, st *gpuMIG) error {
		if !st.Enabled {
			return fmt.Errorf("simulated GPU %s: MIG mode is off", uuid)
		}
		i := slices.IndexFunc(table, func(p hardware.MIGProfile) bool { return p.ID == profileID })
		if i < 0 {
			return fmt.Errorf("simulated GPU %s (%s) has no GPU-instance profile %d", uuid, g.Name, profileID)
		}
		p := table[i]
		if !slices.Contains(p.Placements, start) {
			return fmt.Errorf("simulated GPU %s: profile %s cannot be placed at memory slice %d (placements %v)", uuid, p.Name, start, p.Placements)
		}
		if err := fits(table, st.Instances, p, start); err != nil {
			return fmt.Errorf("simulated GPU %s: %s at %d: %w", uuid, p.Name, start, err)
		}
		st.Made++
		made = hardware.MIGInstance{
			UUID:      stableUUID("MIG", "dynamic/"+uuid, st.Made),
			ProfileID: p.ID, Start: start, Size: p.MemorySlices, GI: giID(p.MemorySlices, start), CI: 0,
		}
		if err := b.createCapNodes(g, made); err != nil {
			return err
		}
		st.Instances = append(st.Instances, made)
		return nil
	})
	return made, err
}

// errInsufficient is NVML's answer to an instance that does not fit.
var errInsufficient = errors.New("insufficient resources")

// fits checks that p at start can join the instances: no shared memory
// slice, at most seven compute slices, no more OFAs than the GPU has.
func fits(table []hardware.MIGProfile, have []hardware.MIGInstance, p hardware.MIGProfile, start int) error {
	full := slices.MaxFunc(table, func(a, b hardware.MIGProfile) int { return a.ComputeSlices - b.ComputeSlices })
	compute, ofa := p.ComputeSlices, p.OFAs
	for _, in := range have {
		if start < in.Start+in.Size && in.Start < start+p.MemorySlices {
			return fmt.Errorf("%w: memory slices %d-%d overlap GPU instance %d (%d-%d)", errInsufficient,
				start, start+p.MemorySlices-1, in.GI, in.Start, in.Start+in.Size-1)
		}
		if j := slices.IndexFunc(table, func(q hardware.MIGProfile) bool { return q.ID == in.ProfileID }); j >= 0 {
			compute += table[j].ComputeSlices
			ofa += table[j].OFAs
		}
	}
	if compute > full.ComputeSlices {
		return fmt.Errorf("%w: %d compute slices of %d", errInsufficient, compute, full.ComputeSlices)
	}
	if ofa > full.OFAs {
		return fmt.Errorf("%w: %d OFA engines of %d (one media-extension instance at a time)", errInsufficient, ofa, full.OFAs)
	}
	return nil
}

// DestroyMIGInstance removes an instance; one already gone is no error.
func (b *Backend) DestroyMIGInstance(_ context.Context, uuid string, gi, ci int) error {
	return b.updateMIG(uuid, func(_ inventory.GPU, _ []hardware.MIGProfile, st *gpuMIG) error {
		st.Instances = slices.DeleteFunc(st.Instances, func(in hardware.MIGInstance) bool { return in.GI == gi && in.CI == ci })
		return nil
	})
}

// MIGInstances lists the GPU's instances.
func (b *Backend) MIGInstances(_ context.Context, uuid string) ([]hardware.MIGInstance, error) {
	g, table, err := b.migGPU(uuid)
	if err != nil {
		return nil, err
	}
	all, err := b.readMIG()
	if err != nil {
		return nil, err
	}
	st := all.GPUs[uuid]
	if st == nil {
		st = initialMIG(g, table)
	}
	return slices.Clone(st.Instances), nil
}

// createCapNodes makes the /dev/nvidia-caps nodes of a new instance, as
// the driver's capability files let nvidia-modprobe make them.
func (b *Backend) createCapNodes(g inventory.GPU, in hardware.MIGInstance) error {
	f, err := os.Open(migMinorsPath(b.root))
	if err != nil {
		return fmt.Errorf("simulated mig-minors: %w", err)
	}
	defer f.Close()
	minors, err := cdispec.ParseMIGMinors(f)
	if err != nil {
		return err
	}
	caps, err := minors.CapNodes(g.Minor, in.GI, in.CI)
	if err != nil {
		return err
	}
	devRoot := filepath.Join(b.root, "dev")
	for _, c := range caps {
		var minor int
		if _, err := fmt.Sscanf(filepath.Base(c), "nvidia-cap%d", &minor); err != nil {
			return fmt.Errorf("caps node %s: %w", c, err)
		}
		if err := mkchar(filepath.Join(devRoot, c), capsMajor, uint32(minor)); err != nil {
			return err
		}
	}
	return nil
}

// withMIG applies the MIG state file to a discovered node: GPUs cut on
// request show their MIG mode and instances.
func (b *Backend) withMIG(n *inventory.Node) (*inventory.Node, error) {
	all, err := b.readMIG()
	if err != nil || len(all.GPUs) == 0 {
		return n, err
	}
	for i := range n.GPUs {
		g := &n.GPUs[i]
		st := all.GPUs[g.UUID]
		if st == nil {
			continue
		}
		table := migTableFor(g.Name, g.MemoryBytes>>20)
		g.MIGEnabled = st.Enabled
		g.MIGDevices = nil
		for k, in := range st.Instances {
			m := inventory.MIGDevice{UUID: in.UUID, Index: k, GI: in.GI, CI: in.CI}
			if j := slices.IndexFunc(table, func(p hardware.MIGProfile) bool { return p.ID == in.ProfileID }); j >= 0 {
				p := table[j]
				m.Profile, m.MemoryBytes = p.Name, p.MemoryBytes
				m.GIProfile = &inventory.MIGGIProfile{ID: p.ID, PlacementStart: in.Start, PlacementSize: in.Size, MemoryBytes: p.MemoryBytes,
					Multiprocessors: p.Multiprocessors, CopyEngines: p.CopyEngines, Decoders: p.Decoders, Encoders: p.Encoders, JPEGs: p.JPEGs, OFAs: p.OFAs}
			}
			g.MIGDevices = append(g.MIGDevices, m)
		}
	}
	return n, nil
}
