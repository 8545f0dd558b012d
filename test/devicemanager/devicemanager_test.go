package devicemanager_test

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Timeouts are generous for a loaded 2-core machine; the tests log the
// times they measure.
const (
	// fast: things gpulet does on an inotify event (ms in practice).
	fast = 5 * time.Second
	// reregisterBound is how long gpulet may take to be back in the
	// kubelet's node status after a kubelet restart. gpulet watches
	// kubelet.sock with inotify and polls it every second as a backstop, so
	// anything near this bound means both failed.
	reregisterBound = 3 * time.Second
	// settle is how long the tests watch for duplicate registrations after
	// one succeeded: longer than gpulet's 1 s socket poll.
	settle = 1500 * time.Millisecond
	// kubeletDowntime is how long a restarting kubelet is away between the
	// old device manager's end and the new one's Start. A real kubelet
	// takes seconds; restarting within a few ms would race gpulet's own
	// reaction to the old kubelet's end (it retries 20 ms after the
	// stream ends), which no real restart does.
	kubeletDowntime = 300 * time.Millisecond
)

// simNodeState is one simulated node: a gpulet and a kubelet that the
// subtests of a test share, in order, as they would live through them.
type simNodeState struct {
	root    *testing.T // owns gpulet and kubelet across the subtests
	profile string
	simRoot string
	node    *simNode
	g       *gpuletProc
	k       *kubelet
}

// newSimNode starts gpulet on profile and a kubelet (device manager) on a
// fresh node; subtest a_... waits for them to agree on 8/8.
func newSimNode(t *testing.T, profile string) *simNodeState {
	kubeletLogsOnFailure(t)
	freshNode(t)
	s := &simNodeState{root: t, profile: profile, simRoot: t.TempDir()}
	s.g = startGpulet(t, t, profile, s.simRoot)
	s.k = startKubelet(t, t, nil)
	return s
}

// TestDGXH100 runs kubelet's device manager against `gpulet run` on the
// dgx-h100 sim profile (8 H100 on NVSwitch): scenarios (a)-(d), then what
// a kubelet restart leaves behind.
func TestDGXH100(t *testing.T) {
	requireNode(t)
	s := newSimNode(t, "dgx-h100")
	t.Run("a_capacity_and_allocatable_8", s.capacity8)
	t.Run("b_fault_drops_allocatable_clear_restores", s.faultAndClear)
	t.Run("c_container_gets_two_healthy_gpus", s.allocateTwo)
	t.Run("d_kubelet_restart_reregisters", s.kubeletRestart)
	t.Run("d2_kubelet_notices_gpulet_death_after_its_restart", s.killAndRestartGpulet)
}

// TestGpuletRestart is scenario (e) on a node whose kubelet never
// restarted: gpulet ended with SIGTERM (socket removed) and started again, a
// fault kept across such a restart, and gpulet SIGKILLed (socket left
// behind) and started again, twice.
func TestGpuletRestart(t *testing.T) {
	requireNode(t)
	s := newSimNode(t, "dgx-h100")
	t.Run("a_capacity_and_allocatable_8", s.capacity8)
	t.Run("e_sigterm_removes_socket_then_restart", s.sigtermAndRestart)
	t.Run("e_fault_survives_restart", s.faultSurvivesRestart)
	t.Run("e_sigkill_and_restart", func(t *testing.T) {
		// The second round shows whether the kubelet still tracks the
		// gpulet that the first round started.
		t.Run("round_1", s.killAndRestartGpulet)
		t.Run("round_2", s.killAndRestartGpulet)
	})
}

func (s *simNodeState) capacity8(t *testing.T) {
	s.k.mustCapacity(t, 8, 8, 10*time.Second)
	t.Logf("capacity/allocatable 8/8, %v after gpulet's process start", time.Since(s.g.started).Round(time.Millisecond))
	s.node = readNode(t, s.simRoot)
	if len(s.node.GPUs) != 8 {
		t.Fatalf("node.json lists %d GPUs, want 8", len(s.node.GPUs))
	}
	if got, want := s.k.allocatableIDs(), s.node.allUUIDs(); !slices.Equal(got, want) {
		t.Fatalf("kubelet's allocatable device IDs are not the node's GPU UUIDs:\n got %v\nwant %v", got, want)
	}
}

