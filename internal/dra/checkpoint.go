package dra

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	"github.com/gpulet/gpulet/internal/atomicfile"
)

// CheckpointFile is the name of the prepared-claims file in the plugin's
// data folder (/var/lib/kubelet/plugins/gpu.nvidia.com), which outlives
// gpulet's pod.
const CheckpointFile = "gpulet-checkpoint.json"

// DefaultBootIDPath is where Linux tells the current boot apart from the
// ones before it.
const DefaultBootIDPath = "/proc/sys/kernel/random/boot_id"

// checkpointVersion changes when the file's meaning does; a file of another
// version is refused rather than misread. Version 1 (no states, no boot ID)
// is read as every claim completed, written on this boot.
// Version 2 (no sharing records, no dynamic MIG records) is read as is: its
// claims applied none.
const checkpointVersion = 3

// checkpointVersionBase is the version written while no record needs what
// version 3 added, so that a gpulet that reads only up to version 2 (released
// before claim configs were applied) can take the node back on a rollback.
const checkpointVersionBase = 2

// claimState is where a claim is in its two-phase Prepare or Unprepare. A
// record is saved before the CDI spec is written or removed and again after,
// so a crash between the two leaves a record that says what to undo.
type claimState string

const (
	// statePrepareStarted: the spec may or may not exist; nothing was
	// handed to the kubelet. Rolled back at start and on a retried Prepare.
	statePrepareStarted claimState = "PrepareStarted"
	// statePrepareCompleted: the spec exists and the kubelet got its names.
	statePrepareCompleted claimState = "PrepareCompleted"
	// stateUnprepareStarted: the spec may still exist; finished at start.
	stateUnprepareStarted claimState = "UnprepareStarted"
)

// checkpoint is what survives a restart: every claim prepared and not yet
// unprepared, with what Prepare answered, so a repeated Prepare returns the
// same answer without writing again and Unprepare knows what to remove
// after the claim itself is gone from the API. The driver only ever
// replaces its checkpoint with one already saved (Driver.commit).
type checkpoint struct {
	Version int `json:"version"`
	// BootID is the node's boot the records belong to; records of an
	// earlier boot are void (the GPUs were reset, /var/run is new).
	BootID string                   `json:"bootID,omitempty"`
	Claims map[string]preparedClaim `json:"claims"` // by claim UID
}

type preparedClaim struct {
	State     claimState `json:"state"`
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	SpecFile  string     `json:"specFile,omitempty"`
	// ForeignSpec is the spec NVIDIA's DRA driver wrote for a claim gpulet
	// adopted from it; removed with the claim.
	ForeignSpec string           `json:"foreignSpec,omitempty"`
	Devices     []preparedDevice `json:"devices"`
	// Sharing is what the claim's configs set up (sharing.go), saved
	// before it is applied so that it can always be undone.
	Sharing []appliedSharing `json:"sharing,omitempty"`
}

type preparedDevice struct {
	Requests     []string `json:"requests"`
	Pool         string   `json:"pool"`
	Device       string   `json:"device"`
	UUID         string   `json:"uuid"`
	CDIDeviceIDs []string `json:"cdiDeviceIDs"`
	AdminAccess  bool     `json:"adminAccess,omitempty"`
	// ShareID is the scheduler's ID of this claim's share of a device
	// published for several claims (consumable capacity).
	ShareID *types.UID `json:"shareID,omitempty"`
	// MPSDaemon is the claim's MPS control daemon serving this device.
	MPSDaemon string `json:"mpsDaemon,omitempty"`
	// MIG is the dynamic MIG instance the device stands for, recorded
	// before it is created (dynmig_prepare.go); UUID is its UUID once made.
	MIG *migRecord `json:"mig,omitempty"`
}

// needsV3 says whether the record holds what version 2 has no field for:
// an applied sharing config (its MPS daemon) or a dynamic MIG instance. A
// version-2 reader would drop those silently and leave them behind.
func (pc preparedClaim) needsV3() bool {
	if len(pc.Sharing) > 0 {
		return true
	}
	for _, d := range pc.Devices {
		if d.MPSDaemon != "" || d.MIG != nil {
			return true
		}
	}
	return false
}

// fileVersion is the oldest version that holds every record: 2 unless a
// claim needs version 3.
func (cp *checkpoint) fileVersion() int {
	for _, pc := range cp.Claims {
		if pc.needsV3() {
			return checkpointVersion
		}
	}
	return checkpointVersionBase
}

func newCheckpoint(bootID string) *checkpoint {
	return &checkpoint{Version: checkpointVersion, BootID: bootID, Claims: map[string]preparedClaim{}}
}

// clone is a copy whose records can be changed without touching cp's.
// Records are values and never edited in place, so a shallow map copy is
// enough.
func (cp *checkpoint) clone() *checkpoint {
	out := *cp
	out.Claims = maps.Clone(cp.Claims)
	return &out
}

// loadCheckpoint reads the file at path; a missing file is an empty
// checkpoint (first start).
func loadCheckpoint(path string) (*checkpoint, error) {
	cp := newCheckpoint("")
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
	switch cp.Version {
	case checkpointVersion, checkpointVersionBase:
		cp.Version = checkpointVersion
	case 1:
		// Written before records had states: each was completed.
		for uid, pc := range cp.Claims {
			pc.State = statePrepareCompleted
			cp.Claims[uid] = pc
		}
		cp.Version = checkpointVersion
	default:
		return nil, fmt.Errorf("DRA checkpoint %s has version %d, this gpulet reads 1 to %d; use a gpulet that wrote it or drain the node's DRA pods and move the file away", path, cp.Version, checkpointVersion)
	}
	if cp.Claims == nil {
		cp.Claims = map[string]preparedClaim{}
	}
	for uid, pc := range cp.Claims {
		switch pc.State {
		case statePrepareStarted, statePrepareCompleted, stateUnprepareStarted:
		default:
			return nil, fmt.Errorf("DRA checkpoint %s: claim %s has unknown state %q; use a gpulet that wrote it or drain the node's DRA pods and move the file away", path, uid, pc.State)
		}
	}
	return cp, nil
}

// save writes the checkpoint atomically: a temporary file synced, renamed
// over the old one, and the folder synced, so a crash leaves the old file
// or the new one. It is written as version 2 while no record needs
// version 3 (fileVersion).
func (cp *checkpoint) save(path string) error {
	out := *cp
	out.Version = cp.fileVersion()
	data, err := json.MarshalIndent(&out, "", "  ")
	if err != nil {
		return fmt.Errorf("encode DRA checkpoint: %w", err)
	}
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("save DRA checkpoint (is the plugin folder writable?): %w", err)
	}
	return nil
}

// readBootID reads the kernel's boot ID from path.
func readBootID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read the node's boot ID (DRA records of an earlier boot must be dropped): %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("boot ID file %s is empty", path)
	}
	return id, nil
}

// uids lists the checkpoint's claim UIDs in a stable order.
func (cp *checkpoint) uids() []string {
	return slices.Sorted(maps.Keys(cp.Claims))
}
