package dra

import (
	stdbytes "bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

// The version-2 reader of the gpulet released before claim configs were
// applied (internal/dra/checkpoint.go at commit b5e7ebc^): its record types
// and loadCheckpoint's rules, kept here unchanged as the fixture a rollback
// meets. It cannot be changed, so what gpulet writes must satisfy it.
type v2Checkpoint struct {
	Version int                        `json:"version"`
	BootID  string                     `json:"bootID,omitempty"`
	Claims  map[string]v2PreparedClaim `json:"claims"`
}

type v2PreparedClaim struct {
	State       claimState         `json:"state"`
	Namespace   string             `json:"namespace"`
	Name        string             `json:"name"`
	SpecFile    string             `json:"specFile,omitempty"`
	ForeignSpec string             `json:"foreignSpec,omitempty"`
	Devices     []v2PreparedDevice `json:"devices"`
}

type v2PreparedDevice struct {
	Requests     []string   `json:"requests"`
	Pool         string     `json:"pool"`
	Device       string     `json:"device"`
	UUID         string     `json:"uuid"`
	CDIDeviceIDs []string   `json:"cdiDeviceIDs"`
	AdminAccess  bool       `json:"adminAccess,omitempty"`
	ShareID      *types.UID `json:"shareID,omitempty"`
}

// loadV2 reads data as the released version-2 gpulet does, and also
// strictly: a field that reader does not know would be dropped silently
// (it decoded with json.Unmarshal), so it is an error here.
func loadV2(data []byte) (*v2Checkpoint, error) {
	cp := &v2Checkpoint{Version: 2, Claims: map[string]v2PreparedClaim{}}
	if err := json.Unmarshal(data, cp); err != nil {
		return nil, fmt.Errorf("corrupt: %v", err)
	}
	switch cp.Version {
	case 2:
	case 1:
		for uid, pc := range cp.Claims {
			pc.State = statePrepareCompleted
			cp.Claims[uid] = pc
		}
		cp.Version = 2
	default:
		return nil, fmt.Errorf("has version %d, this gpulet reads 1 and 2", cp.Version)
	}
	for uid, pc := range cp.Claims {
		switch pc.State {
		case statePrepareStarted, statePrepareCompleted, stateUnprepareStarted:
		default:
			return nil, fmt.Errorf("claim %s has unknown state %q", uid, pc.State)
		}
	}
	strict := json.NewDecoder(stdbytes.NewReader(data))
	strict.DisallowUnknownFields()
	if err := strict.Decode(&v2Checkpoint{}); err != nil {
		return nil, fmt.Errorf("the version-2 reader would drop a field: %v", err)
	}
	return cp, nil
}

// testdata/checkpoint-v2.json was written by the released version-2 gpulet
// (its checkpoint.save, at commit b5e7ebc^) with a completed claim, a
// half-prepared consumable-capacity share with admin access and a claim
// adopted from NVIDIA's driver half-unprepared. This gpulet reads it and
// writes it back byte for byte, still as version 2.
func TestCheckpointV2GoldenRoundTrip(t *testing.T) {
	golden, err := os.ReadFile(filepath.Join("testdata", "checkpoint-v2.json"))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := loadCheckpoint(filepath.Join("testdata", "checkpoint-v2.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cp.Claims) != 3 || cp.Claims["uid-share"].Devices[0].ShareID == nil || cp.Claims["uid-adopted"].ForeignSpec == "" {
		t.Fatalf("misread: %+v", cp)
	}
	out := filepath.Join(t.TempDir(), CheckpointFile)
	if err := cp.save(out); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !stdbytes.Equal(got, golden) {
		t.Fatalf("written back differently:\n%s\nwant:\n%s", got, golden)
	}
	if _, err := loadV2(got); err != nil {
		t.Fatal(err)
	}
}

// gpulet writes version 3 only while a claim holds an applied sharing
// config: before and after, the released version-2 reader takes the file
// and every record in it.
func TestCheckpointVersionFollowsSharing(t *testing.T) {
	r := newRig(t, "dgx-h100")
	path := filepath.Join(r.opts.PluginDir, CheckpointFile)
	// onDisk reads the file with the version-2 reader; err is its refusal.
	onDisk := func() (*v2Checkpoint, error) {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return loadV2(data)
	}
	wantV2 := func(step string, claims ...string) {
		t.Helper()
		cp, err := onDisk()
		if err != nil {
			t.Fatalf("%s: the version-2 reader refuses the checkpoint: %v", step, err)
		}
		if cp.Version != 2 || len(cp.Claims) != len(claims) {
			t.Fatalf("%s: version %d with %d claims, want 2 with %v", step, cp.Version, len(cp.Claims), claims)
		}
		for _, uid := range claims {
			if pc, ok := cp.Claims[uid]; !ok || pc.State != statePrepareCompleted || pc.SpecFile == "" || len(pc.Devices) != 1 {
				t.Fatalf("%s: the version-2 reader sees claim %s as %+v", step, uid, pc)
			}
		}
	}

	plain := r.claim("plain", "gpu-0")
	if _, msg := r.prepare(plain); msg != "" {
		t.Fatal(msg)
	}
	wantV2("plain claim prepared", "uid-plain")

	for _, tc := range []struct{ name, config string }{
		{"mps", "sharing: {strategy: MPS, mpsConfig: {defaultActiveThreadPercentage: 50}}"},
		{"ts", "sharing: {strategy: TimeSlicing, timeSlicingConfig: {interval: Long}}"},
	} {
		c := r.configuredClaim(tc.name, map[string][]string{"gpu": {"gpu-1"}}, map[string]string{"gpu": gpuConfig + tc.config})
		if _, msg := r.prepare(c); msg != "" {
			t.Fatal(msg)
		}
		if _, err := onDisk(); err == nil || !strings.Contains(err.Error(), "version 3") {
			t.Fatalf("%s claim prepared: the version-2 reader got %v, want a refusal of version 3", tc.name, err)
		}
		if cp := r.recorded(); len(cp.Claims["uid-"+tc.name].Sharing) == 0 || len(cp.Claims) != 2 {
			t.Fatalf("%s claim prepared: records %+v", tc.name, cp.Claims)
		}
		if msg := r.unprepare(c); msg != "" {
			t.Fatal(msg)
		}
		wantV2(tc.name+" claim unprepared", "uid-plain")
	}

	// A restart reads the version-2 file and keeps writing it.
	r.stop()
	r.start()
	if _, msg := r.prepare(r.claim("second", "gpu-2")); msg != "" {
		t.Fatal(msg)
	}
	wantV2("after a restart", "uid-plain", "uid-second")
}

func TestFileVersion(t *testing.T) {
	dev := preparedDevice{Device: "gpu-0", UUID: "GPU-0"}
	for _, tc := range []struct {
		name string
		pc   preparedClaim
		want int
	}{
		{"plain", preparedClaim{Devices: []preparedDevice{dev}}, 2},
		{"sharing record", preparedClaim{Devices: []preparedDevice{dev}, Sharing: []appliedSharing{{}}}, 3},
		{"MPS daemon", preparedClaim{Devices: []preparedDevice{dev, {Device: "gpu-1", MPSDaemon: "d"}}}, 3},
		{"dynamic MIG", preparedClaim{Devices: []preparedDevice{{Device: "gpu-0-mig-1g.10gb-19-0", MIG: &migRecord{GPU: "GPU-0"}}}}, 3},
	} {
		cp := newCheckpoint("boot")
		cp.Claims["other"] = preparedClaim{State: statePrepareCompleted, Devices: []preparedDevice{dev}}
		tc.pc.State = statePrepareStarted
		cp.Claims["uid"] = tc.pc
		if got := cp.fileVersion(); got != tc.want {
			t.Errorf("%s: version %d, want %d", tc.name, got, tc.want)
		}
		path := filepath.Join(t.TempDir(), CheckpointFile)
		if err := cp.save(path); err != nil {
			t.Fatal(err)
		}
		back, err := loadCheckpoint(path)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if back.Version != checkpointVersion || len(back.Claims) != 2 {
			t.Errorf("%s: read back as %+v", tc.name, back)
		}
	}
}
