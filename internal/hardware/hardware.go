// Package hardware is the one seam between gpulet and a machine's GPUs.
// A Backend discovers the node and reports what happens to its devices;
// everything above it (inventory, health policy, resources, servers) is shared
// by the NVML, simulated and any future backend. What only some backends can
// do is an optional interface here (FaultInjector), found by asserting a
// Backend to it, never to a concrete backend type.
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
