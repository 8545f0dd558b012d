package hardware

import (
	"cmp"
	"context"
	"errors"
	"slices"
)

// DynamicMIG is a Backend that cuts MIG instances on request: it lists the
// GPU-instance profiles of a GPU with every placement the GPU allows, turns
// MIG mode on and off, and creates and destroys one instance (a GPU
// instance at a given placement with one compute instance spanning it).
// The DRA driver publishes the placements as partitionable devices and
// cuts the allocated one at Prepare (internal/dra, docs/dra-mig.md).
//
// GPUs are named by UUID. Every call is bounded: the NVML backend runs each
// NVML call under its deadline (CallTimeout), so a wedged driver gives an
// error rather than a hang.
type DynamicMIG interface {
	// MIGProfiles lists the GPU's GPU-instance profiles, each with its
	// possible placements (NVML's GetGpuInstancePossiblePlacements),
	// smallest first (SortMIGProfiles). A GPU without MIG gives
	// ErrMIGUnsupported.
	MIGProfiles(ctx context.Context, uuid string) ([]MIGProfile, error)
	// MIGMode reports whether MIG mode is on now (the current mode, not
	// the pending one).
	MIGMode(ctx context.Context, uuid string) (bool, error)
	// SetMIGMode turns MIG mode on or off. The GPU must be idle: no
	// process and no MIG instance; otherwise it fails saying why.
	SetMIGMode(ctx context.Context, uuid string, enabled bool) error
	// CreateMIGInstance creates a GPU instance of the profile with ID
	// profileID whose first memory slice is start, and one compute
	// instance taking all of it. A failure leaves nothing behind.
	CreateMIGInstance(ctx context.Context, uuid string, profileID, start int) (MIGInstance, error)
	// DestroyMIGInstance destroys compute instance ci of GPU instance gi,
	// then the GPU instance (ci -1: a GPU instance without compute
	// instance). An instance already gone is no error.
	DestroyMIGInstance(ctx context.Context, uuid string, gi, ci int) error
	// MIGInstances lists the instances on the GPU now (one per compute
	// instance), whoever made them; a GPU instance without a compute
	// instance is listed with CI -1.
	MIGInstances(ctx context.Context, uuid string) ([]MIGInstance, error)
}

// ErrMIGUnsupported is wrapped by the errors of GPUs that cannot do MIG.
var ErrMIGUnsupported = errors.New("the GPU does not support MIG")

// MIGProfile is one GPU-instance profile of a GPU and where it may go.
type MIGProfile struct {
	// Name is the profile as nvidia-smi prints it: 1g.10gb, 1g.10gb+me.
	Name string `json:"name"`
	// ID is the GPU-instance profile ID (NVML's info.Id: 19 for 1g.10gb).
	ID int `json:"id"`
	// ComputeSlices of the GPU's seven (the "1" of 1g); MemorySlices is the
	// placement size, in the GPU's eight memory slices.
	ComputeSlices   int    `json:"computeSlices"`
	MemorySlices    int    `json:"memorySlices"`
	MemoryBytes     uint64 `json:"memoryBytes"`
	Multiprocessors int    `json:"multiprocessors"`
	CopyEngines     int    `json:"copyEngines"`
	Decoders        int    `json:"decoders"`
	Encoders        int    `json:"encoders"`
	JPEGs           int    `json:"jpegs"`
	OFAs            int    `json:"ofas"`
	// Placements are the possible first memory slices, ascending.
	Placements []int `json:"placements"`
}

// MIGInstance is one MIG instance: a GPU instance and a compute instance.
type MIGInstance struct {
	// UUID is the MIG device's UUID (MIG-...); empty where the backend
	// could not read it.
	UUID      string `json:"uuid,omitempty"`
	ProfileID int    `json:"profileId"`
	Start     int    `json:"start"`
	Size      int    `json:"size"`
	GI        int    `json:"gi"`
	CI        int    `json:"ci"`
}

// SortMIGProfiles orders profiles smallest first: by compute slices, then
// memory, then media engines (1g.10gb, 1g.10gb+me, 1g.20gb, 2g...).
func SortMIGProfiles(ps []MIGProfile) {
	slices.SortStableFunc(ps, func(a, b MIGProfile) int {
		return cmp.Or(cmp.Compare(a.ComputeSlices, b.ComputeSlices), cmp.Compare(a.MemoryBytes, b.MemoryBytes),
			cmp.Compare(a.OFAs, b.OFAs), cmp.Compare(a.ID, b.ID))
	})
}
