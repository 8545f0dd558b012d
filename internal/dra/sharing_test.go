package dra

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/waittest"
)

const gpuConfig = "apiVersion: resource.nvidia.com/v1beta1\nkind: GpuConfig\n"

// configuredClaim creates an allocated claim: each request gets its
// devices, the configs are the claim's (each for the requests it names).
func (r *rig) configuredClaim(name string, reqs map[string][]string, configs map[string]string) *resourceapi.ResourceClaim {
	r.t.Helper()
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-" + name)}}
	c.Status.Allocation = &resourceapi.AllocationResult{}
	for _, req := range slicesSorted(reqs) {
		for _, d := range reqs[req] {
			c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results,
				resourceapi.DeviceRequestAllocationResult{Request: req, Driver: DriverName, Pool: testNode, Device: d})
		}
	}
	for _, req := range slicesSorted(configs) {
		cfg := opaque(DriverName, configs[req])
		cfg.Requests = []string{req}
		c.Status.Allocation.Devices.Config = append(c.Status.Allocation.Devices.Config, cfg)
	}
	if _, err := r.client.ResourceV1().ResourceClaims("default").Create(context.Background(), c, metav1.CreateOptions{}); err != nil {
		r.t.Fatal(err)
	}
	return c
}

func slicesSorted[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// policy is the simulator's record of a GPU's compute policy.
func (r *rig) policy(gpu int) sim.GPUPolicy {
	r.t.Helper()
	all, err := sim.ReadComputePolicy(r.sim.Root())
	if err != nil {
		r.t.Fatal(err)
	}
	return all[r.node.GPUs[gpu].UUID]
}

func (r *rig) mpsLog() string {
	b, _ := os.ReadFile(sim.MPSLogPath(r.sim.Root()))
	return string(b)
}

// claimSpec reads the claim's CDI spec.
func (r *rig) claimSpec(c *resourceapi.ResourceClaim) *specs.Spec {
	r.t.Helper()
	data, err := os.ReadFile(r.specPath(c))
	if err != nil {
		r.t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		r.t.Fatal(err)
	}
	return &s
}

func wantPolicy(t *testing.T, got sim.GPUPolicy, mode hardware.ComputeMode, slice int) {
	t.Helper()
	if got.ComputeMode != mode || (slice < 0) != (got.TimeSlice == nil) || (got.TimeSlice != nil && *got.TimeSlice != slice) {
		ts := "unset"
		if got.TimeSlice != nil {
			ts = string(rune('0' + *got.TimeSlice))
		}
		t.Fatalf("compute policy %q time-slice %s, want %q %d (-1: unset)", got.ComputeMode, ts, mode, slice)
	}
}

// NVIDIA's quickstart gpu-test5 claim (TimeSlicing Long on one GPU, MPS
// with 50 % threads and a 10Gi pinned limit on another), with a per-device
// limit added: Prepare sets the compute policy and starts one MPS daemon
// for the claim with those defaults, the MPS device's CDI edits reach the
// daemon, and Unprepare undoes it all.
func TestPrepareAppliesSharing(t *testing.T) {
	r := newRig(t, "dgx-h100")
	c := r.configuredClaim("shared", map[string][]string{"ts-gpu": {"gpu-4"}, "mps-gpu": {"gpu-5", "gpu-6"}}, map[string]string{
		"ts-gpu":  gpuConfig + "sharing: {strategy: TimeSlicing, timeSlicingConfig: {interval: Long}}",
		"mps-gpu": gpuConfig + "sharing: {strategy: MPS, mpsConfig: {defaultActiveThreadPercentage: 50, defaultPinnedDeviceMemoryLimit: 10Gi, defaultPerDevicePinnedMemoryLimit: {\"1\": 5Gi}}}",
	})
	ids, msg := r.prepare(c)
	if msg != "" || len(ids) != 3 {
		t.Fatalf("prepare: %v %q", ids, msg)
	}
	wantPolicy(t, r.policy(4), hardware.ComputeModeDefault, hardware.TimeSliceLong)
	wantPolicy(t, r.policy(5), hardware.ComputeModeExclusiveProcess, -1)
	wantPolicy(t, r.policy(6), hardware.ComputeModeExclusiveProcess, -1)

	rec := r.recorded().Claims[string(c.UID)]
	var daemon string
	for _, p := range rec.Devices {
		if (p.Device == "gpu-4") != (p.MPSDaemon == "") {
			t.Fatalf("device %s has MPS daemon %q", p.Device, p.MPSDaemon)
		}
		daemon = max(daemon, p.MPSDaemon)
	}
	if !strings.HasPrefix(daemon, string(c.UID)+"-") || len(daemon) != len(c.UID)+6 {
		t.Fatalf("daemon ID %q, want <claim UID>-<5 hex digits>", daemon)
	}
	g5, g6 := r.node.GPUs[5].UUID, r.node.GPUs[6].UUID
	both := g5 + "," + g6
	for _, want := range []string{
		both + " -d", both + " set_default_active_thread_percentage 50",
		both + " set_default_device_pinned_mem_limit " + g5 + " 10240M",
		both + " set_default_device_pinned_mem_limit " + g6 + " 5120M",
	} {
		if !strings.Contains(r.mpsLog(), want+"\n") {
			t.Errorf("MPS daemon never got %q:\n%s", want, r.mpsLog())
		}
	}
	pipe := filepath.Join(r.opts.Sharing.MPS.Root, daemon, "pipe")
	if _, err := os.Stat(pipe); err != nil {
		t.Fatalf("daemon's pipe folder: %v", err)
	}
	for _, d := range r.claimSpec(c).Devices {
		mps := strings.HasSuffix(d.Name, "gpu-5") || strings.HasSuffix(d.Name, "gpu-6")
		e := d.ContainerEdits
		if !mps {
			if len(e.Env) != 0 || len(e.Mounts) != 0 {
				t.Errorf("%s: MPS edits on a time-sliced GPU: %v %v", d.Name, e.Env, e.Mounts)
			}
			continue
		}
		if !slices.Equal(e.Env, []string{"CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps"}) || len(e.Mounts) != 2 ||
			e.Mounts[0].HostPath != filepath.Join(r.opts.Sharing.MPS.Root, "shm") || e.Mounts[0].ContainerPath != "/dev/shm" ||
			e.Mounts[1].HostPath != pipe || e.Mounts[1].ContainerPath != "/tmp/nvidia-mps" {
			t.Errorf("%s: env %v mounts %+v %+v", d.Name, e.Env, e.Mounts[0], e.Mounts[1])
		}
	}

	if msg := r.unprepare(c); msg != "" {
		t.Fatal(msg)
	}
	wantPolicy(t, r.policy(4), hardware.ComputeModeDefault, hardware.TimeSliceDefault)
	wantPolicy(t, r.policy(5), hardware.ComputeModeDefault, -1)
	if !strings.Contains(r.mpsLog(), both+" quit\n") {
		t.Errorf("daemon not quit:\n%s", r.mpsLog())
	}
	if _, err := os.Stat(filepath.Dir(pipe)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("daemon's folder left: %v", err)
	}
}

// A kill after the daemon started (before the spec was written): the
// restart quits it and resets the GPU, and the kubelet's retry starts it
// again.
func TestSharingRolledBackAfterKill(t *testing.T) {
	r := newRig(t, "dgx-h100")
	c := r.configuredClaim("mps", map[string][]string{"gpu": {"gpu-1"}}, map[string]string{
		"gpu": gpuConfig + "sharing: {strategy: MPS, mpsConfig: {defaultActiveThreadPercentage: 20}}"})
	r.driver.mu.Lock()
	r.driver.crashAt = func(s string) bool { return s == stepPrepareSpecs }
	r.driver.mu.Unlock()
	if _, msg := r.prepare(c); msg == "" {
		t.Fatal("the killed prepare answered success")
	}
	wantPolicy(t, r.policy(1), hardware.ComputeModeExclusiveProcess, -1)
	r.stop()
	r.start()
	wantPolicy(t, r.policy(1), hardware.ComputeModeDefault, -1)
	uuid := r.node.GPUs[1].UUID
	if strings.Count(r.mpsLog(), uuid+" quit\n") != 1 {
		t.Fatalf("the repair did not quit the daemon:\n%s", r.mpsLog())
	}
	if _, msg := r.prepare(c); msg != "" {
		t.Fatal(msg)
	}
	if strings.Count(r.mpsLog(), uuid+" -d\n") != 2 {
		t.Fatalf("retry did not start the daemon again:\n%s", r.mpsLog())
	}
	if msg := r.unprepare(c); msg != "" {
		t.Fatal(msg)
	}
}

// failingPolicy fails every time-slice interval but Default.
type failingPolicy struct{ hardware.ComputePolicy }

func (f failingPolicy) SetTimeSlice(ctx context.Context, uuid string, n int) error {
	if n != hardware.TimeSliceDefault {
		return errors.New("nvidia-smi: Not Supported")
	}
	return f.ComputePolicy.SetTimeSlice(ctx, uuid, n)
}

// What the node cannot do fails Prepare with the reason, and nothing of
// the claim stays applied: the MPS daemon started for one request is quit
// when the other request's time-slice fails.
func TestSharingFailures(t *testing.T) {
	t.Run("apply fails", func(t *testing.T) {
		r := newRig(t, "dgx-h100")
		r.stop()
		r.opts.Sharing.Policy = failingPolicy{r.sim}
		r.start()
		c := r.configuredClaim("half", map[string][]string{"a": {"gpu-2"}, "b": {"gpu-3"}}, map[string]string{
			"a": gpuConfig + "sharing: {strategy: MPS}",
			"b": gpuConfig + "sharing: {strategy: TimeSlicing, timeSlicingConfig: {interval: Short}}",
		})
		_, msg := r.prepare(c)
		if !strings.Contains(msg, "Not Supported") || !strings.Contains(msg, "sharing config") {
			t.Fatalf("prepare error %q", msg)
		}
		if !strings.Contains(r.mpsLog(), r.node.GPUs[2].UUID+" quit\n") {
			t.Errorf("daemon left running:\n%s", r.mpsLog())
		}
		wantPolicy(t, r.policy(2), hardware.ComputeModeDefault, -1)
		if exists(r.specPath(c)) || len(r.recorded().Claims) != 0 {
			t.Errorf("spec %v, records %v", exists(r.specPath(c)), r.recorded().Claims)
		}
	})
	t.Run("MPS with consumable capacity", func(t *testing.T) {
		r := newRig(t, "dgx-h100")
		r.stop()
		r.opts.Devices.ConsumableCapacity = true
		r.start()
		c := r.configuredClaim("cc", map[string][]string{"gpu": {"gpu-2"}}, map[string]string{"gpu": gpuConfig + "sharing: {strategy: MPS}"})
		if _, msg := r.prepare(c); !strings.Contains(msg, "consumable capacity") {
			t.Fatalf("prepare error %q", msg)
		}
		if r.mpsLog() != "" {
			t.Errorf("a daemon was started:\n%s", r.mpsLog())
		}
	})
	t.Run("no compute policy, no MPS", func(t *testing.T) {
		r := newRig(t, "dgx-h100")
		r.stop()
		r.opts.Sharing = SharingControl{}
		r.start()
		c := r.configuredClaim("bare", map[string][]string{"gpu": {"gpu-2"}}, map[string]string{
			"gpu": gpuConfig + "sharing: {strategy: TimeSlicing, timeSlicingConfig: {interval: Medium}}"})
		if _, msg := r.prepare(c); !strings.Contains(msg, "cannot set time-slice intervals") || !strings.Contains(msg, "gpu-2 (request gpu)") {
			t.Fatalf("prepare error %q", msg)
		}
	})
}

// MPS daemons end with gpulet's pod; the restarted driver starts the daemon
// of every prepared MPS claim again, with its recorded settings, before it
// serves; one still running is reused, not started twice; Unprepare then
// stops it. A TimeSlicing-only claim starts no daemon.
func TestMPSDaemonRestoredAtStart(t *testing.T) {
	r := newRig(t, "dgx-h100")
	c := r.configuredClaim("mps", map[string][]string{"gpu": {"gpu-1", "gpu-2"}}, map[string]string{
		"gpu": gpuConfig + "sharing: {strategy: MPS, mpsConfig: {defaultActiveThreadPercentage: 30, defaultPerDevicePinnedMemoryLimit: {\"1\": 2Gi}}}"})
	ts := r.configuredClaim("ts", map[string][]string{"gpu": {"gpu-3"}}, map[string]string{
		"gpu": gpuConfig + "sharing: {strategy: TimeSlicing, timeSlicingConfig: {interval: Short}}"})
	for _, cl := range []*resourceapi.ResourceClaim{c, ts} {
		if _, msg := r.prepare(cl); msg != "" {
			t.Fatal(msg)
		}
	}
	var daemon string
	for _, p := range r.recorded().Claims[string(c.UID)].Devices {
		daemon = max(daemon, p.MPSDaemon)
	}
	if daemon == "" {
		t.Fatal("no MPS daemon recorded")
	}
	g1, g2, g3 := r.node.GPUs[1].UUID, r.node.GPUs[2].UUID, r.node.GPUs[3].UUID
	devs := g1 + "," + g2
	started := []string{devs + " -d", devs + " set_default_active_thread_percentage 30",
		devs + " set_default_device_pinned_mem_limit " + g2 + " 2048M"}
	count := func(line string) int { return strings.Count(r.mpsLog(), line+"\n") }
	for _, l := range started {
		if count(l) != 1 {
			t.Fatalf("prepare: %q sent %d times:\n%s", l, count(l), r.mpsLog())
		}
	}
	// The simulated daemon runs while its pipe folder's control file is
	// there: gpulet's pod stopping ends it.
	control := filepath.Join(r.opts.Sharing.MPS.Root, daemon, "pipe", "control")
	r.stop()
	if err := os.Remove(control); err != nil {
		t.Fatal(err)
	}
	r.start()
	// Start returned: the daemon runs again, in the same folders, with
	// the same settings.
	for _, l := range started {
		if count(l) != 2 {
			t.Fatalf("after restart: %q sent %d times, want 2:\n%s", l, count(l), r.mpsLog())
		}
	}
	if b, err := os.ReadFile(control); err != nil || string(b) != "30" {
		t.Fatalf("daemon after restart: %q %v", b, err)
	}
	if strings.Contains(r.mpsLog(), g3) {
		t.Errorf("a daemon for the time-sliced GPU:\n%s", r.mpsLog())
	}
	// A restart while the daemon still runs reuses it.
	r.stop()
	r.start()
	if count(devs+" -d") != 2 {
		t.Fatalf("a running daemon was started again:\n%s", r.mpsLog())
	}
	for _, cl := range []*resourceapi.ResourceClaim{c, ts} {
		if msg := r.unprepare(cl); msg != "" {
			t.Fatal(msg)
		}
	}
	if count(devs+" quit") != 1 || exists(control) {
		t.Fatalf("unprepare did not stop the restored daemon (control file %v):\n%s", exists(control), r.mpsLog())
	}
	// Nothing prepared: a restart starts nothing.
	r.stop()
	r.start()
	if count(devs+" -d") != 2 || strings.Contains(r.mpsLog(), g3) {
		t.Fatalf("daemons started with no MPS claim prepared:\n%s", r.mpsLog())
	}
}

// A daemon that does not start at driver start is not fatal: the driver
// serves, and the start is retried until it works.
func TestMPSDaemonRestoreRetried(t *testing.T) {
	r := newRig(t, "dgx-h100")
	c := r.configuredClaim("mps", map[string][]string{"gpu": {"gpu-1"}}, map[string]string{
		"gpu": gpuConfig + "sharing: {strategy: MPS, mpsConfig: {defaultActiveThreadPercentage: 40}}"})
	if _, msg := r.prepare(c); msg != "" {
		t.Fatal(msg)
	}
	var daemon string
	for _, p := range r.recorded().Claims[string(c.UID)].Devices {
		daemon = max(daemon, p.MPSDaemon)
	}
	r.stop()
	dir := filepath.Join(r.opts.Sharing.MPS.Root, daemon)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	// A file where the daemon's folder goes: its start fails.
	if err := os.WriteFile(dir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r.start()
	if _, msg := r.prepare(c); msg != "" {
		t.Fatalf("driver not serving with a daemon down: %q", msg)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	control := filepath.Join(dir, "pipe", "control")
	waittest.Until(t, 10*time.Second, "the MPS daemon restarted by the retry", func() bool {
		b, err := os.ReadFile(control)
		return err == nil && string(b) == "40"
	})
	if msg := r.unprepare(c); msg != "" {
		t.Fatal(msg)
	}
	if exists(control) {
		t.Fatal("unprepare left the daemon running")
	}
}
