package scenarios

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/gpulet/gpulet/internal/inventory"
)

// S is one running scenario: the test, the cluster and the helpers the
// scenarios share. Every wait is bounded (Eventually, Consistently).
type S struct {
	*testing.T
	*Env
	ctx context.Context
	inv []inventory.GPU // the GPU node's inventory, read once
}

// newS: the scenario's context ends after its last Cleanup function (not
// t.Context(), which ends before them: cleanups use the cluster too).
func newS(t *testing.T, e *Env) *S {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // registered first, so run last
	return &S{T: t, Env: e, ctx: ctx}
}

// Poll is how often Eventually and Consistently look (as the bash helpers did).
const Poll = 200 * time.Millisecond

// errAbort marks a condition that can no longer come true (the gpulet
// container restarted): Eventually fails at once.
var errAbort = errors.New("giving up")

// Abort wraps err so that Eventually stops waiting.
func Abort(err error) error { return fmt.Errorf("%w: %w", errAbort, err) }

// Eventually polls cond until it returns nil and fails the scenario when it
// has not within d, with cond's last error.
func (s *S) Eventually(d time.Duration, what string, cond func() error) {
	s.Helper()
	if err := s.Within(d, cond); err != nil {
		s.Fatalf("%s: %v", what, err)
	}
}

// Within is Eventually that returns the failure instead of failing.
func (s *S) Within(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if errors.Is(err, errAbort) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v; last check said: %w", d, err)
		}
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-time.After(Poll):
		}
	}
}

