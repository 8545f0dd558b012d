package scenarios

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Rolling upgrade: image A (this code stamped with an older version) ->
// image B (the e2e image) -> back to A, with the DaemonSet's default
// RollingUpdate, while pods hold GPUs through the device plugin and a DRA
// claim is prepared.
const (
	upgradeAVersion = "v0.0.0-20000101000000-e2eprevious0"
	upgradeAImage   = "ghcr.io/gpulet/gpulet:e2e-previous"
	upgradeBImage   = "ghcr.io/gpulet/gpulet:e2e"
	upgradeDRAGPUs  = 2 // GPULET_DRA_DEVICES=0,1: two GPUs for DRA, six for the device plugin
)

// BuildInfoVersion is the version label of gpulet_build_info on the GPU node's gpulet.
func (s *S) BuildInfoVersion() (string, error) {
	m, err := s.Metrics()
	if err != nil {
		return "", err
	}
	b := Select(m, "gpulet_build_info", nil)
	if len(b) != 1 {
		return "", fmt.Errorf("%d gpulet_build_info series", len(b))
	}
	return b[0].Labels["version"], nil
}

// labelWrites is who last wrote the Node's nvidia.com/ labels and when (its
// managedFields): a write that changes nothing is not persisted, so this
// moves only when a label was really rewritten.
func (s *S) labelWrites() string {
	s.Helper()
	n, err := s.Client.CoreV1().Nodes().Get(s.ctx, s.Node, metav1.GetOptions{})
	if err != nil {
		s.Fatal(err)
	}
	var out []string
	for _, mf := range n.ManagedFields {
		if mf.FieldsV1 == nil {
			continue
		}
		var f struct {
			Metadata struct {
				Labels map[string]any `json:"f:labels"`
			} `json:"f:metadata"`
		}
		if json.Unmarshal(mf.FieldsV1.Raw, &f) != nil {
			continue
		}
		for k := range f.Metadata.Labels {
			if strings.HasPrefix(k, "f:nvidia.com/") {
				out = append(out, fmt.Sprintf("%s/%s@%v", mf.Manager, mf.Operation, mf.Time))
				break
			}
		}
	}
	return strings.Join(out, " ")
}

// claimUID is the UID of the pod's first claim.
func (s *S) claimUID(p *corev1.Pod) string {
	s.Helper()
	p = s.Pod(p.Namespace, p.Name)
	if len(p.Status.ResourceClaimStatuses) == 0 || p.Status.ResourceClaimStatuses[0].ResourceClaimName == nil {
		s.Fatalf("pod %s has no claim", p.Name)
	}
	c, err := s.Client.ResourceV1().ResourceClaims(p.Namespace).Get(s.ctx, *p.Status.ResourceClaimStatuses[0].ResourceClaimName, metav1.GetOptions{})
	if err != nil {
		s.Fatal(err)
	}
	return string(c.UID)
}

// ClaimPrepared is a condition: the claim's CDI spec is on the node and
// gpulet's DRA checkpoint lists it (prepared false: neither).
func (s *S) ClaimPrepared(uid string, prepared bool) func() error {
	return func() error {
		specs := s.OnNode("sh", "-c", "ls /var/run/cdi/ 2>/dev/null | grep -F claim_"+uid+" || true")
		cp := s.OnNode("sh", "-c", "cat /var/lib/kubelet/plugins/gpu.nvidia.com/gpulet-checkpoint.json 2>/dev/null || true")
		var c struct {
			Claims map[string]json.RawMessage `json:"claims"`
		}
		_ = json.Unmarshal([]byte(cp), &c)
		_, inCP := c.Claims[uid]
		hasSpec := strings.TrimSpace(specs) != ""
		switch {
		case prepared && !hasSpec:
			return fmt.Errorf("no CDI spec for claim %s in /var/run/cdi", uid)
		case prepared && !inCP:
			return fmt.Errorf("claim %s is not in gpulet's DRA checkpoint", uid)
		case !prepared && hasSpec:
			return fmt.Errorf("claim %s's CDI spec is still in /var/run/cdi", uid)
		case !prepared && inCP:
			return fmt.Errorf("claim %s is still in gpulet's DRA checkpoint", uid)
		}
		return nil
	}
}

