package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
)

// quickstartDir holds NVIDIA's quickstart claims, unchanged (its README
// says from where).
const quickstartDir = "../testdata/quickstart"

// quickstartScript replaces each container's args (README: the documented
// rewrite): it prints what the container was given, then waits as
// NVIDIA's examples do.
const quickstartScript = `echo "CUDA_MPS_PIPE_DIRECTORY=${CUDA_MPS_PIPE_DIRECTORY:-}"
for d in /dev/nvidia* /dev/nvidia-caps/*; do [ -c "$d" ] && echo "device: $(ls -l "$d")"; done
[ -d /tmp/nvidia-mps ] && echo "mps pipe: $(ls /tmp/nvidia-mps | tr '\n' ' ')"
echo ready
trap 'exit 0' TERM; sleep 9999 & wait`

// rewriteContainers is the one change made to NVIDIA's examples: the image
// (not pullable offline) and what runs in it.
func rewriteContainers(spec *corev1.PodSpec) {
	for i := range spec.Containers {
		c := &spec.Containers[i]
		c.Image = "docker.io/library/busybox:e2e"
		c.ImagePullPolicy = corev1.PullIfNotPresent
		c.Command = []string{"sh", "-c"}
		c.Args = []string{quickstartScript}
	}
}

// quickstart creates the objects of one of NVIDIA's quickstart files (its
// Pods and Deployments rewritten by rewriteContainers), and returns its
// namespace, deleted (with everything in it) by the returned func.
func (s *S) quickstart(file string) (string, func()) {
	s.Helper()
	b, err := os.ReadFile(filepath.Join(quickstartDir, file))
	if err != nil {
		s.Fatal(err)
	}
	ctx := context.Background()
	ns := ""
	for doc := range strings.SplitSeq(string(b), "\n---\n") {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) == "" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			s.Fatalf("%s: %v", file, err)
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			ns = o.Name
			_, err = s.Client.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		case *resourceapi.ResourceClaimTemplate:
			_, err = s.Client.ResourceV1().ResourceClaimTemplates(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *resourceapi.ResourceClaim:
			_, err = s.Client.ResourceV1().ResourceClaims(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *corev1.Pod:
			rewriteContainers(&o.Spec)
			_, err = s.Client.CoreV1().Pods(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *appsv1.Deployment:
			rewriteContainers(&o.Spec.Template.Spec)
			_, err = s.Client.AppsV1().Deployments(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			s.Fatalf("%s: unexpected %T", file, obj)
		}
		if err != nil {
			s.Fatalf("%s: create %s: %v", file, obj.GetObjectKind().GroupVersionKind().Kind, err)
		}
		if ns == "" {
			s.Fatalf("%s: the first object is not its Namespace", file)
		}
	}
	return ns, func() { s.DeleteNamespace(ns) }
}

// quickstartPods waits until the namespace has n pods: running of them
// Running, with every container having printed "ready", and the others
// Pending, unschedulable. It returns the running ones by name.
func (s *S) quickstartPods(ns string, n, running int) map[string]*corev1.Pod {
	s.Helper()
	var out map[string]*corev1.Pod
	s.Eventually(120*time.Second, fmt.Sprintf("%d of %d pod(s) of %s running, the others unschedulable", running, n, ns), func() error {
		if err := s.GpuletStable(s.Node); err != nil {
			return err
		}
		pods, err := s.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(pods.Items) != n {
			return fmt.Errorf("%d pods, want %d", len(pods.Items), n)
		}
		out = map[string]*corev1.Pod{}
		var pending []string
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.Status.Phase != corev1.PodRunning {
				if err := Unschedulable(p, ""); err != nil {
					return err
				}
				pending = append(pending, p.Name+": "+podWhy(p))
				continue
			}
			for _, c := range p.Spec.Containers {
				if l, err := s.containerLog(p, c.Name); err != nil || !strings.Contains(l, "\nready\n") {
					return fmt.Errorf("container %s/%s has not printed ready yet (%v)", p.Name, c.Name, err)
				}
			}
			out[p.Name] = p
		}
		if len(out) != running {
			return fmt.Errorf("%d pods running, want %d (pending: %v)", len(out), running, pending)
		}
		if len(pending) > 0 {
			s.Logf("%s: %d pod(s) unschedulable as expected: %s", ns, len(pending), pending[0])
		}
		return nil
	})
	return out
}

func (s *S) containerLog(p *corev1.Pod, container string) (string, error) {
	b, err := s.Client.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: container}).Do(context.Background()).Raw()
	return string(b), err
}

