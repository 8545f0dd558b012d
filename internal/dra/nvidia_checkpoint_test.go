package dra

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// nvidiaCheckpointJSON is a checkpoint in NVIDIA's format (v2 with its v1
// copy, as its driver writes both): claim uid-a completed on gpu-1, claim
// uid-b only started.
func nvidiaCheckpointJSON(bootID, configState string) string {
	dev := `{"gpu": {"info": {"uuid": "x"}, "device": {"Requests": ["gpu"], "PoolName": "gpu-node-1", "DeviceName": "gpu-1",
		"CDIDeviceIDs": ["k8s.gpu.nvidia.com/claim=uid-a-gpu-1"]}}, "mig": null}`
	return fmt.Sprintf(`{"checksum": 1, "v1": {"preparedClaims": {}}, "v2": {"checksum": 2, "nodeBootID": %q, "preparedClaims": {
		"uid-a": {"checkpointState": "PrepareCompleted", "name": "a", "namespace": "default", "status": {},
			"preparedDevices": [{"devices": [%s], "configState": %s}]},
		"uid-b": {"checkpointState": "PrepareStarted", "name": "b", "namespace": "default", "status": {}}}}}`, bootID, dev, configState)
}

const nvidiaSpecYAML = `cdiVersion: 0.5.0
kind: k8s.gpu.nvidia.com/claim
devices:
- name: %s
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
`

// gpulet adopts the claims NVIDIA's DRA driver prepared on this boot: the
// device stays held, a repeated Prepare gets NVIDIA's answer, Unprepare
// removes NVIDIA's spec; a half-prepared claim loses its spec; the file is
// moved aside.
func TestAdoptNVIDIACheckpoint(t *testing.T) {
	r := newRig(t, "dgx-h100")
	r.stop()
	nv := filepath.Join(r.opts.PluginDir, NVIDIACheckpointFile)
	os.WriteFile(nv, []byte(nvidiaCheckpointJSON("boot-1", "{}")), 0o600)
	os.MkdirAll(r.cdiDir, 0o755)
	specA, specB := nvidiaSpecFile(r.cdiDir, "uid-a"), nvidiaSpecFile(r.cdiDir, "uid-b")
	os.WriteFile(specA, []byte(fmt.Sprintf(nvidiaSpecYAML, "uid-a-gpu-1")), 0o644)
	os.WriteFile(specB, []byte(fmt.Sprintf(nvidiaSpecYAML, "uid-b-gpu-2")), 0o644)
	r.start()

	if exists(nv) || !exists(nv+nvidiaAdoptedSuffix) {
		t.Error("NVIDIA's checkpoint not moved aside after adoption")
	}
	if exists(specB) {
		t.Error("the spec of a claim NVIDIA only started preparing is left")
	}
	if _, msg := r.prepare(r.claim("other", "gpu-1")); !strings.Contains(msg, "uid-a") {
		t.Errorf("gpu-1, held by an adopted claim, handed out again: %q", msg)
	}
	a := r.claim("a", "gpu-1")
	if ids, msg := r.prepare(a); msg != "" || !slices.Equal(ids, []string{"k8s.gpu.nvidia.com/claim=uid-a-gpu-1"}) {
		t.Errorf("prepare of the adopted claim: %v %q, want NVIDIA's CDI ID", ids, msg)
	}
	if msg := r.unprepare(a); msg != "" {
		t.Fatal(msg)
	}
	if exists(specA) {
		t.Error("Unprepare left NVIDIA's spec of the adopted claim")
	}
	if _, msg := r.prepare(r.claim("next", "gpu-1")); msg != "" {
		t.Errorf("gpu-1 not free after the adopted claim was unprepared: %s", msg)
	}
}

// What gpulet cannot take over stops it with what to do; an earlier boot's
// checkpoint is void.
func TestNVIDIACheckpointRefusedOrVoid(t *testing.T) {
	tests := []struct {
		name, boot, config, wantErr string
	}{
		{"MPS control daemon", "boot-1", `{"mpsControlDaemonID": "mps-123"}`, "MPS control daemon"},
		{"unknown device", "boot-1", `{}`, "not among gpulet's DRA devices"},
		{"earlier boot", "boot-0", `{"mpsControlDaemonID": "mps-123"}`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, "dgx-h100")
			r.stop()
			data := nvidiaCheckpointJSON(tc.boot, tc.config)
			if tc.name == "unknown device" {
				data = strings.ReplaceAll(data, `"DeviceName": "gpu-1"`, `"DeviceName": "gpu-vfio-1"`)
			}
			os.WriteFile(filepath.Join(r.opts.PluginDir, NVIDIACheckpointFile), []byte(data), 0o600)
			d, err := Start(context.Background(), r.opts)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				d.Stop()
				return
			}
			if err == nil {
				d.Stop()
				t.Fatal("started over a checkpoint it cannot adopt")
			}
			if !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "move the file away") {
				t.Errorf("error %q, want %q and what to do", err, tc.wantErr)
			}
		})
	}
}