// requireBaseline stops a subtest early, with the reason, when an earlier
// one left the node in a state it cannot build on.
func (s *simNodeState) requireBaseline(t *testing.T) {
	t.Helper()
	if s.node == nil {
		t.Fatal("scenario (a) did not pass; nothing to build on")
	}
	if !s.g.running() {
		t.Fatalf("gpulet (pid %d) is not running (an earlier subtest failed)", s.g.pid())
	}
	if _, err := s.k.waitCapacity(time.Now(), 8, 8, fast, time.Millisecond); err != nil {
		t.Fatalf("not at the 8/8 baseline: %v", err)
	}
}

// liveStream proves the kubelet gets gpulet's device list updates now: a
// fault must show in allocatable, its clearing too. A kubelet that lost
// track of gpulet's stream keeps reporting 8/8 from stale state.
func (s *simNodeState) liveStream(t *testing.T, gpu int) {
	t.Helper()
	s.g.sim(t, "fault", "--gpu="+strconv.Itoa(gpu), "--xid=48")
	if _, err := s.k.waitCapacity(time.Now(), 8, 7, fast, time.Millisecond); err != nil {
		s.g.sim(t, "clear", "--all")
		t.Fatalf("a fault on GPU %d did not reach the kubelet: %v", gpu, err)
	}
	s.g.sim(t, "clear", "--all")
	s.k.mustCapacity(t, 8, 8, fast)
}

func (s *simNodeState) faultAndClear(t *testing.T) {
	s.requireBaseline(t)
	faulted := s.node.uuidOf(3)

	out := s.g.sim(t, "fault", "--gpu=3", "--xid=48")
	if !strings.Contains(out, faulted) {
		t.Errorf("`gpulet sim fault --gpu=3` says %q, want it to name GPU 3's UUID %s", out, faulted)
	}
	d := s.k.mustCapacity(t, 8, 7, fast)
	t.Logf("fault (xid 48) on GPU 3: capacity/allocatable 8/7 after %v", d.Round(time.Microsecond))
	want := slices.DeleteFunc(s.node.allUUIDs(), func(u string) bool { return u == faulted })
	if got := s.k.allocatableIDs(); !slices.Equal(got, want) {
		t.Errorf("allocatable devices after the fault on GPU 3 (%s):\n got %v\nwant %v", faulted, got, want)
	}

	s.g.sim(t, "clear", "--gpu=3")
	d = s.k.mustCapacity(t, 8, 8, fast)
	t.Logf("fault cleared: capacity/allocatable 8/8 after %v", d.Round(time.Microsecond))
	if got := s.k.allocatableIDs(); !slices.Equal(got, s.node.allUUIDs()) {
		t.Errorf("allocatable devices after clear: %v, want all 8", got)
	}
}

var nvidiaN = regexp.MustCompile(`^/dev/nvidia([0-9]+)$`)