var (
	minorRE = regexp.MustCompile(`(?m)^device: c.* /dev/nvidia([0-9]+)$`)
	capRE   = regexp.MustCompile(`(?m)^device: c.* /dev/nvidia-caps/nvidia-cap[0-9]+$`)
)

// seen is what one container printed.
type seen struct {
	minors []string // N of each /dev/nvidiaN, sorted
	caps   int      // /dev/nvidia-caps nodes
	mpsDir string   // CUDA_MPS_PIPE_DIRECTORY
	pipe   string   // files in /tmp/nvidia-mps
}

func (s *S) containerSaw(p *corev1.Pod, container string) seen {
	s.Helper()
	l, err := s.containerLog(p, container)
	if err != nil {
		s.Fatalf("log of %s/%s: %v", p.Name, container, err)
	}
	var v seen
	for _, m := range minorRE.FindAllStringSubmatch(l, -1) {
		v.minors = append(v.minors, m[1])
	}
	slices.Sort(v.minors)
	v.caps = len(capRE.FindAllString(l, -1))
	if m := regexp.MustCompile(`(?m)^CUDA_MPS_PIPE_DIRECTORY=(.*)$`).FindStringSubmatch(l); m != nil {
		v.mpsDir = m[1]
	}
	if m := regexp.MustCompile(`(?m)^mps pipe: (.*)$`).FindStringSubmatch(l); m != nil {
		v.pipe = strings.TrimSpace(m[1])
	}
	return v
}

// containerDevices checks that the container sees exactly the /dev/nvidiaN
// of the devices its claim reference (and request) was allocated, and two
// /dev/nvidia-caps nodes per MIG device, and returns those devices.
func (s *S) containerDevices(p *corev1.Pod, container string) ([]string, seen) {
	s.Helper()
	var claim corev1.ResourceClaim
	for _, c := range p.Spec.Containers {
		if c.Name == container && len(c.Resources.Claims) == 1 {
			claim = c.Resources.Claims[0]
		}
	}
	if claim.Name == "" {
		s.Fatalf("%s/%s uses not exactly one claim", p.Name, container)
	}
	rc, err := s.ClaimOf(p, claim.Name)
	if err != nil {
		s.Fatal(err)
	}
	devs := AllocatedDevices(rc, claim.Request)
	var want []string
	mig := 0
	for _, d := range devs {
		m, err := DeviceMinor(d)
		if err != nil {
			s.Fatal(err)
		}
		want = append(want, fmt.Sprint(m))
		if strings.Contains(d, "-mig-") {
			mig++
		}
	}
	slices.Sort(want)
	want = slices.Compact(want)
	v := s.containerSaw(p, container)
	if len(devs) == 0 || !slices.Equal(v.minors, want) || v.caps != 2*mig {
		s.Fatalf("%s/%s: claim %s (request %q) holds %v; the container sees /dev/nvidia%v and %d caps nodes, want /dev/nvidia%v and %d",
			p.Name, container, rc.Name, claim.Request, devs, v.minors, v.caps, want, 2*mig)
	}
	return devs, v
}

// simPolicy is the simulator's record of the compute policy gpulet set, by
// GPU UUID (sim.GPUPolicy).
type simPolicy struct {
	ComputeMode string `json:"computeMode"`
	TimeSlice   *int   `json:"timeSlice"`
}

func (s *S) simPolicies() map[string]simPolicy {
	s.Helper()
	out := map[string]simPolicy{}
	raw := s.OnNode("sh", "-c", "cat "+s.SimRoot+"/compute-policy.json 2>/dev/null || echo '{}'")
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		s.Fatalf("compute-policy.json: %v: %s", err, raw)
	}
	return out
}

func (s *S) deviceUUID(name string) string {
	s.Helper()
	d, err := s.SliceDevice(name)
	if err != nil {
		s.Fatal(err)
	}
	u := d.Attributes["uuid"].StringValue
	if u == nil {
		s.Fatalf("device %s has no uuid attribute", name)
	}
	return *u
}

