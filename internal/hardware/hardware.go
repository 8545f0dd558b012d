// Package hardware is the one seam between gpulet and a machine's GPUs.
// A Backend discovers the node and reports what happens to its devices;
// everything above it (inventory, health policy, resources, servers) is shared
// by the NVML, simulated and any future backend. What only some backends can
// do is an optional interface here (FaultInjector, MPSControlled,
// ComputePolicy, PCIeRootResolver, MIGMinors), found by asserting a Backend to it, never
// to a concrete backend type.
package hardware

import (
	"context"

	"github.com/gpulet/gpulet/internal/inventory"
)

// Backend is a source of GPUs.
type Backend interface {
	// Name is the backend's name as users select it (sim, nvml).
	Name() string
	// Discover reads the node: GPUs, MIG devices and the links between GPUs.
	// It is called at start and again after an EventChanged, never per RPC.
	Discover(ctx context.Context) (*inventory.Node, error)
	// Watch sends device events until ctx ends or the source fails. It must
	// not close events.
	Watch(ctx context.Context, events chan<- Event) error
	// Probe checks whether a device is usable now; nil means healthy. The
	// health monitor calls it to decide whether an unhealthy device recovered.
	Probe(ctx context.Context, uuid string) error
	// Close releases the backend.
	Close() error
}

// FaultInjector is a Backend into whose devices faults can be injected from
// outside the process (the simulator, through `gpulet sim fault`).
type FaultInjector interface {
	// Publish makes the served devices nameable by the fault tools; the
	// daemon calls it once at start. Read-only commands do not.
	Publish() error
	// Root is the folder the fault tools act on (--sim-root).
	Root() string
}

// MPSControl starts and talks to the MPS control daemon of one GPU
// (nvidia-cuda-mps-control), the environment env naming which.
type MPSControl interface {
	// Start starts a control daemon in the background, returning once it
	// is started.
	Start(ctx context.Context, env []string) error
	// Send writes one command to the daemon and returns its answer.
	Send(ctx context.Context, env []string, command string) (string, error)
}

// MPSControlled is a Backend that brings its own MPS control daemons (the
// simulator's stand-in) instead of NVIDIA's binary.
type MPSControlled interface {
	MPSControl() MPSControl
}

// ComputeMode is a GPU's compute mode as nvidia-smi -c names it.
type ComputeMode string

const (
	ComputeModeDefault          ComputeMode = "DEFAULT"
	ComputeModeExclusiveProcess ComputeMode = "EXCLUSIVE_PROCESS"
)

// Time-slice intervals as nvidia-smi compute-policy --set-timeslice takes
// them (NVIDIA's DRA driver's TimeSlicing intervals Default, Short, Medium
// and Long).
const (
	TimeSliceDefault = 0
	TimeSliceShort   = 1
	TimeSliceMedium  = 2
	TimeSliceLong    = 3
)

// ComputePolicy is a Backend that can change a whole GPU's compute mode
// and time-slice interval, what NVIDIA's DRA driver sets for TimeSlicing
// and MPS claims. The simulator records what it was asked; NVML runs
// nvidia-smi as NVIDIA's driver does.
type ComputePolicy interface {
	SetComputeMode(ctx context.Context, uuid string, mode ComputeMode) error
	SetTimeSlice(ctx context.Context, uuid string, interval int) error
}

// PCIeRootResolver is a Backend whose PCI bus IDs are the host's, so their
// root complex (pci0000:00) can be looked up (NVML, in sysfs); ok is false
// when it cannot.
type PCIeRootResolver interface {
	PCIeRoot(busID string) (root string, ok bool)
}

// MIGMinors is a Backend with its own mig-minors file, mapping its MIG
// instances to their nvidia-caps device nodes (the simulator). Without it
// the driver's /proc file applies.
type MIGMinors interface {
	MIGMinorsPath() string
}

// DriverRooted is a Backend with a driver root of its own (the simulator's
// stand-in driver files); without it --nvidia-driver-root applies.
type DriverRooted interface {
	DriverRoot() string
}

// EventKind says what happened to a device.
type EventKind string

const (
	EventXID             EventKind = "xid"               // a driver Xid error
	EventECCDoubleBit    EventKind = "ecc-double-bit"    // uncorrectable memory error
	EventRowRemapFailure EventKind = "row-remap-failure" // memory rows can no longer be remapped
	EventUnhealthy       EventKind = "unhealthy"         // backend-specific failure, Reason says which
	EventHealthy         EventKind = "healthy"           // the device proved healthy again
	EventChanged         EventKind = "changed"           // devices appeared or disappeared: rediscover
)

// Event is one thing a backend observed. UUID is empty for node-wide events
// (EventChanged, or an XID the driver could not attribute).
type Event struct {
	Kind   EventKind
	UUID   string
	XID    uint64
	Reason string
}

// LinkDeferrer is a Backend whose link scan is the slow part of discovery
// (NVML: up to 18 NVLinks × 3 calls per GPU) and can run after it. The
// daemon discovers the devices, serves them at once, and fills the links in
// right after, so the kubelet sees the devices without waiting for the scan;
// topology-aware placement waits for the links (resources.Resource.LinksPending).
// Discover still returns the whole node for everything else.
type LinkDeferrer interface {
	// DiscoverDevices is Discover without the link matrix: the node's
	// Links are nil and LinksPending is true.
	DiscoverDevices(ctx context.Context) (*inventory.Node, error)
	// Links scans the link matrix of a node DiscoverDevices returned,
	// indexed as its GPUs.
	Links(ctx context.Context, node *inventory.Node) ([][]inventory.Link, error)
}