func (s *simNodeState) allocateTwo(t *testing.T) {
	s.requireBaseline(t)
	byUUID := s.node.byUUID()
	devRoot := filepath.Join(s.simRoot, "dev")
	if s.node.DevRoot != devRoot {
		t.Errorf("node.json devRoot = %q, want %q", s.node.DevRoot, devRoot)
	}
	for _, tc := range []struct {
		name   string
		faults []int // GPU indexes faulted before the pod comes
	}{
		{"all_healthy", nil},
		{"gpu3_faulted", []int{3}},
		{"gpus_0_1_2_faulted", []int{0, 1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.requireBaseline(t)
			faulted := map[string]bool{}
			for _, i := range tc.faults {
				s.g.sim(t, "fault", "--gpu="+strconv.Itoa(i), "--xid=48")
				faulted[s.node.uuidOf(i)] = true
			}
			t.Cleanup(func() {
				if len(tc.faults) > 0 {
					s.g.sim(t, "clear", "--all")
				}
			})
			s.k.mustCapacity(t, 8, int64(8-len(tc.faults)), fast)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a, err := s.k.admit(ctx, gpuPod(2))
			if err != nil {
				t.Fatalf("a pod asking for 2 %s: %v", resGPU, err)
			}
			defer s.k.release(a)
			t.Logf("allocated %v; envs=%v devices=%v cdi=%v", a.devices, a.opts.Envs, a.opts.Devices, a.opts.CDIDevices)

			if len(a.devices) != 2 {
				t.Fatalf("kubelet allocated %d devices (%v), want 2", len(a.devices), a.devices)
			}
			for _, id := range a.devices {
				if _, ok := byUUID[id]; !ok {
					t.Errorf("allocated device ID %q is not a GPU UUID of node.json", id)
				}
				if faulted[id] {
					t.Errorf("allocated device %s is the faulted GPU %d", id, byUUID[id][0])
				}
			}

			// NVIDIA_VISIBLE_DEVICES: exactly the two UUIDs.
			var visible []string
			n := 0
			for _, e := range a.opts.Envs {
				if e.Name == "NVIDIA_VISIBLE_DEVICES" {
					n++
					visible = strings.Split(e.Value, ",")
				}
			}
			sort.Strings(visible)
			if n != 1 || !slices.Equal(visible, a.devices) {
				t.Errorf("NVIDIA_VISIBLE_DEVICES (set %d times) = %v, want exactly the allocated GPUs %v", n, visible, a.devices)
			}

			// Device nodes: /dev/nvidiaN of exactly those GPUs' minors, from
			// the simulated /dev, plus the control devices a CUDA process needs.
			wantMinors := []int{byUUID[a.devices[0]][1], byUUID[a.devices[1]][1]}
			sort.Ints(wantMinors)
			var gotMinors []int
			paths := map[string]bool{}
			for _, d := range a.opts.Devices {
				paths[d.PathInContainer] = true
				if filepath.Dir(d.PathOnHost) != devRoot {
					t.Errorf("device %s comes from %s, want a node under the simulated /dev %s", d.PathInContainer, d.PathOnHost, devRoot)
				}
				if !exists(d.PathOnHost) {
					t.Errorf("device %s: host path %s does not exist", d.PathInContainer, d.PathOnHost)
				}
				if !strings.Contains(d.Permissions, "r") || !strings.Contains(d.Permissions, "w") {
					t.Errorf("device %s permissions %q, want read-write", d.PathInContainer, d.Permissions)
				}
				if m := nvidiaN.FindStringSubmatch(d.PathInContainer); m != nil {
					minor, _ := strconv.Atoi(m[1])
					gotMinors = append(gotMinors, minor)
					if want := filepath.Join(devRoot, "nvidia"+m[1]); d.PathOnHost != want {
						t.Errorf("device %s maps host %s, want %s", d.PathInContainer, d.PathOnHost, want)
					}
				}
			}
			sort.Ints(gotMinors)
			if !slices.Equal(gotMinors, wantMinors) {
				t.Errorf("/dev/nvidiaN devices have minors %v, want the allocated GPUs' minors %v", gotMinors, wantMinors)
			}
			for _, ctl := range []string{"/dev/nvidiactl", "/dev/nvidia-uvm"} {
				if !paths[ctl] {
					t.Errorf("no %s device spec; a CUDA container cannot work without it", ctl)
				}
			}

			// CDI: k8s.device-plugin.nvidia.com/gpu=<uuid> for exactly those two.
			var cdi []string
			for _, c := range a.opts.CDIDevices {
				cdi = append(cdi, c.Name)
			}
			sort.Strings(cdi)
			wantCDI := []string{cdiKind + "=" + a.devices[0], cdiKind + "=" + a.devices[1]}
			if !slices.Equal(cdi, wantCDI) {
				t.Errorf("CDI devices = %v, want %v", cdi, wantCDI)
			}
		})
	}
	s.k.mustCapacity(t, 8, 8, fast)
}

