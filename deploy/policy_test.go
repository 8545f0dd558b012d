package deploy

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// The admission policies that keep each gpulet to its own node, one per
// write path: the Node (gpulet-rbac.yaml), NFD's NodeFeature
// (gpulet-nfd-rbac.yaml) and DRA's ResourceSlice (gpulet-dra-rbac.yaml).
// Their CEL runs here with cel-go; test/e2e's `policy` scenario runs the
// same matrix on a real API server.

const gpuletSA = "system:serviceaccount:gpu-resources:gpulet"

// policy is the named ValidatingAdmissionPolicy of a manifest, checked to be
// bound with Deny, to fail closed and to match exactly ops on resource.
func policy(t *testing.T, byName map[string][]byte, name, group, resource string, ops ...admissionv1.OperationType) admissionv1.ValidatingAdmissionPolicy {
	t.Helper()
	var vap admissionv1.ValidatingAdmissionPolicy
	var vapb admissionv1.ValidatingAdmissionPolicyBinding
	for kind, into := range map[string]any{"ValidatingAdmissionPolicy": &vap, "ValidatingAdmissionPolicyBinding": &vapb} {
		data, ok := byName[kind+"/"+name]
		if !ok {
			t.Fatalf("no %s/%s", kind, name)
		}
		strict(t, data, into)
	}
	if vapb.Spec.PolicyName != vap.Name || !slices.Equal(vapb.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) ||
		vapb.Spec.MatchResources != nil || vapb.Spec.ParamRef != nil {
		t.Errorf("binding %s: %+v, want Deny for every object", name, vapb.Spec)
	}
	if vap.Spec.FailurePolicy == nil || *vap.Spec.FailurePolicy != admissionv1.Fail {
		t.Errorf("policy %s must fail closed", name)
	}
	rules := vap.Spec.MatchConstraints.ResourceRules
	if len(rules) != 1 || !slices.Equal(rules[0].APIGroups, []string{group}) || !slices.Equal(rules[0].Resources, []string{resource}) ||
		!slices.Equal(rules[0].Operations, ops) {
		t.Errorf("policy %s matches %+v, want %v on %s.%s", name, rules, ops, resource, group)
	}
	mc := vap.Spec.MatchConditions
	if len(mc) != 1 || mc[0].Expression != "request.userInfo.username == '"+gpuletSA+"'" {
		t.Errorf("policy %s: match conditions %+v do not select gpulet's service account", name, mc)
	}
	return vap
}

func slice(name, driver, node, pool string, mod ...func(*resourcev1.ResourceSlice)) *resourcev1.ResourceSlice {
	s := &resourcev1.ResourceSlice{
		TypeMeta:   metav1.TypeMeta{APIVersion: "resource.k8s.io/v1", Kind: "ResourceSlice"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: resourcev1.ResourceSliceSpec{Driver: driver, Pool: resourcev1.ResourcePool{Name: pool, ResourceSliceCount: 1},
			Devices: []resourcev1.Device{{Name: "gpu-0"}}},
	}
	if node != "" {
		s.Spec.NodeName = ptr.To(node)
	}
	for _, m := range mod {
		m(s)
	}
	return s
}

// checkDecisions runs each review and compares allowed/denied.
func checkDecisions(t *testing.T, vap admissionv1.ValidatingAdmissionPolicy, tests []decision) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			matched, denied := admitReview(t, vap, tt.r)
			if matched != (tt.r.user == gpuletSA) {
				t.Errorf("matched %v for user %s", matched, tt.r.user)
			}
			if (len(denied) == 0) != tt.allowed {
				t.Errorf("denied %v, want allowed %v", denied, tt.allowed)
			}
		})
	}
}

var corev1NodeSelector = corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
	MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpExists}}}}}

type decision struct {
	name    string
	r       review
	allowed bool
}

