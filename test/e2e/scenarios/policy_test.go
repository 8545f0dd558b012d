package scenarios

import (
	"context"
	"fmt"
	"strings"
	"time"

	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// nodeFeatures is NFD's NodeFeature resource (a minimal CRD in the e2e:
// manifests/nodefeature-crd.yaml).
var nodeFeatures = schema.GroupVersionResource{Group: "nfd.k8s-sigs.io", Version: "v1alpha1", Resource: "nodefeatures"}

// policySlice is a ResourceSlice of driver on node ("*": allNodes) in pool
// with one device.
func policySlice(name, driver, node, pool, device string) *resourcev1.ResourceSlice {
	sl := &resourcev1.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: resourcev1.ResourceSliceSpec{
			Driver:  driver,
			Pool:    resourcev1.ResourcePool{Name: pool, Generation: 1, ResourceSliceCount: 1},
			Devices: []resourcev1.Device{{Name: device}},
		},
	}
	if node == "*" {
		sl.Spec.AllNodes = ptr.To(true)
	} else {
		sl.Spec.NodeName = ptr.To(node)
	}
	return sl
}

// policyFeature is a NodeFeature in gpulet's namespace for node with one label.
func (s *S) policyFeature(name, node, label string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "nfd.k8s-sigs.io/v1alpha1",
		"kind":       "NodeFeature",
		"metadata": map[string]any{
			"name": name, "namespace": s.Namespace,
			"labels": map[string]any{"nfd.node.kubernetes.io/node-name": node},
		},
		"spec": map[string]any{"labels": map[string]any{label: "1"}},
	}}
}

// Allowed fails the scenario when err (a write as gpulet) was refused.
func (s *S) Allowed(what string, err error) {
	s.Helper()
	if err != nil {
		s.Fatalf("refused: %s: %v", what, err)
	}
	s.Logf("  allowed: %s", what)
}

// Forbidden checks that err is Forbidden by the admission policy with msg
// in its message (not by RBAC, not by validation).
func (s *S) Forbidden(what string, err error, msg string) {
	s.Helper()
	if err == nil {
		s.Fatalf("admitted: %s", what)
	}
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "ValidatingAdmissionPolicy") || !strings.Contains(err.Error(), msg) {
		s.Fatalf("%s: refused, but not by the policy (%q): %v", what, msg, err)
	}
	s.Logf("  Forbidden: %s", what)
}