// kubeletRestart restarts the kubelet (its device manager) and measures how
// long gpulet takes to be back in its node status, without gpulet being
// touched.
func (s *simNodeState) kubeletRestart(t *testing.T) {
	s.requireBaseline(t)
	for _, tc := range []struct {
		name string
		// crash leaves the old kubelet.sock behind, as a killed kubelet
		// does; a graceful stop removes it.
		crash bool
	}{
		{"graceful_stop", false},
		{"crash_leaves_kubelet_sock", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.requireBaseline(t)
			pid := s.g.pid()
			gmark := s.g.logs.mark()
			s.k.stop()
			if tc.crash {
				staleSocket(t, pluginapi.KubeletSocket)
			}
			time.Sleep(kubeletDowntime)
			kmark := klogRec.mark()
			s.k = startKubelet(t, s.root, s.k.pods)
			d, err := s.k.waitCapacity(s.k.started, 8, 8, 10*time.Second, 250*time.Microsecond)
			if err != nil {
				t.Fatalf("after the kubelet restart: %v", err)
			}
			t.Logf("kubelet restart (%s): capacity/allocatable 8/8 %v after the new device manager's Start", tc.name, d.Round(time.Microsecond))
			if d > reregisterBound {
				t.Errorf("gpulet took %v to re-register, want under %v", d, reregisterBound)
			}
			if !s.g.running() || s.g.pid() != pid {
				t.Fatalf("gpulet (pid %d) did not live through the kubelet restart untouched", pid)
			}

			// One registration, not a storm (d2 checks the consequence).
			s.noRefusedRegistrations(t, kmark)
			regs := 0
			for _, e := range s.g.logs.since(gmark) {
				if strings.Contains(e.msg, "registered with kubelet") {
					regs++
				}
			}
			t.Logf("gpulet logged %d successful registrations after the restart", regs)
			if c, a := s.k.capacity(); c != 8 || a != 8 {
				t.Errorf("capacity/allocatable %d/%d after settling, want 8/8", c, a)
			}
			s.liveStream(t, 5)
		})
	}
}

// killGpulet SIGKILLs gpulet and waits until the kubelet shows it gone: its
// devices stay in capacity but none is allocatable.
func (s *simNodeState) killGpulet(t *testing.T) {
	t.Helper()
	pid := s.g.pid()
	if err := s.g.signal(syscall.SIGKILL, fast); err != nil {
		t.Fatal(err)
	}
	t.Logf("gpulet pid %d killed (its socket left behind: %v)", pid, isSocket(gpuletSocket))
	if _, err := s.k.waitCapacity(time.Now(), 8, 0, fast, time.Millisecond); err != nil {
		t.Errorf("the kubelet did not notice that gpulet (pid %d) died: %v", pid, err)
	}
}

// restartGpulet starts gpulet again on the same node and returns how long
// it took from its process start until the kubelet reports want.
func (s *simNodeState) restartGpulet(t *testing.T, wantAlloc int64) time.Duration {
	t.Helper()
	s.g = startGpulet(t, s.root, s.profile, s.simRoot)
	d, err := s.k.waitCapacity(s.g.started, 8, wantAlloc, 10*time.Second, 250*time.Microsecond)
	if err != nil {
		t.Fatalf("after restarting gpulet: %v", err)
	}
	return d
}

func (s *simNodeState) killAndRestartGpulet(t *testing.T) {
	s.requireBaseline(t)
	mark := klogRec.mark()
	s.killGpulet(t)
	d := s.restartGpulet(t, 8)
	t.Logf("restarted gpulet: capacity/allocatable 8/8 %v after its process start", d.Round(time.Microsecond))
	s.liveStream(t, 0)
	s.noRefusedRegistrations(t, mark)
}

