package dra

// Migration from NVIDIA's DRA driver: its kubelet plugin keeps its prepared
// claims in checkpoint.json in the same plugin folder
// (/var/lib/kubelet/plugins/gpu.nvidia.com). gpulet adopts them at start,
// so the kubelet's Unprepare of a claim NVIDIA prepared removes NVIDIA's
// spec and frees the device, or refuses to start where it cannot. The
// format (facts from kubernetes-sigs/dra-driver-nvidia-gpu,
// cmd/gpu-kubelet-plugin checkpoint.go, checkpointv.go, prepared.go):
// {"checksum": N, "v1": {...}, "v2": {"checksum": N, "preparedClaims":
// {UID: {"checkpointState": "PrepareStarted"|"PrepareCompleted",
// "status": ResourceClaimStatus, "preparedDevices": [{"devices": [{"gpu"
// or "mig": {"device": {"Requests", "PoolName", "DeviceName",
// "CDIDeviceIDs"}}}], "configState": {"mpsControlDaemonID", ...}}],
// "name", "namespace"}}, "nodeBootID": ID}}.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/gpulet/gpulet/internal/cdispec"
)

// NVIDIACheckpointFile is NVIDIA's DRA checkpoint in the plugin folder.
const NVIDIACheckpointFile = "checkpoint.json"

// nvidiaAdoptedSuffix is appended to NVIDIA's checkpoint once adopted, so it
// is adopted once and kept for reference.
const nvidiaAdoptedSuffix = ".adopted-by-gpulet"

type nvidiaCheckpoint struct {
	V1 *struct {
		PreparedClaims map[string]nvidiaClaim `json:"preparedClaims"`
	} `json:"v1"`
	V2 *struct {
		PreparedClaims map[string]nvidiaClaim `json:"preparedClaims"`
		NodeBootID     string                 `json:"nodeBootID"`
	} `json:"v2"`
}

type nvidiaClaim struct {
	CheckpointState string `json:"checkpointState"`
	Name            string `json:"name"`
	Namespace       string `json:"namespace"`
	PreparedDevices []struct {
		Devices []struct {
			GPU  *nvidiaDevice   `json:"gpu"`
			MIG  *nvidiaDevice   `json:"mig"`
			Vfio json.RawMessage `json:"vfio"`
		} `json:"devices"`
		ConfigState struct {
			MpsControlDaemonID string `json:"mpsControlDaemonID"`
		} `json:"configState"`
	} `json:"preparedDevices"`
}

type nvidiaDevice struct {
	Device *struct {
		Requests     []string
		PoolName     string
		DeviceName   string
		CDIDeviceIDs []string
	} `json:"device"`
}

// nvidiaSpecFile is the path of NVIDIA's CDI spec of a claim: the CDI
// library's transient name with its default extension, .yaml.
func nvidiaSpecFile(cdiDir, uid string) string {
	name := cdispec.ClaimSpecFile(cdispec.ClaimKind, uid)
	return filepath.Join(cdiDir, name[:len(name)-len(filepath.Ext(name))]+".yaml")
}

// adoptNVIDIA reads NVIDIA's checkpoint, if there is one, into next:
// claims NVIDIA completed on this boot become gpulet's (their spec is
// NVIDIA's, removed by Unprepare); half-prepared ones lose their spec.
// It refuses (an error that says what to do) claims gpulet cannot take
// over: devices it does not publish (vfio, or a GPU it does not own) or
// an MPS control daemon NVIDIA started. It returns the file to move aside
// once next is saved, or "".
func (d *Driver) adoptNVIDIA(next *checkpoint, bootID string) (string, error) {
	path := filepath.Join(d.o.PluginDir, NVIDIACheckpointFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read NVIDIA's DRA checkpoint: %w", err)
	}
	refuse := func(why string) error {
		return fmt.Errorf("NVIDIA's DRA checkpoint %s: %s; drain the node's DRA pods (or let NVIDIA's driver unprepare them), then move the file away and restart gpulet", path, why)
	}
	var cp nvidiaCheckpoint
	if err := json.Unmarshal(data, &cp); err != nil {
		return "", refuse(fmt.Sprintf("not readable (%v)", err))
	}
	var claims map[string]nvidiaClaim
	switch {
	case cp.V2 != nil:
		if cp.V2.NodeBootID != "" && cp.V2.NodeBootID != bootID {
			d.log.Info("NVIDIA's DRA checkpoint is from an earlier boot; its claims are void", "file", path)
			return path, nil
		}
		claims = cp.V2.PreparedClaims
	case cp.V1 != nil:
		claims = cp.V1.PreparedClaims
		for uid, c := range claims {
			c.CheckpointState = string(statePrepareCompleted) // v1 recorded completed claims only
			claims[uid] = c
		}
	}
	byName := map[string]entry{}
	for _, e := range catalog(d.o.Store.Snapshot().Node, d.o.Devices.DynamicMIG) {
		byName[e.Name] = e
	}
	for uid, c := range claims {
		if _, ours := next.Claims[uid]; ours {
			continue
		}
		foreign := nvidiaSpecFile(d.o.CDI.Dir, uid)
		if c.CheckpointState != string(statePrepareCompleted) {
			if err := os.Remove(foreign); err != nil && !errors.Is(err, os.ErrNotExist) {
				return "", refuse(fmt.Sprintf("remove the spec of half-prepared claim %s: %v", uid, err))
			}
			continue
		}
		pc := preparedClaim{State: statePrepareCompleted, Namespace: c.Namespace, Name: c.Name, SpecFile: foreign, ForeignSpec: foreign}
		for _, g := range c.PreparedDevices {
			if g.ConfigState.MpsControlDaemonID != "" {
				return "", refuse(fmt.Sprintf("claim %s/%s (%s) runs NVIDIA's MPS control daemon %s, which gpulet cannot stop", c.Namespace, c.Name, uid, g.ConfigState.MpsControlDaemonID))
			}
			for _, dev := range g.Devices {
				nd := dev.GPU
				if nd == nil {
					nd = dev.MIG
				}
				if nd == nil || nd.Device == nil {
					return "", refuse(fmt.Sprintf("claim %s/%s (%s) holds a device gpulet does not serve (vfio)", c.Namespace, c.Name, uid))
				}
				e, ok := byName[nd.Device.DeviceName]
				if !ok {
					return "", refuse(fmt.Sprintf("claim %s/%s (%s) holds %s, which is not among gpulet's DRA devices on this node", c.Namespace, c.Name, uid, nd.Device.DeviceName))
				}
				pc.Devices = append(pc.Devices, preparedDevice{
					Requests: nd.Device.Requests, Pool: nd.Device.PoolName, Device: nd.Device.DeviceName, UUID: e.UUID,
					CDIDeviceIDs: nd.Device.CDIDeviceIDs,
				})
			}
		}
		next.Claims[uid] = pc
		d.log.Info("DRA claim adopted from NVIDIA's DRA driver", "claim", c.Namespace+"/"+c.Name, "uid", uid, "devices", len(pc.Devices))
	}
	return path, nil
}
