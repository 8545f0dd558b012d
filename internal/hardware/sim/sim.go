// Package sim is the simulated hardware backend: a GPU node described by a
// profile, with device nodes under a private folder and faults injected from
// outside the process through a file. It runs every layer of gpulet on a
// machine without a GPU.
package sim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

// Real NVIDIA character device numbers, so a container runtime accepts the
// simulated nodes as it would real ones.
const (
	nvidiaMajor = 195
	ctlMinor    = 255
	uvmMajor    = 238
)

// pollEvery backs up fsnotify (a replaced sim root, a filesystem without
// inotify): the fault file is re-read at least this often.
const pollEvery = time.Second

// DefaultRoot is where the simulator keeps its device nodes and fault file
// when none is given: gpulet's own folder, never the host's /dev.
func DefaultRoot() string {
	if os.Geteuid() == 0 {
		return "/var/lib/gpulet/sim"
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("gpulet-%d", os.Geteuid()), "sim")
}

// Backend simulates the node of a profile.
type Backend struct {
	root string
	full *inventory.Node // every GPU of the profile, before removals
	tel  telemetryState  // telemetry.go
}

var _ hardware.Backend = (*Backend)(nil)

// New prepares a simulated node under root, with its device nodes in
// root/dev. An existing fault file is kept, so a restarted daemon sees the
// GPUs as broken as they were.
func New(profile *Profile, root string) (*Backend, error) {
	if root == "" {
		root = DefaultRoot()
	}
	node, err := profile.Node()
	if err != nil {
		return nil, err
	}
	node.DevRoot = filepath.Join(root, "dev")
	if err := CreateDeviceNodes(node); err != nil {
		return nil, err
	}
	if err := createMIGCaps(root, node); err != nil {
		return nil, err
	}
	if node.DriverVersion != "" {
		if _, err := cdispec.WriteStandInDriver(filepath.Join(root, "driver"), node.DriverVersion, nil); err != nil {
			return nil, fmt.Errorf("simulated driver root: %w", err)
		}
	}
	return &Backend{root: root, full: node}, nil
}

// DriverRoot is the simulated node's driver root: stand-in files of the
// profile's driver version laid out as an NVIDIA driver installs them
// (cdispec.WriteStandInDriver), which CDI specs mount as a real node's.
func (b *Backend) DriverRoot() string { return filepath.Join(b.root, "driver") }

// The daemon finds what only the simulator does through these interfaces.
var (
	_ hardware.FaultInjector = (*Backend)(nil)
	_ hardware.MPSControlled = (*Backend)(nil)
	_ hardware.MIGMinors     = (*Backend)(nil)
	_ hardware.DriverRooted  = (*Backend)(nil)
)

// Publish writes root/node.json, the node this simulator serves, so that
// `gpulet sim` commands can name GPUs by index. Only the daemon (or an
// explicit `gpulet sim devices`) publishes; read-only commands do not.
func (b *Backend) Publish() error {
	if err := writeJSONAtomic(filepath.Join(b.root, nodeFile), b.full); err != nil {
		return fmt.Errorf("publish simulated node: %w", err)
	}
	return nil
}

// Root is the folder the simulator lives in.
func (b *Backend) Root() string { return b.root }

func (b *Backend) Name() string { return "sim" }

func (b *Backend) Close() error { return nil }

// Discover returns the profile's node without the GPUs marked removed.
func (b *Backend) Discover(context.Context) (*inventory.Node, error) {
	f, err := ReadFaults(b.root)
	if err != nil {
		return nil, err
	}
	if f.DriverDown {
		return nil, errDriverDown
	}
	return b.withMIG(withoutRemoved(b.full, f))
}

func withoutRemoved(full *inventory.Node, f Faults) *inventory.Node {
	n := *full
	n.GPUs = nil
	n.Links = nil
	var keep []int
	for i, g := range full.GPUs {
		if !f.removed(g.UUID) {
			keep = append(keep, i)
			n.GPUs = append(n.GPUs, g)
		}
	}
	if len(full.Links) > 0 {
		n.Links = make([][]inventory.Link, len(keep))
		for a, i := range keep {
			n.Links[a] = make([]inventory.Link, len(keep))
			for c, j := range keep {
				n.Links[a][c] = full.Links[i][j]
			}
		}
	}
	return &n
}