// faultSurvivesRestart: gpulet restarted (SIGTERM, as a rolling update
// does) with a fault on must come back with that GPU unhealthy, and never
// advertise it healthy on the way.
func (s *simNodeState) faultSurvivesRestart(t *testing.T) {
	s.requireBaseline(t)
	faulted := s.node.uuidOf(6)
	s.g.sim(t, "fault", "--gpu=6", "--xid=48")
	defer s.g.sim(t, "clear", "--all")
	s.k.mustCapacity(t, 8, 7, fast)
	if err := s.g.signal(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	s.k.mustCapacity(t, 8, 0, fast)
	mark := klogRec.mark()
	d := s.restartGpulet(t, 7)
	t.Logf("restarted gpulet with GPU 6 faulted: 8/7 after %v", d.Round(time.Microsecond))
	if slices.Contains(s.k.allocatableIDs(), faulted) {
		t.Errorf("faulted GPU 6 (%s) is allocatable after the restart", faulted)
	}
	// Every device list the restarted gpulet sent must already have had
	// GPU 6 unhealthy: the kubelet could place a pod on it otherwise.
	// (The kubelet logs an update just after applying it.)
	var updates []entry
	for deadline := time.Now().Add(fast); len(updates) == 0 && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		updates = klogRec.find(mark, "Processed device updates for resource", map[string]any{"resourceName": resGPU})
	}
	if len(updates) == 0 {
		t.Fatal("no device list updates from the restarted gpulet recorded in the kubelet's log")
	}
	for _, e := range updates {
		if fmt.Sprint(e.kv["healthyCount"]) != "7" {
			t.Errorf("restarted gpulet advertised %v healthy of %v GPUs while GPU 6 has a fault: %s", e.kv["healthyCount"], e.kv["totalCount"], e)
		}
	}
}

