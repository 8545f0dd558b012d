package scenarios

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpulet/gpulet/internal/daemon"
)

// Per-node configuration (docs/node-config.md) as an operator of NVIDIA's
// plugin uses it: deploy/gpulet-node-config-rbac.yaml, the ConfigMap of
// deploy/examples/node-config.yaml (plus a broken config), the DaemonSet
// patched with deploy/gpulet-node-config-daemonset-patch.yaml, and the
// Node's nvidia.com/device-plugin.config label.

const (
	nodeConfigMap   = "gpulet-node-configs"
	nodeConfigLabel = "nvidia.com/device-plugin.config"
	ncHoldJob       = "nc-hold"
	// brokenConfig fails NVIDIA's validation (replicas must be >= 2).
	brokenConfig = "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 1\n"
)

func timeSlicedConfig(n int) string {
	return fmt.Sprintf("version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: %d\n", n)
}

// NodeResource is a resource's "capacity/allocatable" on node ("" parts when absent).
func (s *S) NodeResource(node, res string) (string, error) {
	n, err := s.Client.CoreV1().Nodes().Get(s.ctx, node, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	q := func(l corev1.ResourceList) string {
		v, ok := l[corev1.ResourceName(res)]
		if !ok {
			return ""
		}
		return v.String()
	}
	return q(n.Status.Capacity) + "/" + q(n.Status.Allocatable), nil
}

// ResourcesAre is a condition: each "resource c/a" pair holds on the GPU node.
func (s *S) ResourcesAre(want ...string) func() error {
	return func() error {
		if err := s.GpuletStable(s.Node); err != nil {
			return err
		}
		for _, w := range want {
			res, ca, _ := strings.Cut(w, " ")
			got, err := s.NodeResource(s.Node, res)
			if err != nil {
				return err
			}
			if got != ca {
				return fmt.Errorf("%s capacity/allocatable is %q, want %q", res, got, ca)
			}
		}
		return nil
	}
}

// ConfigStateIs is a condition: the GPU node's gpulet.io/config annotations
// say config name, state, and a message containing says.
func (s *S) ConfigStateIs(name, state, says string) func() error {
	return func() error {
		n, err := s.Client.CoreV1().Nodes().Get(s.ctx, s.Node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		a := n.Annotations
		if a[daemon.AnnotationConfig] != name || a[daemon.AnnotationConfigState] != state || !strings.Contains(a[daemon.AnnotationConfigMessage], says) {
			return fmt.Errorf("config annotations %q=%q %q=%q %q=%q; want %s, %s, a message with %q",
				daemon.AnnotationConfig, a[daemon.AnnotationConfig], daemon.AnnotationConfigState, a[daemon.AnnotationConfigState],
				daemon.AnnotationConfigMessage, a[daemon.AnnotationConfigMessage], name, state, says)
		}
		return nil
	}
}

// NodeEventSays is a condition: an Event of reason on the GPU node whose
// message contains says.
func (s *S) NodeEventSays(reason, says string) func() error {
	return func() error {
		evs, err := s.Client.CoreV1().Events(metav1.NamespaceDefault).List(s.ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + s.Node + ",reason=" + reason})
		if err != nil {
			return err
		}
		var msgs []string
		for _, e := range evs.Items {
			if strings.Contains(e.Message, says) {
				return nil
			}
			msgs = append(msgs, e.Message)
		}
		return fmt.Errorf("no %s Event on %s saying %q (have %q)", reason, s.Node, says, msgs)
	}
}

// Readyz is the body of the GPU node's gpulet /readyz through the API
// server's pod proxy; an error when it does not answer 200.
func (s *S) Readyz() (string, error) {
	p, err := s.GpuletPodOn(s.Node)
	if err != nil || p == nil {
		return "", fmt.Errorf("no gpulet pod on %s: %v", s.Node, err)
	}
	b, err := s.Client.CoreV1().Pods(s.Namespace).ProxyGet("http", p.Name, "9401", "readyz", nil).DoRaw(s.ctx)
	return string(b), err
}

// gpuletWrites is what gpulet has written so far: the time of its last
// write to the GPU node (managedFields of manager gpulet) and how many
// Events it posted there.
func (s *S) gpuletWrites() (string, int) {
	s.Helper()
	n, err := s.Client.CoreV1().Nodes().Get(s.ctx, s.Node, metav1.GetOptions{})
	if err != nil {
		s.Fatal(err)
	}
	var at []string
	for _, m := range n.ManagedFields {
		if m.Manager == "gpulet" && m.Time != nil {
			at = append(at, string(m.Operation)+"@"+m.Time.UTC().Format(time.RFC3339))
		}
	}
	evs, err := s.Client.CoreV1().Events(metav1.NamespaceDefault).List(s.ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + s.Node + ",source=gpulet"})
	if err != nil {
		s.Fatal(err)
	}
	count := 0
	for _, e := range evs.Items {
		count += int(e.Count)
	}
	return strings.Join(at, ","), count
}