// Probe fails while a fault is injected into the GPU or it is removed.
func (b *Backend) Probe(_ context.Context, uuid string) error {
	f, err := ReadFaults(b.root)
	if err != nil {
		return err
	}
	if f.DriverDown {
		return errDriverDown
	}
	if f.removed(uuid) {
		return fmt.Errorf("simulated GPU %s is removed", uuid)
	}
	if fault, ok := f.GPUs[uuid]; ok {
		return fmt.Errorf("simulated GPU %s has an injected fault (xid %d, %q)", uuid, fault.XID, fault.Reason)
	}
	return nil
}

// Watch turns changes of the fault file into events: a new fault is an XID
// or unhealthy event, a cleared one a healthy event, a removal or restore a
// changed event. Faults already in the file are reported first.
func (b *Backend) Watch(ctx context.Context, events chan<- hardware.Event) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch simulator faults: %w", err)
	}
	defer w.Close()
	if err := w.Add(b.root); err != nil {
		return fmt.Errorf("watch simulator root %s: %w", b.root, err)
	}
	var last Faults
	check := func() error {
		f, err := ReadFaults(b.root)
		if err != nil {
			return err
		}
		if f.DriverDown {
			return errDriverDown // the daemon marks every device unhealthy and waits for it
		}
		for _, ev := range diff(last, f) {
			select {
			case events <- ev:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		last = f
		return nil
	}
	if err := check(); err != nil {
		return err
	}
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("simulator fault watch closed")
			}
			if filepath.Base(ev.Name) != faultsFile {
				continue
			}
		case err := <-w.Errors:
			return fmt.Errorf("watch simulator faults: %w", err)
		case <-tick.C:
		}
		// A malformed file is the user's to fix; keep the last good state.
		if err := check(); errors.Is(err, hardware.ErrDriverLost) {
			return err
		}
	}
}

// diff lists the events that turn state old into state new.
func diff(old, new Faults) []hardware.Event {
	var out []hardware.Event
	if !slices.Equal(old.Removed, new.Removed) { // UpdateFaults keeps the list sorted
		out = append(out, hardware.Event{Kind: hardware.EventChanged, Reason: "simulated GPUs removed or restored"})
	}
	for uuid, f := range new.GPUs {
		if of, ok := old.GPUs[uuid]; ok && of == f {
			continue
		}
		if f.XID != 0 {
			out = append(out, hardware.Event{Kind: hardware.EventXID, UUID: uuid, XID: f.XID, Reason: f.Reason})
		} else {
			reason := f.Reason
			if reason == "" {
				reason = "injected fault"
			}
			out = append(out, hardware.Event{Kind: hardware.EventUnhealthy, UUID: uuid, Reason: reason})
		}
	}
	for uuid := range old.GPUs {
		if _, ok := new.GPUs[uuid]; !ok {
			out = append(out, hardware.Event{Kind: hardware.EventHealthy, UUID: uuid, Reason: "injected fault cleared"})
		}
	}
	return out
}

// CreateDeviceNodes makes the device nodes a real node would have under
// node.DevRoot: character devices where the process may mknod, so a real
// container runtime accepts them, plain files otherwise. Existing ones stay.
func CreateDeviceNodes(node *inventory.Node) error {
	if err := os.MkdirAll(node.DevRoot, 0o755); err != nil {
		return fmt.Errorf("create simulated /dev at %s: %w", node.DevRoot, err)
	}
	type devNode struct {
		name         string
		major, minor uint32
	}
	nodes := []devNode{{"nvidiactl", nvidiaMajor, ctlMinor}, {"nvidia-uvm", uvmMajor, 0}, {"nvidia-uvm-tools", uvmMajor, 1}}
	for _, g := range node.GPUs {
		nodes = append(nodes, devNode{fmt.Sprintf("nvidia%d", g.Minor), nvidiaMajor, uint32(g.Minor)})
	}
	for _, d := range nodes {
		p := filepath.Join(node.DevRoot, d.name)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor)))
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			err = os.WriteFile(p, nil, 0o666)
		}
		if err == nil {
			err = os.Chmod(p, 0o666) // as the driver makes them, whatever the umask
		}
		if err != nil {
			return fmt.Errorf("create simulated device %s: %w", p, err)
		}
	}
	return nil
}