// scenarioPolicy: the admission policies of deploy/ on the real API server,
// with two tokens of gpulet's service account, each bound to the gpulet pod
// of one node: node A's token may label its Node, remove a key gpulet
// recorded, create, update and delete its node's ResourceSlice and
// NodeFeature; it is Forbidden, by the named policy, everything aimed at
// node B, another driver or all nodes, foreign label keys, finalizers and
// owner references; node B's token likewise for A's objects.
func scenarioPolicy(s *S) {
	a, b := s.Node, s.Node2
	ca, cb := s.GpuletConfig(a), s.GpuletConfig(b)
	ta, tb := kubernetes.NewForConfigOrDie(ca), kubernetes.NewForConfigOrDie(cb)
	da, db := dynamic.NewForConfigOrDie(ca), dynamic.NewForConfigOrDie(cb)
	// What an operator applies for DRA and for NFD mode (the NodeFeature CRD stands in for NFD's).
	s.Kubectl("apply", "-f", s.DeployDir+"/gpulet-dra-rbac.yaml", "-f", s.DeployDir+"/gpulet-nfd-rbac.yaml", "-f", s.Manifests+"/nodefeature-crd.yaml")
	s.Kubectl("wait", "--for=condition=Established", "crd/nodefeatures.nfd.k8s-sigs.io", "--timeout=30s")
	s.Cleanup(func() {
		ctx := context.Background()
		for _, n := range []string{"e2e-policy-a", "e2e-policy-a2", "e2e-policy-b"} {
			_ = s.Client.ResourceV1().ResourceSlices().Delete(ctx, n, metav1.DeleteOptions{})
		}
		for _, n := range []string{a, b} {
			_ = dynamic.NewForConfigOrDie(s.Config).Resource(nodeFeatures).Namespace(s.Namespace).Delete(ctx, "nvidia-features-for-"+n, metav1.DeleteOptions{})
		}
		_, _ = s.Client.CoreV1().Nodes().Patch(ctx, a, types.MergePatchType, []byte(`{"metadata":{"labels":{"nvidia.com/e2e-probe":null,"e2e-former":null}}}`), metav1.PatchOptions{})
	})
	slices := func(c kubernetes.Interface) interface {
		Create(context.Context, *resourcev1.ResourceSlice, metav1.CreateOptions) (*resourcev1.ResourceSlice, error)
		Update(context.Context, *resourcev1.ResourceSlice, metav1.UpdateOptions) (*resourcev1.ResourceSlice, error)
		Delete(context.Context, string, metav1.DeleteOptions) error
		Get(context.Context, string, metav1.GetOptions) (*resourcev1.ResourceSlice, error)
	} {
		return c.ResourceV1().ResourceSlices()
	}
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	// A new policy takes a moment to reach the API server's admission: wait until a write it refuses is refused.
	s.Eventually(30*time.Second, "the ResourceSlice policy in force", func() error {
		if _, err := slices(ta).Create(s.ctx, policySlice("e2e-policy-b", DRADriver, b, b, "e2e-0"), dryRun); err == nil {
			return fmt.Errorf("a slice for %s is admitted as %s's gpulet", b, a)
		}
		return nil
	})
	s.Eventually(30*time.Second, "the NodeFeature policy in force", func() error {
		if _, err := da.Resource(nodeFeatures).Namespace(s.Namespace).Create(s.ctx, s.policyFeature("nvidia-features-for-"+b, b, "nvidia.com/gpu.count"), dryRun); err == nil {
			return fmt.Errorf("a NodeFeature for %s is admitted as %s's gpulet", b, a)
		}
		return nil
	})

	s.Logf("Node (%s's token):", a)
	label := func(c kubernetes.Interface, node, patch string) error {
		_, err := c.CoreV1().Nodes().Patch(s.ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		return err
	}
	s.Allowed("label "+a+" nvidia.com/e2e-probe", s.LabelNode(ta, a, "nvidia.com/e2e-probe", ptr.To("1")))
	s.Allowed("remove it", s.LabelNode(ta, a, "nvidia.com/e2e-probe", nil))
	s.Forbidden("label "+b, s.LabelNode(ta, b, "nvidia.com/e2e-probe", ptr.To("1")), "only the node its pod runs on")
	s.Forbidden("remove kubernetes.io/hostname from "+a, s.LabelNode(ta, a, "kubernetes.io/hostname", nil), "only nvidia.com")
	s.Forbidden("a finalizer on "+a, label(ta, a, `{"metadata":{"finalizers":["example.com/hold"]}}`), "owner references or finalizers")
	s.Forbidden("an owner reference on "+a, label(ta, a,
		`{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"ConfigMap","name":"x","uid":"00000000-0000-0000-0000-000000000000"}]}}`),
		"owner references or finalizers")
	node, err := s.Client.CoreV1().Nodes().Get(s.ctx, a, metav1.GetOptions{})
	if err != nil {
		s.Fatal(err)
	}
	ann := node.Annotations["gpulet.io/labels"]
	annotate := func(v string) string { return fmt.Sprintf(`{"metadata":{"annotations":{"gpulet.io/labels":%q}}}`, v) }
	s.Forbidden("claim topology.kubernetes.io/zone in gpulet.io/labels", label(ta, a, annotate(ann+",topology.kubernetes.io/zone")), "may name only")
	// A label gpulet recorded as its own (an extra label since dropped from the policy) may go.
	if err := s.LabelNode(s.Client, a, "e2e-former", ptr.To("1")); err != nil {
		s.Fatal(err)
	}
	if err := label(s.Client, a, annotate(ann+",e2e-former")); err != nil {
		s.Fatal(err)
	}
	s.Allowed("remove e2e-former, which gpulet recorded as its own", label(ta, a,
		fmt.Sprintf(`{"metadata":{"labels":{"e2e-former":null},"annotations":{"gpulet.io/labels":%q}}}`, ann)))

	s.Logf("ResourceSlices:")
	create := func(c kubernetes.Interface, sl *resourcev1.ResourceSlice) error {
		_, err := slices(c).Create(s.ctx, sl, metav1.CreateOptions{})
		return err
	}
	update := func(c kubernetes.Interface, sl *resourcev1.ResourceSlice) error {
		cur, err := slices(s.Client).Get(s.ctx, sl.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("(as admin) %w", err)
		}
		sl.ResourceVersion = cur.ResourceVersion
		_, err = slices(c).Update(s.ctx, sl, metav1.UpdateOptions{})
		return err
	}
	del := func(c kubernetes.Interface, name string) error {
		return slices(c).Delete(s.ctx, name, metav1.DeleteOptions{})
	}
	const own, drv = "only its own node's ResourceSlices", "only ResourceSlices of driver gpu.nvidia.com"
	s.Allowed("create "+a+"'s slice", create(ta, policySlice("e2e-policy-a", DRADriver, a, a, "e2e-0")))
	s.Allowed("update "+a+"'s slice", update(ta, policySlice("e2e-policy-a", DRADriver, a, a, "e2e-1")))
	s.Allowed("delete "+a+"'s slice", del(ta, "e2e-policy-a"))
	s.Forbidden("create a slice for "+b, create(ta, policySlice("e2e-policy-b", DRADriver, b, b, "e2e-0")), own)
	s.Forbidden("create a slice of "+b+"'s pool on "+a, create(ta, policySlice("e2e-policy-a", DRADriver, a, b, "e2e-0")), own)
	s.Forbidden("create a slice of another driver", create(ta, policySlice("e2e-policy-a", "example.com", a, a, "e2e-0")), drv)
	s.Forbidden("create an allNodes slice", create(ta, policySlice("e2e-policy-a", DRADriver, "*", a, "e2e-0")), "gpulet may")
	s.Allowed(b+"'s gpulet creates "+b+"'s slice", create(tb, policySlice("e2e-policy-b", DRADriver, b, b, "e2e-0")))
	s.Forbidden("update "+b+"'s slice", update(ta, policySlice("e2e-policy-b", DRADriver, b, b, "e2e-1")), own)
	s.Forbidden("delete "+b+"'s slice", del(ta, "e2e-policy-b"), own)
	if err := create(s.Client, policySlice("e2e-policy-a2", "example.com", a, a, "e2e-0")); err != nil {
		s.Fatal(err)
	}
	s.Forbidden("delete another driver's slice on "+a, del(ta, "e2e-policy-a2"), drv)
	s.Forbidden(b+"'s gpulet deletes nothing of "+a+"'s", del(tb, "e2e-policy-a2"), "only")

	s.Logf("NodeFeatures:")
	nf := func(d dynamic.Interface) dynamic.ResourceInterface {
		return d.Resource(nodeFeatures).Namespace(s.Namespace)
	}
	fcreate := func(d dynamic.Interface, o *unstructured.Unstructured) error {
		_, err := nf(d).Create(s.ctx, o, metav1.CreateOptions{})
		return err
	}
	fupdate := func(d dynamic.Interface, o *unstructured.Unstructured) error {
		cur, err := nf(dynamic.NewForConfigOrDie(s.Config)).Get(s.ctx, o.GetName(), metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("(as admin) %w", err)
		}
		o.SetResourceVersion(cur.GetResourceVersion())
		_, err = nf(d).Update(s.ctx, o, metav1.UpdateOptions{})
		return err
	}
	fdel := func(d dynamic.Interface, name string) error { return nf(d).Delete(s.ctx, name, metav1.DeleteOptions{}) }
	fa, fb := "nvidia-features-for-"+a, "nvidia-features-for-"+b
	const ownNF = "only its own node's NodeFeature"
	s.Allowed("create "+a+"'s NodeFeature", fcreate(da, s.policyFeature(fa, a, "nvidia.com/gpu.count")))
	s.Allowed("update it", fupdate(da, s.policyFeature(fa, a, "nvidia.com/gpu.product")))
	s.Forbidden("a foreign label in it", fupdate(da, s.policyFeature(fa, a, "node-role.kubernetes.io/control-plane")), "only nvidia.com")
	s.Forbidden("create "+b+"'s NodeFeature", fcreate(da, s.policyFeature(fb, b, "nvidia.com/gpu.count")), ownNF)
	s.Forbidden("its own name labelled for "+b, fupdate(da, s.policyFeature(fa, b, "nvidia.com/gpu.count")), ownNF)
	s.Allowed(b+"'s gpulet creates "+b+"'s NodeFeature", fcreate(db, s.policyFeature(fb, b, "nvidia.com/gpu.count")))
	s.Forbidden("update "+b+"'s NodeFeature", fupdate(da, s.policyFeature(fb, b, "nvidia.com/gpu.product")), ownNF)
	s.Forbidden("delete "+b+"'s NodeFeature", fdel(da, fb), ownNF)
	s.Forbidden(b+"'s gpulet deletes "+a+"'s NodeFeature", fdel(db, fa), ownNF)
	s.Allowed("delete "+a+"'s NodeFeature", fdel(da, fa))
}