// Consistently checks cond every Poll for d and fails the scenario the first
// time it does not hold. For "this stays so" checks, which on a real cluster
// need a window of real time.
func (s *S) Consistently(d time.Duration, what string, cond func() error) {
	s.Helper()
	deadline := time.Now().Add(d)
	for {
		if err := cond(); err != nil {
			s.Fatalf("%s: %v", what, err)
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(Poll)
	}
}

// Timing records a measurement in the run's timings.tsv (the table run.sh
// prints, and docs/benchmarks.md).
func (s *S) Timing(name string, d time.Duration) {
	s.Helper()
	secs := fmt.Sprintf("%.3f", d.Seconds())
	f, err := os.OpenFile(s.Logs+"/timings.tsv", os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		s.Fatalf("timings.tsv: %v", err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s\t%s\n", name, secs); err != nil {
		s.Fatalf("timings.tsv: %v", err)
	}
	s.Logf("timing: %s = %s s", name, secs)
}

func atoi64(t testing.TB, v string) int64 {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("%q is not a number: %v", v, err)
	}
	return n
}

// ---------------------------------------------------------------------------
// Commands on the nodes

// OnNode runs argv on the GPU node (inside the cluster's namespaces, through
// run.sh's $W/nsrun) and returns its standard output.
func (s *S) OnNode(argv ...string) string { s.Helper(); return s.run(s.W+"/nsrun", argv) }

// OnNode2 runs argv on the CPU-only node ($W/nsrun2).
func (s *S) OnNode2(argv ...string) string { s.Helper(); return s.run(s.W+"/nsrun2", argv) }

// GpuletOnNode runs the gpulet CLI on the GPU node (gpulet sim fault, ...).
func (s *S) GpuletOnNode(args ...string) string {
	s.Helper()
	return s.OnNode(append([]string{s.Gpulet}, args...)...)
}

func (s *S) run(nsrun string, argv []string) string {
	s.Helper()
	ctx, cancel := cmdCtx()
	defer cancel()
	cmd := exec.CommandContext(ctx, nsrun, argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		s.Fatalf("%s %s: %v\n%s%s", nsrun, strings.Join(argv, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// cmdCtx bounds a command.
func cmdCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 3*time.Minute)
}

// ListNode is `gpulet list <args> -o json` on the GPU node: what gpulet
// finds there with those settings.
func (s *S) ListNode(args ...string) *inventory.Node {
	s.Helper()
	out := s.GpuletOnNode(append(append([]string{"list"}, args...), "-o", "json")...)
	var l struct {
		Node *inventory.Node `json:"node"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil || l.Node == nil {
		s.Fatalf("gpulet list %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
	return l.Node
}

// SimArgs are the gpulet flags of the DaemonSet's simulated node.
func (s *S) SimArgs() []string {
	return []string{"--backend=sim", "--sim-profile=" + s.SimProfile, "--sim-root=" + s.SimRoot}
}

// Inventory is the GPU node's GPUs as `gpulet list -o json` reports them
// there (index, UUID, minor: the N of /dev/nvidiaN), read once.
func (s *S) Inventory() []inventory.GPU {
	s.Helper()
	if s.inv == nil {
		s.inv = s.ListNode(s.SimArgs()...).GPUs
	}
	return s.inv
}

// GPU is the inventory's GPU of that UUID, or ok false.
func (s *S) GPU(uuid string) (inventory.GPU, bool) {
	for _, g := range s.Inventory() {
		if g.UUID == uuid {
			return g, true
		}
	}
	return inventory.GPU{}, false
}

// GPUIndex is the inventory's GPU of that index.
func (s *S) GPUIndex(i int) inventory.GPU {
	s.Helper()
	for _, g := range s.Inventory() {
		if g.Index == i {
			return g
		}
	}
	s.Fatalf("the node has no GPU %d", i)
	return inventory.GPU{}
}

// ---------------------------------------------------------------------------
// Nodes and gpulet

// NodeGPUs is the GPU node's nvidia.com/gpu "capacity/allocatable" as the
// API server reports it (what `kubectl describe node` prints under Capacity
// and Allocatable), e.g. "8/7"; an absent value is empty.
func (s *S) NodeGPUs(node string) (string, error) {
	return s.NodeResource(node, "nvidia.com/gpu")
}

// NodeGPUsAre is a condition: the GPU node's capacity/allocatable is want.
func (s *S) NodeGPUsAre(want string) func() error { return s.nodeGPUsAre(s.Node, want) }

// GpuletPodOn is the DaemonSet's pod on node (nil, nil when there is none).
func (s *S) GpuletPodOn(node string) (*corev1.Pod, error) {
	ds, err := s.Client.AppsV1().DaemonSets(s.Namespace).Get(s.ctx, s.DaemonSet, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		return nil, err
	}
	pods, err := s.Client.CoreV1().Pods(s.Namespace).List(s.ctx, metav1.ListOptions{
		LabelSelector: sel.String(), FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			return &pods.Items[i], nil
		}
	}
	return nil, nil
}

// GpuletStable is a condition that aborts the wait when the gpulet container
// on node has restarted (waiting on is pointless; the diagnostics show its log).
func (s *S) GpuletStable(node string) error {
	p, err := s.GpuletPodOn(node)
	if err != nil || p == nil || len(p.Status.ContainerStatuses) == 0 {
		return nil
	}
	c := p.Status.ContainerStatuses[0]
	if c.RestartCount == 0 {
		return nil
	}
	why := ""
	if c.LastTerminationState.Terminated != nil {
		why = fmt.Sprintf(" (last: %s, exit code %d)", c.LastTerminationState.Terminated.Reason, c.LastTerminationState.Terminated.ExitCode)
	}
	return Abort(fmt.Errorf("gpulet pod %s on %s restarted %d time(s)%s", p.Name, node, c.RestartCount, why))
}

// PodReady says whether the pod's Ready condition is True.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// GpuletLoggedAt is when the GPU node's gpulet pod first logged msg (for
// device, when not empty) at or after since; ok false when it has no such
// line. gpulet logs JSON lines with "time", "msg" and "device".
func (s *S) GpuletLoggedAt(since time.Time, msg, device string) (time.Time, bool) {
	var logs string
	err := s.Within(30*time.Second, func() error {
		p, err := s.GpuletPodOn(s.Node)
		if err != nil || p == nil {
			return fmt.Errorf("no gpulet pod: %v", err)
		}
		logs, err = s.PodLog(s.Namespace, p.Name)
		return err
	})
	if err != nil {
		return time.Time{}, false
	}
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Time   time.Time `json:"time"`
			Msg    string    `json:"msg"`
			Device string    `json:"device"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Msg != msg || (device != "" && l.Device != device) {
			continue
		}
		if !l.Time.Before(since.Truncate(time.Millisecond)) {
			return l.Time, true
		}
	}
	return time.Time{}, false
}

// GpuletTiming records how long after since gpulet logged msg (for device).
func (s *S) GpuletTiming(name string, since time.Time, msg, device string) {
	s.Helper()
	if at, ok := s.GpuletLoggedAt(since, msg, device); ok {
		s.Timing(name, at.Sub(since))
		return
	}
	s.Logf("WARNING: gpulet's log has no %q line after the event; no timing for: %s", msg, name)
}

// ---------------------------------------------------------------------------
// Workloads

// Manifest decodes the first object of type T in a file of
// test/e2e/manifests (or of deploy/ with a "deploy/" prefix; documents
// separated by "---"), after replacing each old with new
// (strings.NewReplacer pairs: "__NAME__", "gpu4-a", ...).
func Manifest[T runtime.Object](s *S, file string, oldnew ...string) T {
	s.Helper()
	path := s.Manifests + "/" + file
	if rest, ok := strings.CutPrefix(file, "deploy/"); ok {
		path = s.DeployDir + "/" + rest
	}
	return decodeFile[T](s, path, oldnew...)
}

func decodeFile[T runtime.Object](s *S, path string, oldnew ...string) T {
	s.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		s.Fatal(err)
	}
	text := strings.NewReplacer(oldnew...).Replace(string(b))
	for doc := range strings.SplitSeq(text, "\n---\n") {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if t, ok := obj.(T); err == nil && ok {
			return t
		}
	}
	s.Fatalf("%s holds no %T", path, *new(T))
	return *new(T)
}

// CreateJob creates job in the default namespace and deletes it (and its
// pods) when the scenario ends.
func (s *S) CreateJob(job *batchv1.Job) *batchv1.Job {
	s.Helper()
	if job.Namespace == "" {
		job.Namespace = "default"
	}
	j, err := s.Client.BatchV1().Jobs(job.Namespace).Create(s.ctx, job, metav1.CreateOptions{})
	if err != nil {
		s.Fatalf("create job %s: %v", job.Name, err)
	}
	s.Cleanup(func() { s.DeleteJob(j.Namespace, j.Name) })
	return j
}

// HoldJob creates the hold Job (manifests/gpu-hold-job.yaml): a pod that
// takes gpus GPUs, prints them and holds them until Release.
func (s *S) HoldJob(name string, gpus int) *batchv1.Job {
	s.Helper()
	return s.CreateJob(Manifest[*batchv1.Job](s, "gpu-hold-job.yaml", "__NAME__", name, "__GPUS__", strconv.Itoa(gpus)))
}

// DeleteJob deletes a Job with its pods and waits (bounded) until both are gone.
func (s *S) DeleteJob(ns, name string) {
	fg := metav1.DeletePropagationForeground
	jobs := s.Client.BatchV1().Jobs(ns)
	s.deleteAndWait("job "+name, func(ctx context.Context) error {
		return jobs.Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &fg})
	}, func(ctx context.Context) error { _, err := jobs.Get(ctx, name, metav1.GetOptions{}); return err })
}

