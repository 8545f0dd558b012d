package resources

import (
	"fmt"
	"slices"
	"strings"

	"github.com/gpulet/gpulet/internal/inventory"
)

// Share replicates the devices of one resource (NVIDIA's
// sharing.timeSlicing/mps resources[] entry).
type Share struct {
	Name     string // the resource whose devices are shared
	Rename   string // name of the replicas' resource; "" keeps Name
	Replicas int
	Devices  Selector
}

// Selector picks which devices of a resource are replicated; the others
// stay whole under the resource's name (NVIDIA's device_map.go semantics).
// The zero Selector picks all.
type Selector struct {
	Count int      // the first Count devices, in index order
	List  []string // devices by index ("0", "0:1") or UUID
}

func (s Selector) String() string {
	switch {
	case s.Count > 0:
		return fmt.Sprintf("first %d", s.Count)
	case len(s.List) > 0:
		return "[" + strings.Join(s.List, ",") + "]"
	}
	return "all"
}

// share returns how resource rn is shared, if it is. wholeName is the
// whole-GPU resource name, the only one SharedName renames.
func (c Config) share(rn, wholeName string) (Share, bool) {
	if c.Replicas > 1 {
		sh := Share{Name: rn, Replicas: c.Replicas}
		switch {
		case c.SharedName != "" && rn == wholeName:
			sh.Rename = c.SharedName
		case c.RenameByDefault:
			sh.Rename = rn + ".shared"
		}
		return sh, true
	}
	for _, sh := range c.Shares {
		if sh.Name == rn {
			return sh, true
		}
	}
	return Share{}, false
}

// pick splits devs (in index order) into those to replicate and those that
// stay whole.
func (s Selector) pick(devs []Device) (picked, whole []Device) {
	switch {
	case s.Count > 0:
		n := min(s.Count, len(devs))
		return devs[:n], devs[n:]
	case len(s.List) > 0:
		for _, d := range devs {
			if slices.Contains(s.List, d.Index) || slices.Contains(s.List, d.UUID) {
				picked = append(picked, d)
			} else {
				whole = append(whole, d)
			}
		}
		return picked, whole
	}
	return devs, nil
}

// CheckShares reports the config's shares that do not fit the node as
// NVIDIA's plugin reports them at start-up: a count over the resource's
// devices, a device the list names that the resource does not have, and
// MPS on MIG devices. A share naming a resource the node lacks is no error
// (NVIDIA skips it); Unmatched lists those for the log.
func CheckShares(snap inventory.Snapshot, cfg Config) (unmatched []string, err error) {
	byName := map[string][]Device{}
	plain := cfg
	plain.Replicas, plain.Shares, plain.MPS = 0, nil, false
	for _, r := range Build(snap, plain) {
		byName[r.Name] = r.Devices
	}
	for _, sh := range cfg.Shares {
		devs, ok := byName[sh.Name]
		if !ok {
			unmatched = append(unmatched, sh.Name)
			continue
		}
		if sh.Devices.Count > len(devs) {
			return unmatched, fmt.Errorf("sharing %s: devices %d asks for more devices than the %d the node has", sh.Name, sh.Devices.Count, len(devs))
		}
		for _, ref := range sh.Devices.List {
			if !slices.ContainsFunc(devs, func(d Device) bool { return d.Index == ref || d.UUID == ref }) {
				return unmatched, fmt.Errorf("sharing %s: devices lists %q, which is not a %s device on this node (see `gpulet list`)", sh.Name, ref, sh.Name)
			}
		}
	}
	if cfg.MPS {
		for _, r := range Build(snap, cfg) {
			for _, d := range r.Devices {
				if r.MPS && d.Replicas > 0 && strings.Contains(d.Index, ":") {
					return unmatched, fmt.Errorf("sharing with MPS is not supported for MIG devices (%s %s), as in NVIDIA's plugin; use time-slicing or disable MIG", r.Name, d.UUID)
				}
			}
		}
	}
	return unmatched, nil
}