// mpsShmScript prints, for each process on the node whose environment has
// NODE_NAME=$1 and whose executable is a gpulet (the image's entry or the
// build it execs), its PID, the device and inode of its /dev/shm, and those
// of the host's MPS shm folder $2.
const mpsShmScript = `want=$(stat -c %d:%i "$2") || exit 1
for p in /proc/[0-9]*; do
  { tr '\0' '\n' < $p/environ; } 2>/dev/null | grep -qx "NODE_NAME=$1" || continue
  case $(readlink $p/exe 2>/dev/null) in *gpulet*) ;; *) continue ;; esac
  echo "${p#/proc/} $(stat -L -c %d:%i $p/root/dev/shm 2>/dev/null || echo none) $want"
done`

// GpuletShmIsMPSShm is a condition: gpulet's /dev/shm on the GPU node is
// the host's <plugin folder>/mps/shm, the folder MPS claims' containers
// get as /dev/shm, as the shipped DRA patch mounts it. On a real node an
// MPS claim fails Prepare without it; the simulator's stand-in daemon does
// not check, so this checks the mount itself.
func (s *S) GpuletShmIsMPSShm() error {
	s.Helper()
	out := s.OnNode("sh", "-c", mpsShmScript, "sh", s.Node, "/var/lib/kubelet/plugins/gpu.nvidia.com/mps/shm")
	lines := strings.Fields(strings.TrimSpace(out))
	if len(lines) == 0 || len(lines)%3 != 0 {
		return fmt.Errorf("no gpulet process found on %s (%q)", s.Node, out)
	}
	for i := 0; i < len(lines); i += 3 {
		if lines[i+1] != lines[i+2] {
			return fmt.Errorf("gpulet (PID %s): /dev/shm is %s, the host's MPS shm folder %s", lines[i], lines[i+1], lines[i+2])
		}
	}
	return nil
}