// podView is what a running pod has: its container and restart count, its
// NVIDIA_VISIBLE_DEVICES and its /dev/nvidiaN nodes (mode, major, minor).
func (s *S) podView(p *corev1.Pod) string {
	s.Helper()
	p = s.Pod(p.Namespace, p.Name)
	if p.Status.Phase != corev1.PodRunning {
		s.Fatalf("%s is %s", p.Name, p.Status.Phase)
	}
	var env, devs string
	s.Eventually(60*time.Second, "exec into "+p.Name, func() (err error) {
		if env, err = s.KubectlErr("exec", p.Name, "--", "sh", "-c", `echo "$NVIDIA_VISIBLE_DEVICES"`); err != nil {
			return err
		}
		devs, err = s.KubectlErr("exec", p.Name, "--", "sh", "-c", `ls -l /dev/nvidia[0-9]* | awk '{ print $1, $5, $6, $NF }'`)
		return err
	})
	return fmt.Sprintf("%s %d\n%s%s", ContainerID(p), p.Status.ContainerStatuses[0].RestartCount, env, devs)
}

// setImage sets the gpulet container's image (kubectl set image).
func (s *S) setImage(image string) {
	s.Helper()
	s.updateDaemonSet(func(ds *appsv1.DaemonSet) {
		for i := range ds.Spec.Template.Spec.Containers {
			if ds.Spec.Template.Spec.Containers[i].Name == "gpulet" {
				ds.Spec.Template.Spec.Containers[i].Image = image
			}
		}
	})
}

// upgradeCapacityFull is a condition: 6 GPUs allocatable through the device
// plugin and 2 published DRA devices, gpulet not restarted.
func (s *S) upgradeCapacityFull() error {
	if err := s.GpuletStable(s.Node); err != nil {
		return err
	}
	if err := s.dpAllocatableIs(s.SimGPUs - upgradeDRAGPUs); err != nil {
		return err
	}
	return s.SliceCountIs(upgradeDRAGPUs)()
}

// dpAllocatableIs says (nil) when the device plugin's Allocatable
// nvidia.com/gpu on the GPU node is n.
func (s *S) dpAllocatableIs(n int) error {
	got, err := s.NodeGPUs(s.Node)
	if err != nil {
		return err
	}
	if _, a, _ := strings.Cut(got, "/"); a != fmt.Sprint(n) {
		return fmt.Errorf("Allocatable nvidia.com/gpu is %q, want %d", a, n)
	}
	return nil
}

// upgrade is the state one roll starts from.
type upgrade struct {
	hold, dra *corev1.Pod // 2 GPUs through the device plugin; 1 through a claim
	holdGPUs  []string
}

// newClaim starts a DRA pod that holds one GPU (its claim prepared by the running gpulet).
func (s *S) newClaim(u *upgrade, name string) {
	s.Helper()
	s.DRAHoldJob(name, "one-gpu")
	s.Eventually(90*time.Second, name+" Running", s.HoldRunning(name))
	u.dra = s.MustJobPod(name)
	s.DRAPodDevices(u.dra, 1)
	s.Eventually(30*time.Second, "claim of "+name+" prepared", s.ClaimPrepared(s.claimUID(u.dra), true))
}

