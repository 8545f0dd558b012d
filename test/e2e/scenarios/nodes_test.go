package scenarios

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/gpulet/gpulet/internal/inventory"
)

// GPUProduct is GFD's nvidia.com/gpu.product of the dgx-h100 profile.
const GPUProduct = "NVIDIA-H100-80GB-HBM3"

// gpuLabels is the node's nvidia.com/* and accelerator labels.
func gpuLabels(l map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range l {
		if strings.HasPrefix(k, "nvidia.com/") || k == "accelerator" {
			out[k] = v
		}
	}
	return out
}

// Cordon marks the node (un)schedulable, as kubectl cordon/uncordon do.
func (s *S) Cordon(node string, on bool) {
	s.Helper()
	patch := fmt.Sprintf(`{"spec":{"unschedulable":%v}}`, on)
	if _, err := s.Client.CoreV1().Nodes().Patch(s.ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		s.Fatalf("cordon %s (%v): %v", node, on, err)
	}
}

// scenarioTwoNode: both nodes Ready; the DaemonSet has a pod on each, in its
// node's pod subnet; the CPU-only node's gpulet runs over 40 s without a
// restart, Ready while idle (/readyz ok through the pod proxy) and its log
// says it waits for the driver; that node has no nvidia.com/gpu, no
// device-plugin registration and no GPU label, the GPU node 8/8 and the
// product label; a pod with that nodeSelector runs on the GPU node; with
// the GPU node cordoned a 1-GPU pod stays Pending (never on the CPU-only
// node) and runs on the GPU node once uncordoned; a token bound to either
// node's gpulet pod may label its own node and is refused the other.
func scenarioTwoNode(s *S) {
	for _, n := range []string{s.Node, s.Node2} {
		s.Eventually(30*time.Second, "node "+n+" Ready", func() error {
			ready, _, err := s.NodeReady(n)
			if err == nil && !ready {
				err = fmt.Errorf("node %s is not Ready", n)
			}
			return err
		})
	}
	// gpulet on both nodes: the DaemonSet wants 2 pods, one per node.
	s.Eventually(60*time.Second, "DaemonSet on both nodes", s.DaemonSetReady)
	gp := s.MustGpuletPod()
	cp, err := s.GpuletPodOn(s.Node2)
	if err != nil || cp == nil {
		s.Fatalf("no gpulet pod on %s: %v", s.Node2, err)
	}
	if !strings.HasPrefix(gp.Status.PodIP, "10.244.0.") || !strings.HasPrefix(cp.Status.PodIP, "10.244.1.") {
		s.Fatalf("gpulet pod IPs %s (%s) and %s (%s) are not in the nodes' own pod subnets", gp.Status.PodIP, s.Node, cp.Status.PodIP, s.Node2)
	}

	// The CPU-only node's gpulet keeps running without a driver (fail-on-init-error false): past 3
	// liveness periods without a restart, Running and Ready (idle: nothing to serve), and says why.
	var started time.Time
	s.Eventually(90*time.Second, "gpulet on "+s.Node2+" running 40 s", func() error {
		if err := s.GpuletStable(s.Node2); err != nil {
			return err
		}
		p := s.Pod(s.Namespace, cp.Name)
		if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].State.Running == nil {
			return fmt.Errorf("gpulet on %s is %s, not running", s.Node2, p.Status.Phase)
		}
		started = p.Status.ContainerStatuses[0].State.Running.StartedAt.Time
		if time.Since(started) < 40*time.Second {
			return fmt.Errorf("gpulet on %s runs since %v only", s.Node2, started)
		}
		return nil
	})
	if !PodReady(s.Pod(s.Namespace, cp.Name)) {
		s.Fatalf("gpulet on the CPU-only node is not Ready (it would stall rolling updates)")
	}
	rz, err := s.Client.CoreV1().Pods(s.Namespace).ProxyGet("http", cp.Name, "9401", "readyz", nil).DoRaw(s.ctx)
	if err != nil || strings.TrimSpace(string(rz)) != "ok" {
		s.Fatalf("gpulet's /readyz on %s says %q (%v)", s.Node2, rz, err)
	}
	logs, err := s.PodLog(s.Namespace, cp.Name)
	if err != nil || !strings.Contains(logs, "waiting for the driver because fail-on-init-error is false") {
		s.Fatalf("gpulet's log on %s does not say it waits for the driver (%v):\n%s", s.Node2, err, logs)
	}
	s.Logf("gpulet on %s: Running since %v, 0 restarts, Ready while idle (/readyz ok); its log waits for the driver", s.Node2, started)

	// It advertises and labels nothing there; the GPU node has its 8 GPUs and GFD's labels.
	if c, err := s.NodeGPUs(s.Node2); err != nil || (c != "/" && c != "0/0") {
		s.Fatalf("the CPU-only node has nvidia.com/gpu capacity/allocatable %q (%v)", c, err)
	}
	if n := s.KubeletRegistrations("kubelet-node2.log"); n != 0 {
		s.Fatalf("a device plugin registered nvidia.com/gpu with the kubelet of %s (%d times)", s.Node2, n)
	}
	l2, err := s.NodeLabels(s.Node2)
	if err != nil || len(gpuLabels(l2)) > 0 {
		s.Fatalf("the CPU-only node carries GPU labels: %v (%v)", gpuLabels(l2), err)
	}
	if err := s.NodeGPUsAre("8/8")(); err != nil {
		s.Fatalf("the GPU node: %v", err)
	}
	l1, err := s.NodeLabels(s.Node)
	if err != nil || l1["nvidia.com/gpu.product"] != GPUProduct || l1["nvidia.com/gpu.count"] != fmt.Sprint(s.SimGPUs) {
		s.Fatalf("the GPU node's nvidia.com/gpu.product/count are %q/%q, want %s/%d (%v)",
			l1["nvidia.com/gpu.product"], l1["nvidia.com/gpu.count"], GPUProduct, s.SimGPUs, err)
	}
	s.Logf("%s: no nvidia.com/gpu, no nvidia.com/* label; %s: 8/8, %s", s.Node2, s.Node, GPUProduct)

	// A pod selecting the product lands on the GPU node.
	ps := s.CreatePod(Manifest[*corev1.Pod](s, "product-selector-pod.yaml", "__PRODUCT__", GPUProduct))
	s.Eventually(60*time.Second, "pod product-selector Succeeded", s.PodPhaseIs(ps.Namespace, ps.Name, corev1.PodSucceeded))
	if n := s.Pod(ps.Namespace, ps.Name).Spec.NodeName; n != s.Node {
		s.Fatalf("product-selector ran on %s, not on %s", n, s.Node)
	}
	if l, err := s.PodLog(ps.Namespace, ps.Name); err != nil || !regexp.MustCompile(`(?m)^running on a node labelled nvidia.com/gpu.product=`+regexp.QuoteMeta(GPUProduct)+`$`).MatchString(l) {
		s.Fatalf("product-selector did not run as expected (%v):\n%s", err, l)
	}
	s.DeletePod(ps.Namespace, ps.Name)

	// A GPU pod never lands on the CPU-only node: with the GPU node cordoned it stays Pending.
	s.Cleanup(func() { s.Cordon(s.Node, false) })
	s.Cordon(s.Node, true)
	s.HoldJob("gpu1-cordoned", 1)
	var pod *corev1.Pod
	notScheduled := func() error {
		p, err := s.JobPod("default", "gpu1-cordoned")
		if err != nil || p == nil {
			return fmt.Errorf("no pod yet (%v)", err)
		}
		pod = p
		if p.Spec.NodeName != "" {
			return Abort(fmt.Errorf("%s was scheduled to %s", p.Name, p.Spec.NodeName))
		}
		return nil
	}
	s.Eventually(60*time.Second, "gpu1-cordoned Pending: Insufficient nvidia.com/gpu on "+s.Node2+", "+s.Node+" unschedulable", func() error {
		if err := notScheduled(); err != nil {
			return err
		}
		if err := Unschedulable(pod, "Insufficient nvidia.com/gpu"); err != nil {
			return err
		}
		msg := podWhy(pod)
		if !strings.Contains(msg, "0/2 nodes are available") || !strings.Contains(msg, "unschedulable") {
			return fmt.Errorf("PodScheduled: %s", msg)
		}
		return nil
	})
	s.Logf("cordoned: %s", podWhy(pod))
	s.Consistently(3*time.Second, "gpu1-cordoned stays unscheduled", notScheduled)
	s.Cordon(s.Node, false)
	s.Eventually(90*time.Second, "gpu1-cordoned Running after the uncordon", s.HoldRunning("gpu1-cordoned"))
	pod = s.Pod(pod.Namespace, pod.Name)
	if pod.Spec.NodeName != s.Node {
		s.Fatalf("%s ran on %s, not %s", pod.Name, pod.Spec.NodeName, s.Node)
	}
	s.PodGPUs(pod, 1)
	s.Release(pod)
	s.Eventually(60*time.Second, "gpu1-cordoned COMPLETIONS 1/1", s.JobComplete("gpu1-cordoned"))

	// The admission policy keeps each gpulet to its own node, also with a real second node.
	for _, pair := range [][2]string{{s.Node, s.Node2}, {s.Node2, s.Node}} {
		own, other := pair[0], pair[1]
		c := s.GpuletClient(own)
		if err := s.LabelNode(c, own, "nvidia.com/e2e-probe", ptr.To("1")); err != nil {
			s.Fatalf("%s's gpulet token may not label its own node: %v", own, err)
		}
		if err := s.LabelNode(c, own, "nvidia.com/e2e-probe", nil); err != nil {
			s.Fatalf("could not remove the probe label: %v", err)
		}
		s.Refused(own+"'s gpulet labels "+other, s.LabelNode(c, other, "nvidia.com/gpu.product", ptr.To(GPUProduct)), "only the node its pod runs on")
	}
	if l2, err := s.NodeLabels(s.Node2); err != nil || len(gpuLabels(l2)) > 0 {
		s.Fatalf("%s has GPU labels now: %v (%v)", s.Node2, gpuLabels(l2), err)
	}
}

