package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/gpulet/gpulet/internal/atomicfile"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/gpulet/gpulet/internal/inventory"
)

// The fault file is how the world outside a running simulator breaks its
// GPUs: `gpulet sim fault|clear|remove|restore` edit it, the running backend
// watches it. It lives in the sim root, next to node.json (the node the
// daemon simulates, so the CLI can resolve a GPU index to its UUID).
const (
	faultsFile = "faults.json"
	nodeFile   = "node.json"
	lockFile   = ".faults.lock"
)

// Fault is a condition injected into one GPU.
type Fault struct {
	// XID is a driver Xid the GPU reports; the health policy decides what it means.
	XID uint64 `json:"xid,omitempty"`
	// Reason marks the GPU unhealthy directly when no XID is given.
	Reason string `json:"reason,omitempty"`
}

// Faults is the content of the fault file.
type Faults struct {
	// GPUs maps a GPU UUID to the fault it has.
	GPUs map[string]Fault `json:"gpus,omitempty"`
	// Removed lists the UUIDs of GPUs that fell off the node.
	Removed []string `json:"removed,omitempty"`
	// DriverDown simulates an unloaded driver (`gpulet sim driver down`):
	// discovery, probes and telemetry fail until it is back.
	DriverDown bool `json:"driverDown,omitempty"`
}

func (f Faults) removed(uuid string) bool { return slices.Contains(f.Removed, uuid) }

// ReadFaults reads the fault file under root; a missing file means no faults.
func ReadFaults(root string) (Faults, error) {
	var f Faults
	data, err := os.ReadFile(filepath.Join(root, faultsFile))
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("read simulator faults: %w", err)
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return f, fmt.Errorf("simulator fault file %s is not valid JSON (fix or delete it): %w", filepath.Join(root, faultsFile), err)
	}
	return f, nil
}

// UpdateFaults applies change to the fault file under an exclusive lock and
// replaces the file atomically, so concurrent CLI calls and the watching
// daemon never see half a file.
func UpdateFaults(root string, change func(*Faults) error) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("create simulator root: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(root, lockFile), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("lock simulator faults: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock simulator faults: %w", err)
	}
	f, err := ReadFaults(root)
	if err != nil {
		return err
	}
	if f.GPUs == nil {
		f.GPUs = map[string]Fault{}
	}
	if err := change(&f); err != nil {
		return err
	}
	sort.Strings(f.Removed)
	return writeJSONAtomic(filepath.Join(root, faultsFile), f)
}

func writeJSONAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(data, '\n'), 0o600)
}

// ReadNode reads the node a simulator under root last published.
func ReadNode(root string) (*inventory.Node, error) {
	data, err := os.ReadFile(filepath.Join(root, nodeFile))
	if err != nil {
		return nil, fmt.Errorf("no simulated node under %s (is `gpulet run --backend=sim --sim-root=%s` running, or give --sim-profile): %w", root, root, err)
	}
	var n inventory.Node
	if err := json.Unmarshal(data, &n); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(root, nodeFile), err)
	}
	return &n, nil
}

// ResolveGPU turns a GPU index or UUID into the UUID of a GPU on node.
func ResolveGPU(node *inventory.Node, ref string) (string, error) {
	if _, _, ok := node.GPUByUUID(ref); ok {
		return ref, nil
	}
	if i, err := strconv.Atoi(ref); err == nil {
		for _, g := range node.GPUs {
			if g.Index == i {
				return g.UUID, nil
			}
		}
		return "", fmt.Errorf("no GPU with index %d: the simulated node has %d GPUs (0-%d)", i, len(node.GPUs), len(node.GPUs)-1)
	}
	return "", fmt.Errorf("no GPU %q: give an index or a UUID of the simulated node (see `gpulet list`)", ref)
}
