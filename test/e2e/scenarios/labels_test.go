package scenarios

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
)

// ExpectedLabels is what `gpulet labels` computes on the node for the
// DaemonSet's settings (sim, accelerator=nvidia), without the timestamp.
func (s *S) ExpectedLabels(args ...string) map[string]string {
	s.Helper()
	out := s.GpuletOnNode(append([]string{"labels", "--backend=sim", "--sim-profile=" + s.SimProfile, "--sim-root=" + s.SimRoot,
		"--extra-labels=accelerator=nvidia", "--no-timestamp"}, args...)...)
	want := map[string]string{}
	for l := range strings.Lines(out) {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			want[k] = v
		}
	}
	return want
}

// NodeLabels is the node's labels.
func (s *S) NodeLabels(node string) (map[string]string, error) {
	n, err := s.Client.CoreV1().Nodes().Get(s.ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return n.Labels, nil
}

// LabelsAre is a condition: every label of want is on the GPU node with its
// value, and the node has an nvidia.com/gfd.timestamp.
func (s *S) LabelsAre(want map[string]string) func() error {
	return func() error {
		got, err := s.NodeLabels(s.Node)
		if err != nil {
			return err
		}
		var missing []string
		for _, k := range slices.Sorted(maps.Keys(want)) {
			if v, ok := got[k]; !ok || v != want[k] {
				missing = append(missing, k+"="+want[k])
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("missing on the node: %v", missing)
		}
		if _, ok := got["nvidia.com/gfd.timestamp"]; !ok {
			return fmt.Errorf("no nvidia.com/gfd.timestamp")
		}
		return nil
	}
}

// GpuletConfig is a client config with a token of gpulet's service account
// bound to its pod on node (so the token carries that node's name, which
// the admission policies check), valid 10 minutes.
func (s *S) GpuletConfig(node string) *rest.Config {
	s.Helper()
	p, err := s.GpuletPodOn(node)
	if err != nil || p == nil {
		s.Fatalf("no gpulet pod on %s: %v", node, err)
	}
	tr, err := s.Client.CoreV1().ServiceAccounts(s.Namespace).CreateToken(s.ctx, p.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To[int64](600),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		s.Fatalf("a token for gpulet's service account bound to %s: %v", p.Name, err)
	}
	cfg := rest.AnonymousClientConfig(s.Config)
	cfg.BearerToken = tr.Status.Token
	return cfg
}

// GpuletClient is a typed client as gpulet on node (GpuletConfig).
func (s *S) GpuletClient(node string) kubernetes.Interface {
	s.Helper()
	cs, err := kubernetes.NewForConfig(s.GpuletConfig(node))
	if err != nil {
		s.Fatal(err)
	}
	return cs
}

// LabelNode sets (value non-nil) or removes (nil) one label of node with c,
// as `kubectl label` does (a merge patch).
func (s *S) LabelNode(c kubernetes.Interface, node, key string, value *string) error {
	v := "null"
	if value != nil {
		v = fmt.Sprintf("%q", *value)
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, key, v)
	_, err := c.CoreV1().Nodes().Patch(s.ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// Refused checks that err is a refusal whose message contains want (the
// admission policy's own message), not another error.
func (s *S) Refused(what string, err error, want string) {
	s.Helper()
	if err == nil {
		s.Fatalf("%s was allowed", what)
	}
	if !strings.Contains(err.Error(), want) {
		s.Fatalf("%s was refused, but not by the policy (want %q): %v", what, want, err)
	}
	s.Logf("refused: %s: %v", what, err)
}

// scenarioLabels: the Node carries every label `gpulet labels` computes
// (GFD's nvidia.com/* and accelerator=nvidia); a deleted gpulet pod removes
// none and the new one writes nothing (same gfd.timestamp); GPULET_REPLICAS=4
// turns gpu.replicas to 4 and the product to -SHARED; a token of gpulet's
// service account bound to its pod may set an nvidia.com/ label on its node
// but is refused a foreign key and another Node.
func scenarioLabels(s *S) {
	want := s.ExpectedLabels()
	n := 0
	for k := range want {
		if strings.HasPrefix(k, "nvidia.com/") {
			n++
		}
	}
	if n < 20 {
		s.Fatalf("gpulet labels computed only %d nvidia.com/ labels: %v", n, want)
	}
	if want["accelerator"] != "nvidia" {
		s.Fatalf("the expected labels lack accelerator=nvidia: %v", want)
	}
	s.Eventually(30*time.Second, "GFD labels on the node", s.LabelsAre(want))
	s.Logf("the node carries all %d labels gpulet computes (and gfd.timestamp); product %s", len(want), want["nvidia.com/gpu.product"])

	// A gpulet restart removes nothing and, the GPUs being the same, writes nothing.
	timestamp := func() string {
		l, err := s.NodeLabels(s.Node)
		if err != nil {
			s.Fatal(err)
		}
		return l["nvidia.com/gfd.timestamp"]
	}
	ts0 := timestamp()
	gp := s.MustGpuletPod()
	s.DeleteGpuletPod(gp)
	if err := s.LabelsAre(want)(); err != nil {
		s.Fatalf("labels gone after the gpulet pod was deleted: %v", err)
	}
	s.Eventually(120*time.Second, "a new gpulet pod Ready", s.NewGpuletReady(gp.Name))
	s.Eventually(90*time.Second, "Allocatable 8", s.GPUs8AndStable)
	// Past the publisher's debounce: a write would have happened by now.
	s.Consistently(3*time.Second, "labels unchanged, not rewritten, after the gpulet restart", func() error {
		if err := s.LabelsAre(want)(); err != nil {
			return err
		}
		if ts := timestamp(); ts != ts0 {
			return fmt.Errorf("gpulet relabelled the node after a restart with the same GPUs (gfd.timestamp %s -> %s)", ts0, ts)
		}
		return nil
	})
	s.Logf("labels kept across the gpulet restart, no relabel (gfd.timestamp %s)", ts0)

	// A sharing change: the replicas and -SHARED product follow once gpulet applies it.
	shared := s.ExpectedLabels("--replicas=4")
	if shared["nvidia.com/gpu.replicas"] != "4" || !strings.HasSuffix(shared["nvidia.com/gpu.product"], "-SHARED") {
		s.Fatalf("gpulet labels --replicas=4 says replicas %q, product %q", shared["nvidia.com/gpu.replicas"], shared["nvidia.com/gpu.product"])
	}
	restored := false
	s.Cleanup(func() {
		if !restored {
			s.RestoreDaemonSet()
		}
	})
	s.updateDaemonSet(func(ds *appsv1.DaemonSet) {
		for i := range ds.Spec.Template.Spec.Containers {
			ds.Spec.Template.Spec.Containers[i].Env = setEnv(ds.Spec.Template.Spec.Containers[i].Env, "GPULET_REPLICAS=4")
		}
	})
	s.Eventually(120*time.Second, "DaemonSet rolled out with replicas 4", s.DaemonSetRolled)
	// From the moment the API server shows gpulet serving the new sharing (Allocatable 32).
	s.Eventually(90*time.Second, "Allocatable 32 (8 GPUs x 4 replicas)", s.NodeGPUsAre("32/32"))
	t0 := time.Now()
	s.Eventually(60*time.Second, "labels of the shared node", s.LabelsAre(shared))
	s.Timing("replicas 4 applied (Allocatable 32) -> gpu.replicas=4 on the Node (API server)", time.Since(t0))
	s.Logf("shared: gpu.product=%s gpu.replicas=%s", shared["nvidia.com/gpu.product"], shared["nvidia.com/gpu.replicas"])
	s.RestoreDaemonSet()
	restored = true
	s.Eventually(30*time.Second, "unshared labels again", s.LabelsAre(want))

	// The admission policy: gpulet's own token (bound to its pod, so it carries the node name) may
	// set nvidia.com/* labels on its node, and nothing else.
	gc := s.GpuletClient(s.Node)
	if err := s.LabelNode(gc, s.Node, "nvidia.com/e2e-probe", ptr.To("1")); err != nil {
		s.Fatalf("gpulet's service account may not set an nvidia.com/ label on its own node: %v", err)
	}
	if err := s.LabelNode(gc, s.Node, "nvidia.com/e2e-probe", nil); err != nil {
		s.Fatalf("could not remove the probe label: %v", err)
	}
	s.Refused("gpulet's token sets a non-nvidia.com label", s.LabelNode(gc, s.Node, "e2e-probe", ptr.To("1")), "only nvidia.com")
	other := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "e2e-other-node"}}
	if _, err := s.Client.CoreV1().Nodes().Create(s.ctx, other, metav1.CreateOptions{}); err != nil {
		s.Fatal(err)
	}
	s.Cleanup(func() { _ = s.Client.CoreV1().Nodes().Delete(s.ctx, other.Name, metav1.DeleteOptions{}) })
	s.Refused("gpulet's token labels another node", s.LabelNode(gc, other.Name, "nvidia.com/gpu.count", ptr.To("8")), "only the node its pod runs on")
}

// DeleteGpuletPod deletes a gpulet pod and waits (bounded) until it is gone.
func (s *S) DeleteGpuletPod(p *corev1.Pod) {
	s.Helper()
	if err := s.Client.CoreV1().Pods(p.Namespace).Delete(s.ctx, p.Name, metav1.DeleteOptions{}); err != nil {
		s.Fatal(err)
	}
	s.Eventually(90*time.Second, "gpulet pod "+p.Name+" gone", func() error {
		q, err := s.Client.CoreV1().Pods(p.Namespace).Get(s.ctx, p.Name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		if err == nil && q.UID == p.UID {
			return fmt.Errorf("pod %s still there (%s)", p.Name, q.Status.Phase)
		}
		return nil
	})
}