// deleteAndWait deletes an object (del) and waits, 90 s at most, until get
// says it is not found. A failure is reported without ending the scenario
// (this runs in cleanups).
func (s *S) deleteAndWait(what string, del, get func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := del(ctx); apierrors.IsNotFound(err) {
		return
	} else if err != nil {
		s.Errorf("delete %s: %v", what, err)
		return
	}
	for ctx.Err() == nil {
		if apierrors.IsNotFound(get(ctx)) {
			return
		}
		time.Sleep(Poll)
	}
	s.Errorf("%s was not deleted within 90 s", what)
}

// JobPod is the Job's (newest) pod, or nil.
func (s *S) JobPod(ns, job string) (*corev1.Pod, error) {
	pods, err := s.Client.CoreV1().Pods(ns).List(s.ctx, metav1.ListOptions{LabelSelector: "job-name=" + job})
	if err != nil || len(pods.Items) == 0 {
		return nil, err
	}
	slices.SortFunc(pods.Items, func(a, b corev1.Pod) int {
		return b.CreationTimestamp.Compare(a.CreationTimestamp.Time)
	})
	return &pods.Items[0], nil
}

// MustJobPod is JobPod that fails the scenario when there is no pod.
func (s *S) MustJobPod(job string) *corev1.Pod {
	s.Helper()
	p, err := s.JobPod("default", job)
	if err != nil || p == nil {
		s.Fatalf("job %s has no pod: %v", job, err)
	}
	return p
}