func (s *S) setConfigLabel(v string) time.Time {
	s.Helper()
	var value *string
	if v != "" {
		value = &v
	}
	t0 := time.Now()
	if err := s.LabelNode(s.Client, s.Node, nodeConfigLabel, value); err != nil {
		s.Fatalf("label %s %s=%q: %v", s.Node, nodeConfigLabel, v, err)
	}
	return t0
}

func (s *S) updateNodeConfigs(change func(map[string]string)) {
	s.Helper()
	err := s.Within(30*time.Second, func() error {
		cm, err := s.Client.CoreV1().ConfigMaps(s.Namespace).Get(s.ctx, nodeConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(cm.Data)
		_, err = s.Client.CoreV1().ConfigMaps(s.Namespace).Update(s.ctx, cm, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		s.Fatalf("update ConfigMap %s: %v", nodeConfigMap, err)
	}
}

// scenarioNodeConfig: see the README's table.
func scenarioNodeConfig(s *S) {
	s.Cleanup(func() {
		_ = s.LabelNode(s.Client, s.Node, nodeConfigLabel, nil)
		s.DeleteJob("default", ncHoldJob)
		s.RestoreDaemonSet()
		if err := s.Client.CoreV1().ConfigMaps(s.Namespace).Delete(s.ctx, nodeConfigMap, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			s.Errorf("delete ConfigMap %s: %v", nodeConfigMap, err)
		}
		s.Kubectl("delete", "--ignore-not-found", "-f", s.DeployDir+"/gpulet-node-config-rbac.yaml")
	})
	s.Kubectl("apply", "-f", s.DeployDir+"/gpulet-node-config-rbac.yaml")
	cm := Manifest[*corev1.ConfigMap](s, "deploy/examples/node-config.yaml")
	cm.Data["broken"] = brokenConfig
	if _, err := s.Client.CoreV1().ConfigMaps(s.Namespace).Create(s.ctx, cm, metav1.CreateOptions{}); err != nil {
		s.Fatalf("create ConfigMap %s: %v", nodeConfigMap, err)
	}
	s.PatchDaemonSet("gpulet-node-config-daemonset-patch.yaml")
	s.Eventually(90*time.Second, "Allocatable 8 with the default config", s.GPUs8AndStable)
	s.Eventually(30*time.Second, "the Node says config default", s.ConfigStateIs("default", "applied", "fallback named"))

	// A pod started before the change keeps its container and GPU.
	s.HoldJob(ncHoldJob, 1)
	s.Eventually(90*time.Second, "the hold pod runs", s.HoldRunning(ncHoldJob))
	hold := s.MustJobPod(ncHoldJob)
	holdGPUs := s.PodGPUs(hold, 1)
	node2Before, err := s.Client.CoreV1().Nodes().Get(s.ctx, s.Node2, metav1.GetOptions{})
	if err != nil {
		s.Fatal(err)
	}
	gpuletPod := s.MustGpuletPod()

	// gpulet applies the change at once; the kubelet reports the new
	// capacity on its next node status update (every 10 s, ±4% jitter).
	t0 := s.setConfigLabel("ts4")
	if err := s.Within(nodeStatusBound, s.NodeGPUsAre("32/32")); err != nil {
		s.Fatalf("label ts4: Allocatable 32 not within %v: %v", nodeStatusBound, err)
	}
	s.Timing("node-config: label ts4 -> Allocatable 32 on the API server", time.Since(t0))
	if at, ok := s.GpuletLoggedAt(t0, "config applied", ""); !ok || at.Sub(t0) > 2*time.Second {
		s.Fatalf("gpulet did not log 'config applied' within 2 s of the label (logged: %v, at %v)", ok, at.Sub(t0))
	} else {
		s.Timing("node-config: label ts4 -> gpulet applied (its log)", at.Sub(t0))
	}
	s.Eventually(10*time.Second, "the Node says config ts4", s.ConfigStateIs("ts4", "applied", "label ts4"))
	s.Eventually(10*time.Second, "a ConfigApplied Event", s.NodeEventSays(daemon.ConfigAppliedReason, "config ts4 applied"))
	s.Eventually(15*time.Second, "GFD's sharing labels follow", func() error {
		l, err := s.NodeLabels(s.Node)
		if err != nil {
			return err
		}
		if l["nvidia.com/gpu.replicas"] != "4" || !strings.HasSuffix(l["nvidia.com/gpu.product"], "-SHARED") {
			return fmt.Errorf("gpu.replicas=%q gpu.product=%q, want 4 and -SHARED", l["nvidia.com/gpu.replicas"], l["nvidia.com/gpu.product"])
		}
		return nil
	})
	if p := s.MustGpuletPod(); p.UID != gpuletPod.UID || p.Status.ContainerStatuses[0].RestartCount != 0 {
		s.Fatalf("gpulet's pod changed or restarted: %s (restarts %d), was %s", p.Name, p.Status.ContainerStatuses[0].RestartCount, gpuletPod.Name)
	}
	after := s.MustJobPod(ncHoldJob)
	if after.UID != hold.UID || ContainerID(after) != ContainerID(hold) || after.Status.Phase != corev1.PodRunning {
		s.Fatalf("the hold pod did not keep running: %s %s %s, was %s %s", after.Name, after.Status.Phase, ContainerID(after), hold.Name, ContainerID(hold))
	}
	if got := s.PodGPUs(after, 1); got[0] != holdGPUs[0] {
		s.Fatalf("the hold pod sees %v, had %v", got, holdGPUs)
	}
	node2, err := s.Client.CoreV1().Nodes().Get(s.ctx, s.Node2, metav1.GetOptions{})
	if err != nil {
		s.Fatal(err)
	}
	// Nothing allocatable there, before or after; capacity may linger: an
	// earlier scenario (dra-migrate) gave that node GPUs, and the kubelet
	// keeps a gone plugin's resource (unhealthy) for 5 minutes.
	gpu := corev1.ResourceName("nvidia.com/gpu")
	a0, a1 := node2Before.Status.Allocatable[gpu], node2.Status.Allocatable[gpu]
	if !a0.IsZero() || !a1.IsZero() || node2.Annotations[daemon.AnnotationConfig] != node2Before.Annotations[daemon.AnnotationConfig] {
		s.Fatalf("the CPU node changed: allocatable nvidia.com/gpu %s -> %s, config annotation %q -> %q",
			a0.String(), a1.String(), node2Before.Annotations[daemon.AnnotationConfig], node2.Annotations[daemon.AnnotationConfig])
	}
	if err := s.GpuletStable(s.Node2); err != nil {
		s.Fatal(err)
	}

	// A missing name and a broken config: capacity stays; the Node's
	// annotations, an Event, the metric and /readyz (200) say why.
	for _, bad := range []struct{ label, says string }{{"nope", `names config "nope"`}, {"broken", "replicas=1"}} {
		s.setConfigLabel(bad.label)
		s.Eventually(15*time.Second, "the Node says "+bad.label+" failed", s.ConfigStateIs("ts4", "failed", bad.says))
		s.Eventually(10*time.Second, "a ConfigFailed Event for "+bad.label, s.NodeEventSays(daemon.ConfigFailedReason, bad.says))
		s.Eventually(10*time.Second, "gpulet_config_last_reload_success 0", s.MetricIs("gpulet_config_last_reload_success", nil, "0"))
		body, err := s.Readyz()
		if err != nil || !strings.Contains(body, "degraded") || !strings.Contains(body, bad.says) {
			s.Fatalf("/readyz with config %s: %q %v; want 200, degraded and why", bad.label, body, err)
		}
		s.Consistently(3*time.Second, "capacity stays 32 with config "+bad.label, s.NodeGPUsAre("32/32"))
	}
	s.setConfigLabel("ts4")
	s.Eventually(15*time.Second, "the failure clears", s.ConfigStateIs("ts4", "applied", "label ts4"))

	// Idle: no write to the API server.
	const idle = 60 * time.Second
	w0, e0 := s.gpuletWrites()
	time.Sleep(idle)
	w1, e1 := s.gpuletWrites()
	if w0 != w1 || e0 != e1 {
		s.Fatalf("gpulet wrote while idle for %v: Node writes %q -> %q, Events %d -> %d", idle, w0, w1, e0, e1)
	}
	s.Logf("idle %v: gpulet made no API write (Node written by gpulet last: %s; its Events: %d)", idle, w1, e1)

	// The ConfigMap edited in place: ts4 becomes 2 ways; the kubelet
	// updates the mounted files on its sync.
	t1 := time.Now()
	s.updateNodeConfigs(func(d map[string]string) { d["ts4"] = timeSlicedConfig(2) })
	if err := s.Within(180*time.Second, s.NodeGPUsAre("16/16")); err != nil {
		s.Fatalf("ConfigMap edit: Allocatable 16 not within 180 s: %v", err)
	}
	s.Timing("node-config: ConfigMap edit -> Allocatable 16 on the API server", time.Since(t1))

	t2 := s.setConfigLabel("")
	if err := s.Within(nodeStatusBound, s.NodeGPUsAre("8/8")); err != nil {
		s.Fatalf("label removed: Allocatable 8 not within %v: %v", nodeStatusBound, err)
	}
	s.Timing("node-config: label removed -> Allocatable 8 (default)", time.Since(t2))
	s.Eventually(10*time.Second, "the Node says config default", s.ConfigStateIs("default", "applied", "label unset"))
	s.Eventually(30*time.Second, "the hold pod still runs", s.HoldRunning(ncHoldJob))
	s.DeleteJob("default", ncHoldJob)

	// MIG: on the MIG profile, a label picks the mixed strategy.
	s.GpuletOnNode("sim", "devices", "--sim-root="+s.SimRoot, "--sim-profile="+migSimProfile)
	s.SetGpuletEnv("GPULET_SIM_PROFILE=" + migSimProfile)
	t3 := s.setConfigLabel("mig-mixed")
	if err := s.Within(30*time.Second, s.ResourcesAre(migMixedCapacity...)); err != nil {
		s.Fatalf("label mig-mixed: %v", err)
	}
	s.Timing("node-config: label mig-mixed -> MIG resources on the API server", time.Since(t3))
	s.setConfigLabel("")
	s.Eventually(30*time.Second, "back to 8 whole GPUs, no MIG devices", s.ResourcesAre("nvidia.com/gpu 8/8", "nvidia.com/mig-1g.10gb 0/0"))
}

// nodeStatusBound bounds label -> capacity on the API server: the kubelet's
// node status period (10 s, +4% jitter) and gpulet's apply (under 2 s).
const nodeStatusBound = 12 * time.Second

// migSimProfile and what it advertises under mig-strategy=mixed: GPUs 0-3
// whole, 4-7 cut in four.
const migSimProfile = "dgx-h100-mig-mixed"

var migMixedCapacity = []string{"nvidia.com/gpu 4/4", "nvidia.com/mig-3g.40gb 4/4", "nvidia.com/mig-2g.20gb 4/4",
	"nvidia.com/mig-1g.10gb.me 4/4", "nvidia.com/mig-1g.10gb 4/4"}