// scenarioDRAQuickstart: NVIDIA's quickstart claims (test/e2e/testdata/
// quickstart, unchanged but for the container images and commands) on
// gpulet's DRA driver. gpu-test1: two pods, two GPUs; gpu-test2: two
// containers, one GPU; gpu-test3: two pods, one shared ResourceClaim;
// The DaemonSet patch gives gpulet the host's MPS shm folder as /dev/shm.
// gpu-test5: TimeSlicing Long (the simulator's compute policy records
// interval 3) and MPS (a daemon for the claim with 50 % and 10Gi; its
// containers get CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps and the daemon's
// pipe); gpu-test-mps likewise; gpu-test6 stays unschedulable (its selector
// wants an A100). All deleted: the policy is back to default and the
// daemons quit. Then on an A100 MIG profile, gpu-test4: two of its four
// replicas run, each container with a MIG device of the profile it asked
// for; the other two stay unschedulable.
func scenarioDRAQuickstart(s *S) {
	s.Cleanup(s.DRARestore)
	s.DRAOn()
	s.Eventually(60*time.Second, "gpulet's /dev/shm is the host's MPS shm folder", s.GpuletShmIsMPSShm)
	s.Logf("gpulet's /dev/shm is the host's %s/mps/shm (the DRA patch)", "/var/lib/kubelet/plugins/gpu.nvidia.com")

	ns1, del1 := s.quickstart("gpu-test1.yaml")
	s.Cleanup(del1)
	ns2, del2 := s.quickstart("gpu-test2.yaml")
	s.Cleanup(del2)
	ns3, del3 := s.quickstart("gpu-test3.yaml")
	s.Cleanup(del3)
	ns5, del5 := s.quickstart("gpu-test5.yaml")
	s.Cleanup(del5)
	nsm, delm := s.quickstart("gpu-test-mps.yaml")
	s.Cleanup(delm)
	ns6, del6 := s.quickstart("gpu-test6.yaml")
	s.Cleanup(del6)

	// gpu-test1: two pods, each its own GPU.
	p1 := s.quickstartPods(ns1, 2, 2)
	a, _ := s.containerDevices(p1["pod1"], "ctr")
	b, _ := s.containerDevices(p1["pod2"], "ctr")
	if len(a) != 1 || len(b) != 1 || a[0] == b[0] {
		s.Fatalf("gpu-test1: pod1 got %v, pod2 %v; want one GPU each, not the same", a, b)
	}
	s.Logf("gpu-test1: pod1 %v, pod2 %v", a, b)

	// gpu-test2: one pod, two containers, one GPU.
	p2 := s.quickstartPods(ns2, 1, 1)["pod"]
	c0, _ := s.containerDevices(p2, "ctr0")
	c1, _ := s.containerDevices(p2, "ctr1")
	if len(c0) != 1 || !slices.Equal(c0, c1) {
		s.Fatalf("gpu-test2: ctr0 %v, ctr1 %v; want the same one GPU", c0, c1)
	}
	s.Logf("gpu-test2: both containers on %v", c0)

	// gpu-test3: two pods, one ResourceClaim, one GPU.
	p3 := s.quickstartPods(ns3, 2, 2)
	d1, _ := s.containerDevices(p3["pod1"], "ctr")
	d2, _ := s.containerDevices(p3["pod2"], "ctr")
	if len(d1) != 1 || !slices.Equal(d1, d2) {
		s.Fatalf("gpu-test3: pod1 %v, pod2 %v; want the same one GPU", d1, d2)
	}
	s.Logf("gpu-test3: both pods on %v", d1)

	// gpu-test5: TimeSlicing Long on one GPU, MPS on another.
	p5 := s.quickstartPods(ns5, 1, 1)["pod0"]
	ts0, v := s.containerDevices(p5, "ts-ctr0")
	ts1, v1 := s.containerDevices(p5, "ts-ctr1")
	if len(ts0) != 1 || !slices.Equal(ts0, ts1) || v.mpsDir != "" || v1.mpsDir != "" {
		s.Fatalf("gpu-test5: time-sliced containers on %v and %v (MPS pipe %q %q); want one GPU, no MPS", ts0, ts1, v.mpsDir, v1.mpsDir)
	}
	mp0, m0 := s.containerDevices(p5, "mps-ctr0")
	mp1, m1 := s.containerDevices(p5, "mps-ctr1")
	if len(mp0) != 1 || !slices.Equal(mp0, mp1) || mp0[0] == ts0[0] {
		s.Fatalf("gpu-test5: MPS containers on %v and %v, time-sliced on %v", mp0, mp1, ts0)
	}
	for _, m := range []seen{m0, m1} {
		// The simulated daemon's control file in its pipe folder: the mount reaches the daemon.
		if m.mpsDir != "/tmp/nvidia-mps" || !strings.Contains(m.pipe, "control") {
			s.Fatalf("gpu-test5: an MPS container has CUDA_MPS_PIPE_DIRECTORY=%q and /tmp/nvidia-mps holding %q", m.mpsDir, m.pipe)
		}
	}
	tsUUID, mpsUUID := s.deviceUUID(ts0[0]), s.deviceUUID(mp0[0])
	pol := s.simPolicies()
	if p := pol[tsUUID]; p.ComputeMode != "DEFAULT" || p.TimeSlice == nil || *p.TimeSlice != 3 {
		s.Fatalf("gpu-test5: %s (%s) has compute policy %+v, want DEFAULT and time-slice 3 (Long)", ts0[0], tsUUID, p)
	}
	if p := pol[mpsUUID]; p.ComputeMode != "EXCLUSIVE_PROCESS" {
		s.Fatalf("gpu-test5: %s (%s) has compute policy %+v, want EXCLUSIVE_PROCESS (MPS)", mp0[0], mpsUUID, p)
	}
	mpsLog := s.OnNode("cat", s.SimRoot+"/mps-control.log")
	for _, want := range []string{
		mpsUUID + " -d", mpsUUID + " set_default_active_thread_percentage 50",
		mpsUUID + " set_default_device_pinned_mem_limit " + mpsUUID + " 10240M",
	} {
		if !strings.Contains(mpsLog, want+"\n") {
			s.Fatalf("gpu-test5: the MPS daemon never got %q:\n%s", want, mpsLog)
		}
	}
	s.Logf("gpu-test5: time-sliced %v (interval 3), MPS %v (daemon: 50 %%, 10240M pinned)", ts0, mp0)

	// gpu-test-mps: two containers through one MPS daemon.
	pm := s.quickstartPods(nsm, 1, 1)["test-pod"]
	g0, x0 := s.containerDevices(pm, "mps-ctr0")
	g1, x1 := s.containerDevices(pm, "mps-ctr1")
	if !slices.Equal(g0, g1) || x0.mpsDir != "/tmp/nvidia-mps" || !strings.Contains(x1.pipe, "control") {
		s.Fatalf("gpu-test-mps: containers on %v and %v, MPS pipe %q, %q", g0, g1, x0.mpsDir, x1.pipe)
	}
	s.Logf("gpu-test-mps: both containers on %v through one MPS daemon", g0)

	// gpu-test6: its selector wants an A100; this node has H100s.
	s.Eventually(60*time.Second, "gpu-test6's 4 pods unschedulable", func() error {
		pods, err := s.Client.CoreV1().Pods(ns6).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(pods.Items) != 4 {
			return fmt.Errorf("%d pods, want 4", len(pods.Items))
		}
		for _, p := range pods.Items {
			if err := Unschedulable(&p, ""); err != nil {
				return err
			}
		}
		s.Logf("gpu-test6: %s", podWhy(&pods.Items[0]))
		return nil
	})

	// Everything deleted: the claims unprepared, the GPUs' policy reset, the daemons quit.
	del5()
	delm()
	pol = s.simPolicies()
	if p := pol[tsUUID]; p.TimeSlice == nil || *p.TimeSlice != 0 {
		s.Fatalf("after gpu-test5: %s has compute policy %+v, want time-slice 0 (Default)", tsUUID, p)
	}
	if p := pol[mpsUUID]; p.ComputeMode != "DEFAULT" {
		s.Fatalf("after gpu-test5: %s has compute policy %+v, want DEFAULT", mpsUUID, p)
	}
	mpsLog = s.OnNode("cat", s.SimRoot+"/mps-control.log")
	for _, u := range []string{mpsUUID, s.deviceUUID(g0[0])} {
		if strings.Count(mpsLog, u+" -d\n") != 1 || strings.Count(mpsLog, u+" quit\n") != 1 {
			s.Fatalf("after gpu-test5 and gpu-test-mps: the daemon of %s was not started and quit once each:\n%s", u, mpsLog)
		}
	}
	del1()
	del2()
	del3()
	del6()
	s.Eventually(60*time.Second, "claim CDI specs removed", func() error {
		if out := s.OnNode("sh", "-c", "ls /var/run/cdi/k8s.gpu.nvidia.com-claim_* 2>/dev/null || true"); strings.TrimSpace(out) != "" {
			return fmt.Errorf("claim specs left: %s", out)
		}
		return nil
	})

	// gpu-test4 on a node of two A100s cut into MIG devices (its profiles are an A100's).
	prof := s.SimRoot + "/sim-a100-mig.yaml"
	s.OnNode("cp", s.Manifests+"/sim-a100-mig.yaml", prof)
	s.GpuletOnNode("sim", "devices", "--sim-root="+s.SimRoot, "--sim-profile="+prof)
	s.Kubectl("-n", s.Namespace, "set", "env", "ds/"+s.DaemonSet, "GPULET_SIM_PROFILE="+prof)
	s.Eventually(120*time.Second, "DaemonSet rolled to the A100 MIG profile", s.DaemonSetRolled)
	s.Eventually(60*time.Second, "8 MIG devices published", s.SliceCountIs(8))
	ns4, del4 := s.quickstart("gpu-test4.yaml")
	s.Cleanup(del4)
	// A Deployment of 4 replicas, each pod asking 2 × 1g.5gb, 2g.10gb and 3g.20gb: the two A100s
	// hold two such sets, so two pods run and two stay Pending.
	var all []string
	for _, p4 := range s.quickstartPods(ns4, 4, 2) {
		want := map[string]string{"ctr0": "1g.5gb", "ctr1": "1g.5gb", "ctr2": "2g.10gb", "ctr3": "3g.20gb"}
		for ctr, profile := range want {
			devs, _ := s.containerDevices(p4, ctr)
			if len(devs) != 1 {
				s.Fatalf("gpu-test4: %s/%s got %v, want one MIG device", p4.Name, ctr, devs)
			}
			d, err := s.SliceDevice(devs[0])
			if err != nil {
				s.Fatal(err)
			}
			if got := d.Attributes["profile"].StringValue; got == nil || *got != profile {
				s.Fatalf("gpu-test4: %s/%s got %s of profile %v, want %s", p4.Name, ctr, devs[0], got, profile)
			}
			all = append(all, devs[0])
		}
	}
	if slices.Sort(all); len(slices.Compact(slices.Clone(all))) != 8 {
		s.Fatalf("gpu-test4: the two running pods' eight containers share MIG devices: %v", all)
	}
	s.Logf("gpu-test4: %v", all)
}
