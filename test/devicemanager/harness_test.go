package devicemanager_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/config"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
)

const (
	resGPU = "nvidia.com/gpu"
	// cdiKind is the kind of the CDI names gpulet hands out (NVIDIA's plugin's).
	cdiKind = "k8s.device-plugin.nvidia.com/gpu"
	// gpuletSocket is gpulet's plugin socket for nvidia.com/gpu.
	gpuletSocketName = "gpulet-nvidia-com-gpu.sock"
)

var gpuletSocket = filepath.Join(pluginapi.DevicePluginPath, gpuletSocketName)

// ---------------------------------------------------------------- gpulet

// gpuletProc is one `gpulet run` process on a simulated node, or another
// process started by startProcess (NVIDIA's plugin).
type gpuletProc struct {
	tb      testing.TB
	name    string
	simRoot string
	profile string
	cmd     *exec.Cmd
	logs    *recorder
	started time.Time
	done    chan struct{}
	waitErr error
}

// startGpulet starts `gpulet run` on the sim profile, serving the kubelet's
// device-plugin folder, with NVIDIA's usual CDI + envvar setup. It reports
// to tb and lives until owner (tb or a parent of it) ends. extra flags
// (e.g. --mig-strategy=mixed) come after the usual ones.
func startGpulet(tb, owner testing.TB, profile, simRoot string, extra ...string) *gpuletProc {
	tb.Helper()
	args := []string{"run",
		"--backend=sim",
		"--sim-profile=" + profile,
		"--sim-root=" + simRoot,
		"--device-plugin-path=" + pluginapi.DevicePluginPath,
		"--pass-device-specs",
		"--device-list-strategy=envvar,cdi-cri",
		// cdi-cri makes gpulet write a CDI spec; keep it out of /var/run/cdi.
		"--cdi-spec-dir=" + filepath.Join(simRoot, "cdi"),
		// A free port: restarts may overlap the previous process.
		"--metrics-address=127.0.0.1:0",
	}
	g := startProcess(tb, owner, gpuletBin, append(args, extra...), nil)
	g.simRoot, g.profile = simRoot, profile
	return g
}

// startProcess starts bin with args and only PATH, HOME and env in its
// environment, recording its output; gpulet and NVIDIA's plugin both run
// through it. It lives until owner ends (SIGTERM, then SIGKILL).
func startProcess(tb, owner testing.TB, bin string, args, env []string) *gpuletProc {
	tb.Helper()
	g := &gpuletProc{tb: owner, logs: newRecorder(), done: make(chan struct{})}
	g.cmd = exec.Command(bin, args...)
	// Only the arguments and env configure it, whatever the caller's environment holds.
	g.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := g.cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	g.cmd.Stdout = g.cmd.Stderr
	g.started = time.Now()
	if err := g.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", bin, err)
	}
	name := fmt.Sprintf("%s[%d]", filepath.Base(bin), g.cmd.Process.Pid)
	g.name = name
	pipeDone := make(chan struct{})
	go func() {
		defer close(pipeDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			g.logs.add(entry{at: time.Now(), name: name, msg: sc.Text()})
			if os.Getenv("GPULET_DM_VERBOSE") != "" {
				fmt.Fprintf(os.Stderr, "%s: %s\n", name, sc.Text())
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() {
		<-pipeDone
		g.waitErr = g.cmd.Wait()
		close(g.done)
	}()
	owner.Cleanup(func() {
		if g.running() {
			g.stop()
		}
		if owner.Failed() {
			tb.Logf("%s log:\n%s", name, g.logs.dump(0, 400))
		}
	})
	return g
}

func (g *gpuletProc) pid() int { return g.cmd.Process.Pid }

func (g *gpuletProc) running() bool {
	select {
	case <-g.done:
		return false
	default:
		return true
	}
}

// signal sends sig and waits up to timeout for the process to exit.
func (g *gpuletProc) signal(sig syscall.Signal, timeout time.Duration) error {
	if err := g.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-g.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s still running %v after %v", g.name, timeout, sig)
	}
}

// stop ends gpulet the way the DaemonSet's pod is ended: SIGTERM, then SIGKILL.
func (g *gpuletProc) stop() {
	if err := g.signal(syscall.SIGTERM, 10*time.Second); err != nil {
		g.tb.Errorf("%v; killing it", err)
		_ = g.signal(syscall.SIGKILL, 5*time.Second)
	}
}

// exitCode is the exit status of an exited process (-1 for a signal).
func (g *gpuletProc) exitCode() int { return g.cmd.ProcessState.ExitCode() }

// sim runs `gpulet sim ARGS --sim-root=...` and fails tb if it fails.
func (g *gpuletProc) sim(tb testing.TB, args ...string) string {
	tb.Helper()
	return runSim(tb, g.simRoot, args...)
}

func runSim(tb testing.TB, simRoot string, args ...string) string {
	tb.Helper()
	full := append([]string{"sim"}, args...)
	full = append(full, "--sim-root="+simRoot)
	out, err := exec.Command(gpuletBin, full...).CombinedOutput()
	if err != nil {
		tb.Fatalf("gpulet %s: %v\n%s", strings.Join(full, " "), err, out)
	}
	return string(out)
}

// ---------------------------------------------------------------- node.json

// simNode is the part of <sim-root>/node.json the tests read: the GPUs of
// the simulated node as gpulet published them.
type simNode struct {
	Profile string `json:"profile"`
	DevRoot string `json:"devRoot"`
	GPUs    []struct {
		UUID  string `json:"uuid"`
		Index int    `json:"index"`
		Minor int    `json:"minor"`
	} `json:"gpus"`
}

func readNode(tb testing.TB, simRoot string) *simNode {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(simRoot, "node.json"))
	if err != nil {
		tb.Fatalf("gpulet did not publish its simulated node: %v", err)
	}
	var n simNode
	if err := json.Unmarshal(data, &n); err != nil {
		tb.Fatalf("node.json: %v", err)
	}
	if len(n.GPUs) == 0 {
		tb.Fatalf("node.json lists no GPUs:\n%s", data)
	}
	return &n
}