// PodLog is the log of the pod's (first) container.
func (s *S) PodLog(ns, pod string) (string, error) {
	b, err := s.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{}).Do(s.ctx).Raw()
	return string(b), err
}

// HoldRunning is a condition: the hold Job's pod is Running and has printed
// its GPUs ("holding").
func (s *S) HoldRunning(job string) func() error {
	return func() error {
		if err := s.GpuletStable(s.Node); err != nil {
			return err
		}
		p, err := s.JobPod("default", job)
		if err != nil {
			return err
		}
		if p == nil {
			return fmt.Errorf("job %s has no pod yet", job)
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("pod %s is %s, want Running (%s)", p.Name, p.Status.Phase, podWhy(p))
		}
		l, err := s.PodLog("default", p.Name)
		if err != nil {
			return err
		}
		if !regexp.MustCompile(`(?m)^holding$`).MatchString(l) {
			return fmt.Errorf("pod %s has not printed 'holding' yet", p.Name)
		}
		return nil
	}
}

// podWhy says why a pod is not running: its scheduling condition or its
// container's waiting reason.
func podWhy(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue {
			return c.Reason + ": " + c.Message
		}
	}
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Waiting != nil {
			return c.State.Waiting.Reason + ": " + c.State.Waiting.Message
		}
	}
	return "no reason given"
}

// JobComplete is a condition: the Job's COMPLETIONS is 1/1 (one pod succeeded).
func (s *S) JobComplete(job string) func() error {
	return func() error {
		j, err := s.Client.BatchV1().Jobs("default").Get(s.ctx, job, metav1.GetOptions{})
		if err != nil {
			return err
		}
		want := int32(1)
		if j.Spec.Completions != nil {
			want = *j.Spec.Completions
		}
		if j.Status.Succeeded != 1 || want != 1 {
			return fmt.Errorf("job %s COMPLETIONS=%d/%d, want 1/1 (failed %d)", job, j.Status.Succeeded, want, j.Status.Failed)
		}
		return nil
	}
}

// Release ends a hold pod: it exits 0 once /tmp/release exists.
func (s *S) Release(pod *corev1.Pod) {
	s.Helper()
	s.Exec("default", pod.Name, "touch", "/tmp/release")
}

