package dra

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/waittest"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// readOnly makes dir unwritable until the returned function is called:
// by mode bits, or, for root (whom mode bits do not stop), by a read-only
// bind mount of dir over itself. Skips where neither is possible.
func readOnly(t *testing.T, dir string) (restore func()) {
	t.Helper()
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(dir, ".probe")
	f, err := os.Create(probe)
	if err != nil {
		return func() { os.Chmod(dir, 0o750) }
	}
	f.Close()
	os.Remove(probe)
	os.Chmod(dir, 0o750)
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("cannot make %s read-only as root (bind mount: %v)", dir, err)
	}
	if err := syscall.Mount("", dir, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		syscall.Unmount(dir, 0)
		t.Skipf("cannot make %s read-only as root (remount: %v)", dir, err)
	}
	done := false
	restore = func() {
		if !done {
			done = true
			if err := syscall.Unmount(dir, 0); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		}
	}
	t.Cleanup(restore)
	return restore
}

// recorded reads the checkpoint on disk.
func (r *rig) recorded() *checkpoint {
	r.t.Helper()
	cp, err := loadCheckpoint(filepath.Join(r.opts.PluginDir, CheckpointFile))
	if err != nil {
		r.t.Fatal(err)
	}
	return cp
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// A checkpoint that cannot be saved fails Prepare, and its retry, until it
// can: memory never answers for a record the file lacks. Unprepare alike.
func TestCheckpointUnwritable(t *testing.T) {
	r := newRig(t, "dgx-h100")
	c := r.claim("ro", "gpu-1")

	restore := readOnly(t, r.opts.PluginDir)
	for try := 1; try <= 2; try++ {
		ids, msg := r.prepare(c)
		if msg == "" || !strings.Contains(msg, "checkpoint") {
			t.Fatalf("prepare %d with a read-only plugin folder: ids %v, error %q; want a checkpoint error", try, ids, msg)
		}
		if exists(r.specPath(c)) {
			t.Fatalf("prepare %d left a spec behind", try)
		}
	}
	restore()
	ids, msg := r.prepare(c)
	if msg != "" || len(ids) != 1 {
		t.Fatalf("prepare once writable: %v %q", ids, msg)
	}
	if got := r.recorded().Claims[string(c.UID)].State; got != statePrepareCompleted {
		t.Fatalf("record on disk: state %q", got)
	}

	restore = readOnly(t, r.opts.PluginDir)
	for try := 1; try <= 2; try++ {
		if msg := r.unprepare(c); msg == "" {
			t.Fatalf("unprepare %d with a read-only plugin folder succeeded", try)
		}
		if !exists(r.specPath(c)) {
			t.Fatalf("unprepare %d removed the spec without recording it", try)
		}
	}
	restore()
	if msg := r.unprepare(c); msg != "" {
		t.Fatal(msg)
	}
	if exists(r.specPath(c)) || len(r.recorded().Claims) != 0 {
		t.Fatal("unprepare once writable left the spec or the record")
	}
}

// A kill at each step of Prepare and Unprepare, then a restart: no spec
// without a completed record, no GPU held by a claim the kubelet was not
// told about, and the kubelet's retries finish the job.
func TestKillAtEachStep(t *testing.T) {
	tests := []struct {
		step string
		// after the restart: is the claim still prepared (record and spec)?
		prepared bool
	}{
		{stepPrepareStarted, false},
		{stepPrepareSpecs, false},
		{stepPrepareCompleted, true},
		{stepUnprepareStarted, false},
		{stepUnprepareSpecs, false},
		{stepUnprepareComplete, false},
	}
	for _, tc := range tests {
		t.Run(tc.step, func(t *testing.T) {
			r := newRig(t, "dgx-h100")
			c := r.claim("victim", "gpu-2")
			unprep := strings.HasPrefix(tc.step, "unprepare")
			if unprep {
				if _, msg := r.prepare(c); msg != "" {
					t.Fatal(msg)
				}
			}
			r.driver.mu.Lock()
			r.driver.crashAt = func(s string) bool { return s == tc.step }
			r.driver.mu.Unlock()
			if unprep {
				if msg := r.unprepare(c); msg == "" {
					t.Fatal("the killed unprepare answered success")
				}
			} else if ids, msg := r.prepare(c); msg == "" {
				t.Fatalf("the killed prepare answered %v", ids)
			}
			r.stop() // the process is gone; nothing more runs
			r.start()

			rec, ok := r.recorded().Claims[string(c.UID)]
			if tc.prepared {
				if !ok || rec.State != statePrepareCompleted || !exists(r.specPath(c)) {
					t.Fatalf("after restart: record %v (%+v), spec %v; want the claim prepared", ok, rec, exists(r.specPath(c)))
				}
			} else {
				if ok || exists(r.specPath(c)) {
					t.Fatalf("after restart: record %v (%+v), spec %v; want both gone", ok, rec, exists(r.specPath(c)))
				}
				// The GPU is free: another claim gets it, and gives it back.
				other := r.claim("other", "gpu-2")
				if _, msg := r.prepare(other); msg != "" {
					t.Fatalf("gpu-2 still held: %s", msg)
				}
				if msg := r.unprepare(other); msg != "" {
					t.Fatal(msg)
				}
			}
			// The kubelet retries what it was not told succeeded.
			if !unprep {
				ids, msg := r.prepare(c)
				if msg != "" || len(ids) != 1 {
					t.Fatalf("retried prepare: %v %q", ids, msg)
				}
			}
			if msg := r.unprepare(c); msg != "" {
				t.Fatal(msg)
			}
			if exists(r.specPath(c)) || len(r.recorded().Claims) != 0 {
				t.Fatalf("after unprepare: spec %v, records %v", exists(r.specPath(c)), r.recorded().Claims)
			}
			if left, _ := filepath.Glob(filepath.Join(r.cdiDir, "*")); len(left) != 0 {
				t.Fatalf("files left in the CDI folder: %v", left)
			}
		})
	}
}

// Records of an earlier boot are dropped at start, with their specs.
func TestCheckpointNewBoot(t *testing.T) {
	r := newRig(t, "dgx-h100")
	c := r.claim("old", "gpu-0")
	if _, msg := r.prepare(c); msg != "" {
		t.Fatal(msg)
	}
	r.stop()
	r.start() // same boot: kept
	if _, ok := r.recorded().Claims[string(c.UID)]; !ok {
		t.Fatal("a restart on the same boot dropped the claim")
	}
	r.stop()
	if err := os.WriteFile(r.opts.BootIDPath, []byte("boot-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.start()
	cp := r.recorded()
	if len(cp.Claims) != 0 || cp.BootID != "boot-2" || exists(r.specPath(c)) {
		t.Fatalf("after a reboot: boot %q, records %v, spec %v", cp.BootID, cp.Claims, exists(r.specPath(c)))
	}
	if _, msg := r.prepare(r.claim("new", "gpu-0")); msg != "" {
		t.Fatalf("gpu-0 held across a reboot: %s", msg)
	}
}

// Version 1 files (no states, no boot ID) are read as completed claims of
// this boot.
func TestCheckpointVersion1(t *testing.T) {
	path := filepath.Join(t.TempDir(), CheckpointFile)
	os.WriteFile(path, []byte(`{"version": 1, "claims": {"u1": {"namespace": "ns", "name": "c", "specFile": "/x",
		"devices": [{"requests": ["gpu"], "pool": "p", "device": "gpu-0", "uuid": "GPU-1", "cdiDeviceIDs": ["a=b"]}]}}}`), 0o600)
	cp, err := loadCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if pc := cp.Claims["u1"]; pc.State != statePrepareCompleted || cp.BootID != "" || cp.Version != checkpointVersion || pc.Devices[0].UUID != "GPU-1" {
		t.Fatalf("%+v", cp)
	}
	os.WriteFile(path, []byte(`{"version": 2, "claims": {"u1": {"state": "Bogus"}}}`), 0o600)
	if _, err := loadCheckpoint(path); err == nil || !strings.Contains(err.Error(), "unknown state") {
		t.Fatalf("unknown state: %v", err)
	}
}

// The periodic cleanup unprepares claims whose ResourceClaim was deleted or
// replaced, and keeps the others.
func TestCleanupStaleClaims(t *testing.T) {
	r := newRig(t, "dgx-h100")
	gone, replaced, live := r.claim("gone", "gpu-0"), r.claim("replaced", "gpu-1"), r.claim("live", "gpu-2")
	for _, c := range []*resourceapi.ResourceClaim{gone, replaced, live} {
		if _, msg := r.prepare(c); msg != "" {
			t.Fatal(msg)
		}
	}
	ctx := context.Background()
	claims := r.client.ResourceV1().ResourceClaims("default")
	claims.Delete(ctx, "gone", metav1.DeleteOptions{})
	claims.Delete(ctx, "replaced", metav1.DeleteOptions{})
	again := replaced.DeepCopy()
	again.UID = types.UID("uid-replaced-2")
	again.ResourceVersion = ""
	if _, err := claims.Create(ctx, again, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	r.driver.cleanup(ctx)
	cp := r.recorded()
	if got := cp.uids(); !slices.Equal(got, []string{string(live.UID)}) {
		t.Fatalf("records after cleanup %v, want only %s", got, live.UID)
	}
	for _, c := range []*resourceapi.ResourceClaim{gone, replaced} {
		if exists(r.specPath(c)) {
			t.Errorf("spec of %s left", c.Name)
		}
	}
	if !exists(r.specPath(live)) {
		t.Error("spec of the live claim removed")
	}
}

// The driver runs the cleanup by itself, every CleanupInterval.
func TestCleanupRunsPeriodically(t *testing.T) {
	r := newRig(t, "dgx-h100")
	r.stop()
	r.opts.CleanupInterval = 20 * time.Millisecond
	r.start()
	c := r.claim("short", "gpu-5")
	if _, msg := r.prepare(c); msg != "" {
		t.Fatal(msg)
	}
	r.client.ResourceV1().ResourceClaims("default").Delete(context.Background(), c.Name, metav1.DeleteOptions{})
	waittest.Until(t, 10*time.Second, "the periodic cleanup removes the deleted claim's spec", func() bool { return !exists(r.specPath(c)) })
	r.driver.mu.Lock()
	n := len(r.driver.cp.Claims)
	r.driver.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d records left", n)
	}
}
