package devicemanager_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo is `make demo`: gpulet on a simulated DGX H100, served to the
// kubelet's own device manager, narrated as it happens. It runs only with
// GPULET_DEMO=1; the assertions are the same as the tests'.
func TestDemo(t *testing.T) {
	if os.Getenv("GPULET_DEMO") == "" {
		t.Skip("the narrated demo runs with GPULET_DEMO=1 (make demo)")
	}
	requireNode(t)
	say := func(format string, a ...any) { fmt.Printf(format+"\n", a...) }
	step := func(format string, a ...any) { fmt.Printf("\n▶ "+format+"\n", a...) }
	since := func(t0 time.Time) string { return time.Since(t0).Round(100 * time.Microsecond).String() }

	freshNode(t)
	simRoot := t.TempDir()
	step("starting `gpulet run --backend=sim --sim-profile=dgx-h100` and the kubelet's device manager (k8s.io/kubernetes v1.37 pkg/kubelet/cm/devicemanager)")
	g := startGpulet(t, t, "dgx-h100", simRoot)
	k := startKubelet(t, t, nil)
	k.mustCapacity(t, 8, 8, 10*time.Second)
	say("  node status: nvidia.com/gpu capacity 8, allocatable 8 — %s after gpulet started (pid %d)", since(g.started), g.pid())
	node := readNode(t, simRoot)
	for i := range node.GPUs {
		say("    GPU %d  %s", i, node.uuidOf(i))
	}

	step("a pod asks for `limits: nvidia.com/gpu: 2` (as the seed's Job asks for 1)")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := k.admit(ctx, gpuPod(2))
	if err != nil {
		t.Fatal(err)
	}
	byUUID := node.byUUID()
	for _, id := range a.devices {
		say("  allocated %s (GPU %d)", id, byUUID[id][0])
	}
	for _, e := range a.opts.Envs {
		say("  container env  %s=%s", e.Name, e.Value)
	}
	for _, d := range a.opts.Devices {
		say("  container dev  %s ← %s", d.PathInContainer, d.PathOnHost)
	}
	for _, c := range a.opts.CDIDevices {
		say("  CDI device     %s", c.Name)
	}
	if len(a.devices) != 2 {
		t.Fatalf("allocated %v, want 2 GPUs", a.devices)
	}

	step("GPU 3 reports XID 48 (double-bit ECC): `gpulet sim fault --gpu=3 --xid=48`")
	t0 := time.Now()
	g.sim(t, "fault", "--gpu=3", "--xid=48")
	k.mustCapacity(t, 8, 7, fast)
	say("  node status: capacity 8, allocatable 7 — %s after the fault (command included)", since(t0))

	step("GPU 2 reports XID 13 (an application's own error): `gpulet sim fault --gpu=2 --xid=13`")
	g.sim(t, "fault", "--gpu=2", "--xid=13")
	time.Sleep(300 * time.Millisecond)
	c, al := k.capacity()
	say("  node status: capacity %d, allocatable %d — the health policy ignores application XIDs", c, al)
	if al != 7 {
		t.Fatalf("allocatable %d after an application XID, want 7", al)
	}

	step("the kubelet restarts (device manager stopped, a new one started); gpulet is not touched")
	pid := g.pid()
	k.stop()
	time.Sleep(kubeletDowntime)
	k = startKubelet(t, t, k.pods)
	d, err := k.waitCapacity(k.started, 8, 7, 10*time.Second, 250*time.Microsecond)
	if err != nil {
		t.Fatal(err)
	}
	say("  node status: capacity 8, allocatable 7 — %s after the new kubelet started; gpulet still pid %d", d.Round(100*time.Microsecond), pid)

	step("the fault clears: `gpulet sim clear --all`")
	t0 = time.Now()
	g.sim(t, "clear", "--all")
	k.mustCapacity(t, 8, 8, fast)
	say("  node status: capacity 8, allocatable 8 — %s later", since(t0))

	step("gpulet gets SIGTERM (the DaemonSet pod is deleted)")
	sock := filepath.Join(filepath.Dir(gpuletSocket), gpuletSocketName)
	if err := g.signal(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	say("  gpulet exited with status %d; its socket %s", g.exitCode(), map[bool]string{true: "is still there", false: "is gone"}[exists(sock)])
	if _, err := k.waitCapacity(time.Now(), 8, 0, fast, time.Millisecond); err == nil {
		say("  node status: capacity 8, allocatable 0 — the kubelet saw the plugin go")
	}
	step("restarted gpulet")
	g = startGpulet(t, t, "dgx-h100", simRoot)
	k.mustCapacity(t, 8, 8, 10*time.Second)
	say("  node status: capacity 8, allocatable 8 — %s after its start", since(g.started))
	say("\n%s\ndemo done. `make test` runs these steps and more as tests; `gpulet list` and `gpulet doctor` inspect a node.", strings.Repeat("─", 60))
}