// migResource is the MIG resource the MIG scenario's pod asks for.
const migResource = "nvidia.com/mig-1g.10gb.me"

// scenarioMIG: `gpulet sim devices` for dgx-h100-mig-mixed, the DaemonSet set
// to that profile with MIG_STRATEGY=mixed: Capacity shows 4 of each MIG
// resource and 4 nvidia.com/gpu; a pod asking nvidia.com/mig-1g.10gb.me: 1
// runs with one MIG UUID of that profile, its parent's /dev/nvidiaN and two
// /dev/nvidia-caps nodes; the DaemonSet is restored to 8 GPUs.
func scenarioMIG(s *S) {
	s.Cleanup(s.RestoreDaemonSet)
	// The simulated driver of the MIG node: its /dev/nvidia-caps nodes and mig-minors, made on the
	// node as for the base profile (the DaemonSet cannot mknod).
	s.GpuletOnNode("sim", "devices", "--sim-root="+s.SimRoot, "--sim-profile="+migSimProfile)
	node := s.ListNode("--backend=sim", "--sim-profile="+migSimProfile, "--sim-root="+s.SimRoot, "--mig-strategy=mixed")
	type migOf struct {
		mig    inventory.MIGDevice
		parent inventory.GPU
	}
	migs := map[string]migOf{}
	for _, g := range node.GPUs {
		for _, m := range g.MIGDevices {
			migs[m.UUID] = migOf{m, g}
		}
	}
	s.Logf("MIG instances: %d", len(migs))

	t0 := time.Now()
	s.updateDaemonSet(func(ds *appsv1.DaemonSet) {
		for i := range ds.Spec.Template.Spec.Containers {
			c := &ds.Spec.Template.Spec.Containers[i]
			c.Env = setEnv(setEnv(c.Env, "GPULET_SIM_PROFILE="+migSimProfile), "MIG_STRATEGY=mixed")
		}
	})
	s.Eventually(120*time.Second, "DaemonSet rolled to "+migSimProfile, s.DaemonSetRolled)
	s.Eventually(120*time.Second, fmt.Sprintf("MIG capacity %v", migMixedCapacity), s.ResourcesAre(migMixedCapacity...))
	s.Timing("set env MIG profile -> MIG resources allocatable", time.Since(t0))

	p := s.CreatePod(Manifest[*corev1.Pod](s, "mig-pod.yaml", "__RESOURCE__", migResource))
	s.Eventually(90*time.Second, "pod mig-pod Succeeded", s.PodPhaseIs(p.Namespace, p.Name, corev1.PodSucceeded))
	log, err := s.PodLog(p.Namespace, p.Name)
	if err != nil {
		s.Fatal(err)
	}
	s.Logf("mig-pod:\n%s", log)
	env := ""
	if m := visibleRE.FindStringSubmatch(log); m != nil {
		env = m[1]
	}
	m, ok := migs[env]
	if !strings.HasPrefix(env, "MIG-") || strings.Contains(env, ",") || !ok || m.mig.Profile != "1g.10gb+me" {
		s.Fatalf("mig-pod has NVIDIA_VISIBLE_DEVICES=%s, want one 1g.10gb+me MIG instance of the node", env)
	}
	caps := regexp.MustCompile(`(?m)^device: c.* /dev/nvidia-caps/nvidia-cap[0-9]+$`).FindAllString(log, -1)
	if len(caps) != 2 {
		s.Fatalf("mig-pod has %d /dev/nvidia-caps character devices, want 2 (its GPU and compute instance)", len(caps))
	}
	if got := PodMinors(log); len(got) != 1 || got[0] != m.parent.Minor {
		s.Fatalf("mig-pod has /dev/nvidia%v, want its parent GPU's only (/dev/nvidia%d)", got, m.parent.Minor)
	}
}