func TestResourceSlicePolicy(t *testing.T) {
	vap := policy(t, namedDocs(t, "gpulet-dra-rbac.yaml"), "gpulet-resourceslices", "resource.k8s.io", "resourceslices",
		admissionv1.Create, admissionv1.Update, admissionv1.Delete)
	a := []string{"node-a"}
	own := slice("node-a-gpu.nvidia.com-x", "gpu.nvidia.com", "node-a", "node-a")
	changed := slice("node-a-gpu.nvidia.com-x", "gpu.nvidia.com", "node-a", "node-a", func(s *resourcev1.ResourceSlice) { s.Spec.Devices = nil })
	ofB := slice("node-b-gpu.nvidia.com-x", "gpu.nvidia.com", "node-b", "node-b")
	checkDecisions(t, vap, []decision{
		{"create its node's slice", review{op: "CREATE", user: gpuletSA, node: a, new: own}, true},
		{"update its node's slice", review{op: "UPDATE", user: gpuletSA, node: a, old: own, new: changed}, true},
		{"delete its node's slice", review{op: "DELETE", user: gpuletSA, node: a, old: own}, true},
		{"create a slice for another node", review{op: "CREATE", user: gpuletSA, node: a, new: ofB}, false},
		{"update another node's slice", review{op: "UPDATE", user: gpuletSA, node: a, old: ofB, new: ofB}, false},
		{"move another node's slice to its own", review{op: "UPDATE", user: gpuletSA, node: a, old: ofB, new: own}, false},
		{"move its slice to another node", review{op: "UPDATE", user: gpuletSA, node: a, old: own, new: ofB}, false},
		{"delete another node's slice", review{op: "DELETE", user: gpuletSA, node: a, old: ofB}, false},
		{"another node's pool on its node", review{op: "CREATE", user: gpuletSA, node: a,
			new: slice("x", "gpu.nvidia.com", "node-a", "node-b")}, false},
		{"another driver", review{op: "CREATE", user: gpuletSA, node: a, new: slice("x", "example.com", "node-a", "node-a")}, false},
		{"delete another driver's slice", review{op: "DELETE", user: gpuletSA, node: a, old: slice("x", "example.com", "node-a", "node-a")}, false},
		{"all nodes", review{op: "CREATE", user: gpuletSA, node: a, new: slice("x", "gpu.nvidia.com", "", "node-a",
			func(s *resourcev1.ResourceSlice) { s.Spec.AllNodes = ptr.To(true) })}, false},
		{"all nodes with its node name too", review{op: "CREATE", user: gpuletSA, node: a, new: slice("x", "gpu.nvidia.com", "node-a", "node-a",
			func(s *resourcev1.ResourceSlice) { s.Spec.AllNodes = ptr.To(true) })}, false},
		{"a node selector", review{op: "CREATE", user: gpuletSA, node: a, new: slice("x", "gpu.nvidia.com", "", "node-a",
			func(s *resourcev1.ResourceSlice) { s.Spec.NodeSelector = &corev1NodeSelector })}, false},
		{"per-device node selection", review{op: "CREATE", user: gpuletSA, node: a, new: slice("x", "gpu.nvidia.com", "", "node-a",
			func(s *resourcev1.ResourceSlice) { s.Spec.PerDeviceNodeSelection = ptr.To(true) })}, false},
		{"a token without the node claim", review{op: "CREATE", user: gpuletSA, new: own}, false},
		{"a token naming two nodes", review{op: "CREATE", user: gpuletSA, node: []string{"node-a", "node-b"}, new: own}, false},
		{"the kubelet is not gpulet's business", review{op: "DELETE", user: "system:node:node-b", old: ofB}, true},
	})
}

func nodeFeature(name, node string, lbls map[string]string, features map[string]any) map[string]any {
	meta := map[string]any{"name": name, "namespace": "gpu-resources"}
	if node != "" {
		meta["labels"] = map[string]any{"nfd.node.kubernetes.io/node-name": node}
	}
	l := map[string]any{}
	for k, v := range lbls {
		l[k] = v
	}
	if features == nil {
		features = map[string]any{"flags": map[string]any{}, "attributes": map[string]any{}, "instances": map[string]any{}}
	}
	return map[string]any{"apiVersion": "nfd.k8s-sigs.io/v1alpha1", "kind": "NodeFeature", "metadata": meta,
		"spec": map[string]any{"features": features, "labels": l}}
}