// roll sets the DaemonSet's image (RollingUpdate), then checks that every
// held GPU, device node and prepared claim survived, capacity came back,
// labels were not rewritten and nothing a running pod holds is handed out
// again; it measures how long capacity was below full on the API server
// (polled every 0.2 s).
func (s *S) roll(u *upgrade, image, version, name string) {
	uid := s.claimUID(u.dra)
	if err := s.ClaimPrepared(uid, true)(); err != nil {
		s.Fatalf("before %s: %v", name, err)
	}
	holdView0, draView0 := s.podView(u.hold), s.podView(u.dra)
	labels0, err := s.NodeLabels(s.Node)
	if err != nil {
		s.Fatal(err)
	}
	writes0 := s.labelWrites()
	old := s.MustGpuletPod().Name

	// The poller: when capacity was not full, as the API server showed it.
	type sample struct {
		at   time.Time
		full bool
	}
	var (
		mu      sync.Mutex
		samples []sample
		stop    = make(chan struct{})
		done    = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			full := s.dpAllocatableIs(s.SimGPUs-upgradeDRAGPUs) == nil && s.SliceCountIs(upgradeDRAGPUs)() == nil
			mu.Lock()
			samples = append(samples, sample{time.Now(), full})
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(Poll):
			}
		}
	}()
	stopPoll := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}
	defer stopPoll()
	s.Eventually(10*time.Second, "the capacity poller running, full", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(samples) < 3 || !samples[len(samples)-1].full {
			return fmt.Errorf("%d samples", len(samples))
		}
		return nil
	})

	s.Logf("%s: set image gpulet=%s", name, image)
	t0 := time.Now()
	s.setImage(image)
	s.Eventually(180*time.Second, "DaemonSet rolled to "+image, s.NewGpuletRolled(old))
	s.Timing("upgrade "+name+": set image -> both nodes' pods updated and Ready", time.Since(t0))
	s.Eventually(120*time.Second, fmt.Sprintf("Allocatable %d and %d DRA devices after %s", s.SimGPUs-upgradeDRAGPUs, upgradeDRAGPUs, name), s.upgradeCapacityFull)
	s.Timing("upgrade "+name+": set image -> Allocatable and ResourceSlice full again (API server)", time.Since(t0))
	gp := s.MustGpuletPod()
	s.GpuletTiming("upgrade "+name+": set image -> new gpulet registered with the kubelet (its log)", t0, "registered with kubelet", "")
	s.Consistently(3*time.Second, name+": capacity stays full", s.upgradeCapacityFull)
	stopPoll()
	// Time below full: the first poll below full to the first poll full again after the last dip.
	var down, up, last time.Time
	dips := 0
	for _, sm := range samples {
		if sm.at.Before(t0) {
			continue
		}
		if !sm.full {
			if down.IsZero() {
				down = sm.at
			}
			last, up = sm.at, time.Time{}
			dips++
		} else if !down.IsZero() && up.IsZero() {
			up = sm.at
		}
	}
	below := time.Duration(0)
	if !down.IsZero() {
		if up.IsZero() {
			up = last
		}
		below = up.Sub(down)
	}
	s.Timing("upgrade "+name+": capacity below full on the node (API server, 0.2 s polls)", below)
	s.Logf("%s: polls below full: %d of %d", name, dips, len(samples))

	if v, err := s.BuildInfoVersion(); err != nil || v != version {
		s.Fatalf("%s: gpulet_build_info version is %q (%v), want %s", name, v, err, version)
	}
	if gp.Spec.Containers[0].Image != image {
		s.Fatalf("%s: the new gpulet pod runs %s, not %s", name, gp.Spec.Containers[0].Image, image)
	}
	s.Logf("%s: gpulet pod %s runs %s, gpulet_build_info version=%s", name, gp.Name, image, version)

	// Running pods keep their containers, GPUs and device nodes; the claim stays prepared.
	if v := s.podView(u.hold); v != holdView0 {
		s.Fatalf("%s: %s changed: before [%s] after [%s]", name, u.hold.Name, holdView0, v)
	}
	if v := s.podView(u.dra); v != draView0 {
		s.Fatalf("%s: %s changed: before [%s] after [%s]", name, u.dra.Name, draView0, v)
	}
	if err := s.ClaimPrepared(uid, true)(); err != nil {
		s.Fatalf("%s: %v", name, err)
	}
	s.Logf("%s: %s and %s keep their containers, GPUs and /dev nodes; claim %s still prepared", name, u.hold.Name, u.dra.Name, uid)

	// Labels: the same, and not written again.
	if l, err := s.NodeLabels(s.Node); err != nil || !maps.Equal(l, labels0) {
		s.Fatalf("%s: the Node's labels changed (%v): before %v after %v", name, err, labels0, l)
	}
	if w := s.labelWrites(); w != writes0 {
		s.Fatalf("%s: the Node's labels were rewritten: before %s after %s", name, writes0, w)
	}

	// Nothing a running pod holds is handed out: the other device-plugin GPUs go to a new pod, one
	// more waits; the other DRA GPU goes to a new claim, one more waits.
	free := s.SimGPUs - upgradeDRAGPUs - len(u.holdGPUs)
	rest, dra := "up-"+name+"-rest", "up-"+name+"-dra"
	s.HoldJob(rest, free)
	s.DRAHoldJob(dra, "one-gpu")
	s.Eventually(90*time.Second, fmt.Sprintf("%s: a %d-GPU pod runs next to the held GPUs", name, free), s.HoldRunning(rest))
	s.Eventually(90*time.Second, name+": a new DRA claim runs", s.HoldRunning(dra))
	pn := s.MustJobPod(rest)
	gn := s.PodGPUs(pn, free)
	if both := intersect(gn, u.holdGPUs); len(both) > 0 {
		s.Fatalf("%s: GPUs of %s were handed out again: %v", name, u.hold.Name, both)
	}
	pd := s.MustJobPod(dra)
	dn := s.DRAPodDevices(pd, 1)
	if held, _ := s.ClaimDevices(s.Pod(u.dra.Namespace, u.dra.Name)); slices.Equal(dn, held) {
		s.Fatalf("%s: the new claim got %v, which %s holds", name, dn, u.dra.Name)
	}
	more, draMore := "up-"+name+"-more", "up-"+name+"-dra-more"
	s.HoldJob(more, 1)
	s.DRAHoldJob(draMore, "one-gpu")
	for _, j := range []string{more, draMore} {
		s.Eventually(60*time.Second, j+" unschedulable (nothing handed out twice)", func() error {
			p, err := s.JobPod("default", j)
			if err != nil || p == nil {
				return fmt.Errorf("no pod yet (%v)", err)
			}
			return Unschedulable(p, "")
		})
	}
	s.Logf("%s: a new %d-GPU pod got %v, a new claim %v; one more GPU of either kind stays Pending", name, free, gn, dn)
	s.Release(pn)
	s.Release(pd)
	s.DeleteJob("default", more)
	s.DeleteJob("default", draMore)
	s.Eventually(60*time.Second, rest+" COMPLETIONS 1/1", s.JobComplete(rest))
	s.Eventually(60*time.Second, dra+" COMPLETIONS 1/1", s.JobComplete(dra))

	// Unprepare by the new version of what the old one prepared.
	cj := u.dra.Labels["job-name"]
	s.Release(u.dra)
	s.Eventually(60*time.Second, cj+" COMPLETIONS 1/1", s.JobComplete(cj))
	for _, j := range []string{cj, rest, dra} {
		s.DeleteJob("default", j)
	}
	s.Eventually(60*time.Second, "claim "+uid+" unprepared by "+version, s.ClaimPrepared(uid, false))
	s.Logf("%s: the claim prepared before the upgrade was unprepared after it (CDI spec and checkpoint entry gone)", name)
}

