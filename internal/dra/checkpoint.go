package dra

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/gpulet/gpulet/internal/atomicfile"
	"os"
)

// CheckpointFile is the name of the prepared-claims file in the plugin's
// data folder (/var/lib/kubelet/plugins/gpu.nvidia.com), which outlives
// gpulet's pod.
const CheckpointFile = "gpulet-checkpoint.json"

// checkpointVersion changes when the file's meaning does; a file of another
// version is refused rather than misread.
const checkpointVersion = 1

// checkpoint is what survives a restart: every claim prepared and not yet
// unprepared, with what Prepare answered, so a repeated Prepare returns the
// same answer without writing again and Unprepare knows what to remove
// after the claim itself is gone from the API.
type checkpoint struct {
	Version int                      `json:"version"`
	Claims  map[string]preparedClaim `json:"claims"` // by claim UID
}

type preparedClaim struct {
	Namespace string           `json:"namespace"`
	Name      string           `json:"name"`
	SpecFile  string           `json:"specFile"`
	Devices   []preparedDevice `json:"devices"`
}

type preparedDevice struct {
	Requests     []string `json:"requests"`
	Pool         string   `json:"pool"`
	Device       string   `json:"device"`
	UUID         string   `json:"uuid"`
	CDIDeviceIDs []string `json:"cdiDeviceIDs"`
	AdminAccess  bool     `json:"adminAccess,omitempty"`
}

// loadCheckpoint reads the file at path; a missing file is an empty
// checkpoint (first start).
func loadCheckpoint(path string) (*checkpoint, error) {
	cp := &checkpoint{Version: checkpointVersion, Claims: map[string]preparedClaim{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cp, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read DRA checkpoint: %w", err)
	}
	if err := json.Unmarshal(data, cp); err != nil {
		return nil, fmt.Errorf("DRA checkpoint %s is corrupt (%v); prepared claims are unknown: drain the node's DRA pods, move the file away and restart gpulet", path, err)
	}
	if cp.Version != checkpointVersion {
		return nil, fmt.Errorf("DRA checkpoint %s has version %d, this gpulet reads %d; use a gpulet that wrote it or drain the node's DRA pods and move the file away", path, cp.Version, checkpointVersion)
	}
	if cp.Claims == nil {
		cp.Claims = map[string]preparedClaim{}
	}
	return cp, nil
}

// save writes the checkpoint atomically: a temporary file synced, renamed
// over the old one, and the folder synced, so a crash leaves the old file
// or the new one.
func (cp *checkpoint) save(path string) error {
	data, err := json.MarshalIndent(cp, "", "  ")
	if err != nil {
		return fmt.Errorf("encode DRA checkpoint: %w", err)
	}
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("write DRA checkpoint: %w", err)
	}
	return nil
}