func (n *simNode) uuidOf(index int) string {
	for _, g := range n.GPUs {
		if g.Index == index {
			return g.UUID
		}
	}
	panic(fmt.Sprintf("no GPU %d in node.json", index))
}

// byUUID maps UUID -> (index, minor).
func (n *simNode) byUUID() map[string][2]int {
	m := map[string][2]int{}
	for _, g := range n.GPUs {
		m[g.UUID] = [2]int{g.Index, g.Minor}
	}
	return m
}

func (n *simNode) allUUIDs() []string {
	var out []string
	for _, g := range n.GPUs {
		out = append(out, g.UUID)
	}
	sort.Strings(out)
	return out
}

// ---------------------------------------------------------------- kubelet

// kubelet is the kubelet's real device manager, as the kubelet drives it:
// Start with the active pods, GetCapacity for node status, Allocate and
// GetDeviceRunContainerOptions when a container is created.
type kubelet struct {
	tb      testing.TB
	m       *devicemanager.ManagerImpl
	logger  klog.Logger
	pods    *podList
	started time.Time
	stopped atomic.Bool
}

// podList is the kubelet's list of active pods; a pod must be in it or the
// device manager drops its allocation.
type podList struct {
	mu   sync.Mutex
	pods []*v1.Pod
}

func (l *podList) active() []*v1.Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*v1.Pod(nil), l.pods...)
}

func (l *podList) add(p *v1.Pod) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pods = append(l.pods, p)
}

func (l *podList) remove(uid types.UID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, p := range l.pods {
		if p.UID == uid {
			l.pods = append(l.pods[:i], l.pods[i+1:]...)
			return
		}
	}
}

// freshNode empties the device-plugin folder (sockets and the device
// manager's checkpoint), as on a newly booted node.
func freshNode(tb testing.TB) {
	tb.Helper()
	ents, err := os.ReadDir(pluginapi.DevicePluginPath)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(pluginapi.DevicePluginPath, e.Name())); err != nil {
			tb.Fatal(err)
		}
	}
}

// startKubelet creates and starts a device manager on
// /var/lib/kubelet/device-plugins/kubelet.sock. pods may be shared with a
// previous kubelet (a restart keeps the node's pods). It reports to tb and
// is stopped when owner (tb or a parent of it) ends.
func startKubelet(tb, owner testing.TB, pods *podList) *kubelet {
	tb.Helper()
	if pods == nil {
		pods = &podList{}
	}
	logger := klog.Background().WithName("kubelet")
	m, err := devicemanager.NewManagerImpl(logger, nil, topologymanager.NewFakeManager(logger))
	if err != nil {
		tb.Fatalf("NewManagerImpl: %v", err)
	}
	k := &kubelet{tb: owner, m: m, logger: logger, pods: pods}
	ready := config.NewSourcesReady(func(sets.Set[string]) bool { return true })
	k.started = time.Now()
	if err := m.Start(logger, pods.active, ready, containermap.NewContainerMap(), sets.New[string]()); err != nil {
		tb.Fatalf("device manager Start: %v", err)
	}
	owner.Cleanup(k.stop)
	return k
}

func (k *kubelet) stop() {
	if k.stopped.CompareAndSwap(false, true) {
		if err := k.m.Stop(k.logger); err != nil {
			k.tb.Errorf("device manager Stop: %v", err)
		}
	}
}