// PodPhaseIs is a condition: the pod (re-read) is in phase want.
func (s *S) PodPhaseIs(ns, name string, want corev1.PodPhase) func() error {
	return func() error {
		p, err := s.Client.CoreV1().Pods(ns).Get(s.ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != want {
			return fmt.Errorf("pod %s is %s, want %s", name, p.Status.Phase, want)
		}
		return nil
	}
}

var (
	visibleRE = regexp.MustCompile(`(?m)^NVIDIA_VISIBLE_DEVICES=(.*)$`)
	deviceRE  = regexp.MustCompile(`(?m)^device: (.).* /dev/nvidia([0-9]+)$`)
)

// VisibleGPUs is the sorted list of UUIDs in NVIDIA_VISIBLE_DEVICES as the
// workload printed it (its first such line).
func VisibleGPUs(log string) []string {
	m := visibleRE.FindStringSubmatch(log)
	if m == nil {
		return nil
	}
	var out []string
	for u := range strings.SplitSeq(m[1], ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out
}

// PodGPUs checks that the workload pod's log names exactly want distinct
// GPUs of the node in NVIDIA_VISIBLE_DEVICES and, for each, its
// /dev/nvidiaN (a character device), and no other /dev/nvidiaN. It returns
// the UUIDs, sorted.
func (s *S) PodGPUs(pod *corev1.Pod, want int) []string {
	s.Helper()
	log, err := s.PodLog(pod.Namespace, pod.Name)
	if err != nil {
		s.Fatalf("log of %s: %v", pod.Name, err)
	}
	uuids := VisibleGPUs(log)
	if n := len(slices.Compact(slices.Clone(uuids))); n != want || n != len(uuids) {
		s.Fatalf("pod %s: NVIDIA_VISIBLE_DEVICES names %d GPU(s) (%d distinct), want %d distinct; log:\n%s", pod.Name, len(uuids), n, want, log)
	}
	var wantDev []int
	for _, u := range uuids {
		g, ok := s.GPU(u)
		if !ok {
			s.Fatalf("pod %s: %s is not a GPU of the node (inventory: %v)", pod.Name, u, s.Inventory())
		}
		wantDev = append(wantDev, g.Minor)
	}
	var gotDev []int
	for _, m := range deviceRE.FindAllStringSubmatch(log, -1) {
		if m[1] != "c" {
			s.Fatalf("pod %s: /dev/nvidia%s is not a character device; log:\n%s", pod.Name, m[2], log)
		}
		n, _ := strconv.Atoi(m[2])
		gotDev = append(gotDev, n)
	}
	slices.Sort(wantDev)
	slices.Sort(gotDev)
	if !slices.Equal(gotDev, wantDev) {
		s.Fatalf("pod %s: GPU device nodes are /dev/nvidia%v, want %v for %v; log:\n%s", pod.Name, gotDev, wantDev, uuids, log)
	}
	return uuids
}

// Exec runs argv in the pod's (first) container and returns its output.
// Through kubectl ($W/kubectl): client-go's remotecommand would add its
// stream libraries to the module for this one use.
func (s *S) Exec(ns, pod string, argv ...string) string {
	s.Helper()
	return s.Kubectl(append([]string{"-n", ns, "exec", pod, "--"}, argv...)...)
}

// Kubectl runs the cluster's kubectl (for what has no typed client call).
func (s *S) Kubectl(args ...string) string {
	s.Helper()
	ctx, cancel := cmdCtx()
	defer cancel()
	cmd := exec.CommandContext(ctx, s.W+"/kubectl", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		s.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// KubectlErr is Kubectl that returns the failure (for reads a component may
// refuse for a moment).
func (s *S) KubectlErr(args ...string) (string, error) {
	ctx, cancel := cmdCtx()
	defer cancel()
	cmd := exec.CommandContext(ctx, s.W+"/kubectl", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// ClusterOp runs an operation of lib/cluster-op.sh (restart-kubelet): what
// touches the cluster's processes stays with the bash that started them.
func (s *S) ClusterOp(op string) {
	s.Helper()
	ctx, cancel := cmdCtx()
	defer cancel()
	cmd := exec.CommandContext(ctx, "../lib/cluster-op.sh", op)
	if out, err := cmd.CombinedOutput(); err != nil {
		s.Fatalf("cluster-op.sh %s: %v\n%s", op, err, out)
	}
}

// Pod re-reads a pod; it fails the scenario when it cannot.
func (s *S) Pod(ns, name string) *corev1.Pod {
	s.Helper()
	p, err := s.Client.CoreV1().Pods(ns).Get(s.ctx, name, metav1.GetOptions{})
	if err != nil {
		s.Fatalf("pod %s/%s: %v", ns, name, err)
	}
	return p
}

// NodeReady says whether the node's Ready condition is True, and when its
// kubelet last posted it.
func (s *S) NodeReady(node string) (bool, time.Time, error) {
	n, err := s.Client.CoreV1().Nodes().Get(s.ctx, node, metav1.GetOptions{})
	if err != nil {
		return false, time.Time{}, err
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue, c.LastHeartbeatTime.Time, nil
		}
	}
	return false, time.Time{}, nil
}

// KubeletRegistrations is how many times the kubelet's log (kubelet.log or
// kubelet-node2.log of the run) says a device plugin registered
// nvidia.com/gpu.
func (s *S) KubeletRegistrations(logName string) int {
	s.Helper()
	b, err := os.ReadFile(s.Logs + "/" + logName)
	if err != nil {
		s.Fatal(err)
	}
	re := regexp.MustCompile(`registration request from device plugin with resource.*nvidia\.com/gpu|Registered client.*nvidia\.com/gpu`)
	return len(re.FindAllIndex(b, -1))
}

// ContainerID is the pod's first container's ID ("" before it starts).
func ContainerID(p *corev1.Pod) string {
	if len(p.Status.ContainerStatuses) == 0 {
		return ""
	}
	return p.Status.ContainerStatuses[0].ContainerID
}

// NewGpuletReady is a condition: the GPU node's gpulet pod is another than
// old and the DaemonSet is Ready (DaemonSetReady).
func (s *S) NewGpuletReady(old string) func() error { return s.newGpulet(old, s.DaemonSetReady) }

// NewGpuletRolled is a condition: the GPU node's gpulet pod is another than
// old and the DaemonSet has rolled out (DaemonSetRolled).
func (s *S) NewGpuletRolled(old string) func() error { return s.newGpulet(old, s.DaemonSetRolled) }

func (s *S) newGpulet(old string, then func() error) func() error {
	return func() error {
		p, err := s.GpuletPodOn(s.Node)
		if err != nil {
			return err
		}
		if p == nil || p.Name == old {
			return fmt.Errorf("no new gpulet pod on %s yet", s.Node)
		}
		return then()
	}
}

// MustGpuletPod is the GPU node's gpulet pod.
func (s *S) MustGpuletPod() *corev1.Pod {
	s.Helper()
	p, err := s.GpuletPodOn(s.Node)
	if err != nil || p == nil {
		s.Fatalf("no gpulet pod on %s: %v", s.Node, err)
	}
	return p
}

// CreatePod creates pod (default namespace unless set) and deletes it when
// the scenario ends.
func (s *S) CreatePod(pod *corev1.Pod) *corev1.Pod {
	s.Helper()
	if pod.Namespace == "" {
		pod.Namespace = "default"
	}
	p, err := s.Client.CoreV1().Pods(pod.Namespace).Create(s.ctx, pod, metav1.CreateOptions{})
	if err != nil {
		s.Fatalf("create pod %s: %v", pod.Name, err)
	}
	s.Cleanup(func() { s.DeletePod(p.Namespace, p.Name) })
	return p
}

// DeletePod deletes a pod (1 s grace) and waits (bounded) until it is gone.
func (s *S) DeletePod(ns, name string) {
	grace := int64(1)
	pods := s.Client.CoreV1().Pods(ns)
	s.deleteAndWait("pod "+name, func(ctx context.Context) error {
		return pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	}, func(ctx context.Context) error { _, err := pods.Get(ctx, name, metav1.GetOptions{}); return err })
}