// scenarioUpgrade: image A (this code stamped v0.0.0-20000101000000-
// e2eprevious0, built with make build-release and hack/image.sh, imported
// with ctr) with DRA on GPUs 0,1 and the device plugin on the other 6; a
// 2-GPU device-plugin pod and a DRA pod run, labels set; set image to B,
// then back to A; after each roll (roll): the new version in
// gpulet_build_info, pods and claim kept, the claim unprepared by the new
// version when released, capacity back (time below full measured), labels
// not rewritten, the free GPUs handed out and no more.
func scenarioUpgrade(s *S) {
	s.Cleanup(s.DRARestore)
	// Image A: this code, stamped with an older version (as make builds a release), imported on both nodes.
	a := s.W + "/gpulet-previous"
	t0 := time.Now()
	buildLog, err := os.Create(s.Logs + "/upgrade-build.log")
	if err != nil {
		s.Fatal(err)
	}
	defer buildLog.Close()
	run := func(what string, argv ...string) {
		s.Helper()
		cmd := exec.CommandContext(s.ctx, argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = buildLog, buildLog
		if err := cmd.Run(); err != nil {
			tail, _ := os.ReadFile(s.Logs + "/upgrade-build.log")
			if len(tail) > 3000 {
				tail = tail[len(tail)-3000:]
			}
			s.Fatalf("%s: %v\n%s", what, err, tail)
		}
	}
	repo := "../../.."
	run("build image A's binary", "make", "-C", repo, "--no-print-directory", "build-release", "VERSION="+upgradeAVersion, "RELEASE_BIN="+a)
	run("build image A", repo+"/hack/image.sh", a, s.W+"/gpulet-previous.tar", upgradeAImage)
	for _, ns := range []string{s.W + "/nsrun", s.W + "/nsrun2"} {
		run("ctr images import of image A", ns, s.CBin+"/ctr", "-n", "k8s.io", "images", "import", s.W+"/gpulet-previous.tar")
	}
	s.Timing("upgrade: build and import image A", time.Since(t0))
	out, err := exec.CommandContext(s.ctx, s.Gpulet, "version").Output()
	if err != nil {
		s.Fatalf("gpulet version: %v", err)
	}
	bVersion := ""
	for l := range strings.Lines(string(out)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "gpulet "); ok {
			bVersion = v
			break
		}
	}
	if bVersion == "" || bVersion == upgradeAVersion {
		s.Fatalf("image B's version %q is not distinct from A's", bVersion)
	}
	s.Logf("image A: %s (%s); image B: %s (%s)", upgradeAImage, upgradeAVersion, upgradeBImage, bVersion)

	// The cluster on image A, with DRA for GPUs 0 and 1 and the device plugin for the rest.
	s.Kubectl("apply", "-f", s.DeployDir+"/dra-deviceclasses.yaml", "-f", s.DeployDir+"/gpulet-dra-rbac.yaml")
	s.CreateClaimTemplate(Manifest[*resourcev1.ResourceClaimTemplate](s, "deploy/examples/dra/one-gpu.yaml"))
	s.PatchDaemonSet("gpulet-dra-daemonset-patch.yaml")
	s.updateDaemonSet(func(ds *appsv1.DaemonSet) {
		for i := range ds.Spec.Template.Spec.Containers {
			c := &ds.Spec.Template.Spec.Containers[i]
			c.Env = setEnv(c.Env, "GPULET_DRA_DEVICES=0,1")
			if c.Name == "gpulet" {
				c.Image = upgradeAImage
			}
		}
		if ds.Spec.UpdateStrategy.Type != "RollingUpdate" {
			s.Errorf("the DaemonSet's strategy is %q, not RollingUpdate", ds.Spec.UpdateStrategy.Type)
		}
	})
	s.Eventually(180*time.Second, "DaemonSet on image A with DRA", s.DaemonSetRolled)
	s.Eventually(120*time.Second, "Allocatable 6 and 2 DRA devices on image A", s.upgradeCapacityFull)
	if v, err := s.BuildInfoVersion(); err != nil || v != upgradeAVersion {
		s.Fatalf("gpulet_build_info version is %q (%v), want %s", v, err, upgradeAVersion)
	}

	// Workloads: 2 GPUs through the device plugin, 1 through a DRA claim; labels set.
	u := &upgrade{}
	s.HoldJob("up-hold", 2)
	s.Eventually(90*time.Second, "up-hold Running", s.HoldRunning("up-hold"))
	u.hold = s.MustJobPod("up-hold")
	u.holdGPUs = s.PodGPUs(u.hold, 2)
	s.newClaim(u, "up-claim-a")
	s.Eventually(60*time.Second, "GFD labels on the node", func() error {
		l, err := s.NodeLabels(s.Node)
		if err != nil {
			return err
		}
		if l["nvidia.com/gpu.product"] == "" || l["nvidia.com/gfd.timestamp"] == "" {
			return fmt.Errorf("no nvidia.com/gpu.product or gfd.timestamp: %v", gpuLabels(l))
		}
		return nil
	})
	s.Logf("on image A: %s holds %v and %s a claim", u.hold.Name, u.holdGPUs, u.dra.Name)

	s.roll(u, upgradeBImage, bVersion, "a-to-b")
	s.newClaim(u, "up-claim-b")
	s.roll(u, upgradeAImage, upgradeAVersion, "b-to-a")

	s.Release(u.hold)
	s.Eventually(60*time.Second, "up-hold COMPLETIONS 1/1", s.JobComplete("up-hold"))
}
