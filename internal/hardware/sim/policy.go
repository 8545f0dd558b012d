package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/gpulet/gpulet/internal/hardware"
)

// GPUPolicy is what the simulator was last told of a GPU's compute policy
// (hardware.ComputePolicy); a GPU never told anything is absent.
type GPUPolicy struct {
	ComputeMode hardware.ComputeMode `json:"computeMode,omitempty"`
	TimeSlice   *int                 `json:"timeSlice,omitempty"`
}

const policyFile = "compute-policy.json"

// policyMu serialises the read-modify-write of the policy file among the
// backends of one process (the daemon has one; tests may have several).
var policyMu sync.Mutex

// ComputePolicyLogPath is the log of every compute-policy call, one line
// each ("<uuid> -c <mode>", "<uuid> --set-timeslice <n>"), as nvidia-smi
// would have been run.
func ComputePolicyLogPath(root string) string { return filepath.Join(root, "compute-policy.log") }

// ReadComputePolicy reads the compute policy of the simulated GPUs under
// root, by UUID: what gpulet set (e2e and tests assert on it).
func ReadComputePolicy(root string) (map[string]GPUPolicy, error) {
	data, err := os.ReadFile(filepath.Join(root, policyFile))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]GPUPolicy{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]GPUPolicy{}
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("simulated compute policy %s: %w", filepath.Join(root, policyFile), err)
	}
	return out, nil
}

var _ hardware.ComputePolicy = (*Backend)(nil)

// SetComputeMode records the mode of a GPU of this node; a UUID that is not
// a present whole GPU fails as nvidia-smi does.
func (b *Backend) SetComputeMode(_ context.Context, uuid string, mode hardware.ComputeMode) error {
	switch mode {
	case hardware.ComputeModeDefault, hardware.ComputeModeExclusiveProcess:
	default:
		return fmt.Errorf("simulated nvidia-smi: compute mode %q is not supported", mode)
	}
	return b.setPolicy(uuid, "-c "+string(mode), func(p *GPUPolicy) { p.ComputeMode = mode })
}

// SetTimeSlice records the time-slice interval (0-3) of a GPU.
func (b *Backend) SetTimeSlice(_ context.Context, uuid string, interval int) error {
	if interval < hardware.TimeSliceDefault || interval > hardware.TimeSliceLong {
		return fmt.Errorf("simulated nvidia-smi: time-slice %d is not one of 0-3", interval)
	}
	return b.setPolicy(uuid, fmt.Sprintf("--set-timeslice %d", interval), func(p *GPUPolicy) { p.TimeSlice = &interval })
}

func (b *Backend) setPolicy(uuid, call string, set func(*GPUPolicy)) error {
	node, err := b.Discover(context.Background())
	if err != nil {
		return err
	}
	found := false
	for _, g := range node.GPUs {
		found = found || g.UUID == uuid
	}
	if !found {
		return fmt.Errorf("simulated nvidia-smi: no GPU %s on this node (MIG instances and removed GPUs have no compute policy of their own)", uuid)
	}
	policyMu.Lock()
	defer policyMu.Unlock()
	all, err := ReadComputePolicy(b.root)
	if err != nil {
		return err
	}
	p := all[uuid]
	set(&p)
	all[uuid] = p
	if err := writeJSONAtomic(filepath.Join(b.root, policyFile), all); err != nil {
		return err
	}
	f, err := os.OpenFile(ComputePolicyLogPath(b.root), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s %s\n", uuid, call)
	return errors.Join(err, f.Close())
}