func TestNodeFeaturePolicy(t *testing.T) {
	vap := policy(t, namedDocs(t, "gpulet-nfd-rbac.yaml"), "gpulet-node-feature", "nfd.k8s-sigs.io", "nodefeatures",
		admissionv1.Create, admissionv1.Update, admissionv1.Delete)
	a := []string{"node-a"}
	gpu := map[string]string{"nvidia.com/gpu.count": "8", "accelerator": "nvidia"}
	own := nodeFeature("nvidia-features-for-node-a", "node-a", gpu, nil)
	ofB := nodeFeature("nvidia-features-for-node-b", "node-b", gpu, nil)
	checkDecisions(t, vap, []decision{
		{"create its node's object", review{op: "CREATE", user: gpuletSA, node: a, new: own}, true},
		{"update its node's object", review{op: "UPDATE", user: gpuletSA, node: a, old: own,
			new: nodeFeature("nvidia-features-for-node-a", "node-a", map[string]string{"nvidia.com/gpu.count": "4"}, nil)}, true},
		{"delete its node's object", review{op: "DELETE", user: gpuletSA, node: a, old: own}, true},
		{"create another node's object", review{op: "CREATE", user: gpuletSA, node: a, new: ofB}, false},
		{"update another node's object", review{op: "UPDATE", user: gpuletSA, node: a, old: ofB, new: ofB}, false},
		{"delete another node's object", review{op: "DELETE", user: gpuletSA, node: a, old: ofB}, false},
		{"its name, another node's label", review{op: "CREATE", user: gpuletSA, node: a,
			new: nodeFeature("nvidia-features-for-node-a", "node-b", gpu, nil)}, false},
		{"no node label", review{op: "CREATE", user: gpuletSA, node: a, new: nodeFeature("nvidia-features-for-node-a", "", gpu, nil)}, false},
		{"another name for its node", review{op: "CREATE", user: gpuletSA, node: a, new: nodeFeature("other", "node-a", gpu, nil)}, false},
		{"relabel another node's object as its own", review{op: "UPDATE", user: gpuletSA, node: a, old: ofB,
			new: nodeFeature("nvidia-features-for-node-b", "node-a", gpu, nil)}, false},
		{"a foreign label", review{op: "CREATE", user: gpuletSA, node: a,
			new: nodeFeature("nvidia-features-for-node-a", "node-a", map[string]string{"node-role.kubernetes.io/control-plane": ""}, nil)}, false},
		{"features", review{op: "CREATE", user: gpuletSA, node: a, new: nodeFeature("nvidia-features-for-node-a", "node-a", gpu,
			map[string]any{"flags": map[string]any{"x": map[string]any{"elements": map[string]any{"y": map[string]any{}}}}})}, false},
		{"a token without the node claim", review{op: "CREATE", user: gpuletSA, new: own}, false},
		{"nfd-master is not gpulet's business", review{op: "DELETE", user: "system:serviceaccount:node-feature-discovery:nfd-master", old: ofB}, true},
	})
}

// The chart renders the same policies as the plain manifests (with the
// release's names), each only in the mode that writes.
func TestHelmChartPoliciesMatchTheManifests(t *testing.T) {
	for _, tc := range []struct {
		file, name string
		args       []string
	}{
		{"gpulet-rbac.yaml", "node-labels", nil},
		{"gpulet-nfd-rbac.yaml", "node-feature", []string{"--set", "nodeLabels.nodeFeatureAPI=true"}},
		{"gpulet-dra-rbac.yaml", "resourceslices", []string{"--set", "dra.enabled=true"}},
	} {
		objs := helmTemplate(t, tc.args...)
		var chart, plain admissionv1.ValidatingAdmissionPolicy
		strict(t, objs["ValidatingAdmissionPolicy/gpulet-"+tc.name], &chart)
		strict(t, namedDocs(t, tc.file)["ValidatingAdmissionPolicy/gpulet-"+tc.name], &plain)
		if mustJSON(chart.Spec) != mustJSON(plain.Spec) {
			t.Errorf("the chart's %s policy differs from deploy/%s:\n%s\n%s", tc.name, tc.file, mustJSON(chart.Spec), mustJSON(plain.Spec))
		}
		if _, ok := objs["ValidatingAdmissionPolicyBinding/gpulet-"+tc.name]; !ok {
			t.Errorf("the chart renders the %s policy unbound", tc.name)
		}
	}
	objs := helmTemplate(t)
	for _, name := range []string{"resourceslices", "node-feature"} {
		if _, ok := objs["ValidatingAdmissionPolicy/gpulet-"+name]; ok {
			t.Errorf("the default chart renders the %s policy of a mode that is off", name)
		}
	}
}

// Against a cluster helm knows each served kind; one without
// admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy (Kubernetes
// before 1.30) could not enforce the policies, and the chart refuses it.
func TestHelmChartRefusesAClusterWithoutAdmissionPolicies(t *testing.T) {
	helm := os.Getenv("HELM")
	if helm == "" {
		helm, _ = exec.LookPath("helm")
	}
	if helm == "" {
		helmTemplate(t) // fails under CI, skips otherwise
		return
	}
	out, err := exec.Command(helm, "template", "gpulet", "helm/gpulet", "--api-versions", "apps/v1/DaemonSet",
		"--api-versions", "admissionregistration.k8s.io/v1beta1/ValidatingAdmissionPolicy").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "gpulet needs admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy") {
		t.Errorf("rendered for a cluster without ValidatingAdmissionPolicy v1: err %v\n%s", err, out)
	}
	helmTemplate(t, "--api-versions", "apps/v1/DaemonSet", "--api-versions", "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy")
}