// capacity is the node status the kubelet would report for nvidia.com/gpu.
func (k *kubelet) capacity() (capacity, allocatable int64) {
	c, a, _ := k.m.GetCapacity(k.logger)
	cq, aq := c[v1.ResourceName(resGPU)], a[v1.ResourceName(resGPU)]
	return cq.Value(), aq.Value()
}

// allocatableIDs are the device IDs the kubelet would hand out now.
func (k *kubelet) allocatableIDs() []string {
	ids := sets.List(sets.KeySet(k.m.GetAllocatableDevices(k.logger)[resGPU]))
	return ids
}

// waitCapacity polls GetCapacity every interval until it reports want, and
// returns how long that took, counted from since.
func (k *kubelet) waitCapacity(since time.Time, wantCap, wantAlloc int64, timeout, interval time.Duration) (time.Duration, error) {
	deadline := time.Now().Add(timeout)
	for {
		c, a := k.capacity()
		now := time.Now()
		if c == wantCap && a == wantAlloc {
			return now.Sub(since), nil
		}
		if now.After(deadline) {
			return now.Sub(since), fmt.Errorf("%s capacity/allocatable = %d/%d after %v, want %d/%d",
				resGPU, c, a, now.Sub(since).Round(time.Millisecond), wantCap, wantAlloc)
		}
		time.Sleep(interval)
	}
}

// mustCapacity is waitCapacity for tests, with a 1 ms poll.
func (k *kubelet) mustCapacity(tb testing.TB, wantCap, wantAlloc int64, timeout time.Duration) time.Duration {
	tb.Helper()
	d, err := k.waitCapacity(time.Now(), wantCap, wantAlloc, timeout, time.Millisecond)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

var podSeq atomic.Int64

// gpuPod is a pod with one container asking for n nvidia.com/gpu.
func gpuPod(n int) *v1.Pod {
	i := podSeq.Add(1)
	q := resource.MustParse(strconv.Itoa(n))
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("cuda-%d", i), Namespace: "default",
			UID: types.UID(fmt.Sprintf("00000000-0000-4000-8000-%012d", i)),
		},
		Spec: v1.PodSpec{Containers: []v1.Container{{
			Name:  "cuda",
			Image: "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04",
			Resources: v1.ResourceRequirements{
				Limits:   v1.ResourceList{resGPU: q},
				Requests: v1.ResourceList{resGPU: q},
			},
		}}},
	}
}

// admitted is what a container got from the device manager.
type admitted struct {
	pod     *v1.Pod
	devices []string // device IDs the kubelet allocated, sorted
	opts    *devicemanager.DeviceRunContainerOptions
}

// admit does for pod's container what the kubelet does before creating it:
// the pod becomes active, Allocate, then GetDeviceRunContainerOptions.
func (k *kubelet) admit(ctx context.Context, pod *v1.Pod) (*admitted, error) {
	ctx = klog.NewContext(ctx, k.logger)
	k.pods.add(pod)
	c := &pod.Spec.Containers[0]
	if err := k.m.Allocate(ctx, pod, c, lifecycle.AddOperation); err != nil {
		return nil, fmt.Errorf("Allocate: %w", err)
	}
	opts, err := k.m.GetDeviceRunContainerOptions(ctx, pod, c)
	if err != nil {
		return nil, fmt.Errorf("GetDeviceRunContainerOptions: %w", err)
	}
	if opts == nil {
		return nil, errors.New("GetDeviceRunContainerOptions returned no options")
	}
	ids := sets.List(sets.KeySet(k.m.GetDevices(string(pod.UID), c.Name)[resGPU]))
	return &admitted{pod: pod, devices: ids, opts: opts}, nil
}

// release ends the pod: it leaves the active list, so the device manager
// frees its devices at its next allocation.
func (k *kubelet) release(a *admitted) { k.pods.remove(a.pod.UID) }

// ---------------------------------------------------------------- misc

// kubeletLogsOnFailure prints the kubelet's logs from now on if tb fails.
func kubeletLogsOnFailure(tb testing.TB) int {
	mark := klogRec.mark()
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("kubelet (device manager) log:\n%s", klogRec.dump(mark, 400))
		}
	})
	return mark
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func isSocket(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().Type() == fs.ModeSocket
}

// staleSocket leaves a socket file at p that nobody listens on, as a
// crashed process leaves its socket behind.
func staleSocket(tb testing.TB, p string) {
	tb.Helper()
	_ = os.Remove(p)
	l, err := net.Listen("unix", p)
	if err != nil {
		tb.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
}

// percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1)*p + 0.5)
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