// sigtermAndRestart: SIGTERM makes gpulet exit 0 and remove its socket
// (only its own); the kubelet sees it gone; a new gpulet comes back.
func (s *simNodeState) sigtermAndRestart(t *testing.T) {
	s.requireBaseline(t)
	if !isSocket(gpuletSocket) {
		t.Fatalf("%s is not a socket while gpulet serves", gpuletSocket)
	}
	if err := s.g.signal(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if code := s.g.exitCode(); code != 0 {
		t.Errorf("gpulet exited %d on SIGTERM, want 0", code)
	}
	if exists(gpuletSocket) {
		t.Errorf("gpulet left %s behind after SIGTERM", gpuletSocket)
	}
	if !isSocket(pluginapi.KubeletSocket) {
		t.Errorf("kubelet.sock is gone after gpulet's SIGTERM; gpulet must remove only its own socket")
	}
	if _, err := s.k.waitCapacity(time.Now(), 8, 0, fast, time.Millisecond); err != nil {
		t.Errorf("after gpulet's SIGTERM: %v", err)
	}
	mark := klogRec.mark()
	d := s.restartGpulet(t, 8)
	t.Logf("gpulet started again after SIGTERM: 8/8 %v after its process start", d.Round(time.Microsecond))
	s.liveStream(t, 2)
	s.noRefusedRegistrations(t, mark)
}

// noRefusedRegistrations watches the kubelet's log for settle (past
// gpulet's 1 s socket poll and its first retries) and fails t for every
// registration the kubelet refused since mark. The kubelet (1.37) refuses a
// second Register of an endpoint whose stream is live, and in doing so
// forgets the live client: it would then never notice that gpulet died.
func (s *simNodeState) noRefusedRegistrations(t *testing.T, mark int) {
	t.Helper()
	time.Sleep(settle)
	for _, e := range klogRec.since(mark) {
		if e.err != nil && strings.Contains(e.msg, "device plugin client") {
			t.Errorf("kubelet refused a registration: %s", e)
		}
	}
}

// dgx1NV2 are the GPU pairs joined by two NVLinks on a DGX-1 (V100):
// `nvidia-smi topo -m` shows NV2 for exactly these.
var dgx1NV2 = [][2]int{{0, 3}, {0, 4}, {1, 2}, {1, 5}, {2, 3}, {4, 7}, {5, 6}, {6, 7}}

func isNV2(a, b int) bool {
	for _, p := range dgx1NV2 {
		if (p[0] == a && p[1] == b) || (p[0] == b && p[1] == a) {
			return true
		}
	}
	return false
}

// TestDGX1PreferredAllocation: on the dgx1-v100 profile a 2-GPU request goes
// through the kubelet's GetPreferredAllocation call and gets an NV2 pair
// whenever the free GPUs still hold one.
func TestDGX1PreferredAllocation(t *testing.T) {
	requireNode(t)
	for _, tc := range []struct {
		name   string
		faults []int
		pods   int // 2-GPU pods admitted one after another, all kept running
	}{
		// The NV2 pairs form the ring 0-3-2-1-5-6-7-4-0, so after any two
		// NV2 pairs are taken at least one NV2 pair is left.
		{"all_healthy", nil, 3},
		// Faulting 0 and 3 leaves the path 2-1-5-6-7-4.
		{"gpus_0_3_faulted", []int{0, 3}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kubeletLogsOnFailure(t)
			freshNode(t)
			simRoot := t.TempDir()
			g := startGpulet(t, t, "dgx1-v100", simRoot)
			k := startKubelet(t, t, nil)
			k.mustCapacity(t, 8, 8, 10*time.Second)
			node := readNode(t, simRoot)
			byUUID := node.byUUID()
			faulted := map[string]bool{}
			for _, i := range tc.faults {
				g.sim(t, "fault", "--gpu="+strconv.Itoa(i), "--xid=48")
				faulted[node.uuidOf(i)] = true
			}
			k.mustCapacity(t, 8, int64(8-len(tc.faults)), fast)

			taken := map[string]bool{}
			for p := 0; p < tc.pods; p++ {
				var free []int
				for _, id := range k.allocatableIDs() {
					if !taken[id] {
						free = append(free, byUUID[id][0])
					}
				}
				sort.Ints(free)
				nv2Left := false
				for i := range free {
					for j := i + 1; j < len(free); j++ {
						nv2Left = nv2Left || isNV2(free[i], free[j])
					}
				}

				mark := klogRec.mark()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				pod := gpuPod(2)
				a, err := k.admit(ctx, pod)
				cancel()
				if err != nil {
					t.Fatalf("pod %d: %v", p, err)
				}
				if len(a.devices) != 2 {
					t.Fatalf("pod %d got %d devices, want 2", p, len(a.devices))
				}
				x, y := byUUID[a.devices[0]][0], byUUID[a.devices[1]][0]
				if x > y {
					x, y = y, x
				}
				t.Logf("pod %d: free GPUs %v -> GPUs (%d,%d) NV2=%v", p, free, x, y, isNV2(x, y))
				if calls := klogRec.find(mark, "Issuing a GetPreferredAllocation call", map[string]any{"podUID": pod.UID}); len(calls) == 0 {
					t.Errorf("pod %d: the kubelet did not call gpulet's GetPreferredAllocation", p)
				}
				for _, id := range a.devices {
					if faulted[id] || taken[id] {
						t.Errorf("pod %d got GPU %d, which is faulted or already taken", p, byUUID[id][0])
					}
					taken[id] = true
				}
				if nv2Left && !isNV2(x, y) {
					t.Errorf("pod %d got GPUs (%d,%d), not an NV2 pair, though free GPUs %v hold one", p, x, y, free)
				}
				if !nv2Left {
					t.Logf("pod %d: no NV2 pair was free; any pair is acceptable", p)
				}
			}
		})
	}
}
