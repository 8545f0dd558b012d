package deploy

import (
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"testing"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"
	"github.com/spf13/pflag"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/config"
)

// rbacObjects are the objects of gpulet-rbac.yaml (or the chart), typed.
type rbacObjects struct {
	sa      corev1.ServiceAccount
	role    rbacv1.ClusterRole
	binding rbacv1.ClusterRoleBinding
	vap     admissionv1.ValidatingAdmissionPolicy
	vapb    admissionv1.ValidatingAdmissionPolicyBinding
}

func parseRBAC(t *testing.T, byKind map[string][]byte) rbacObjects {
	t.Helper()
	var o rbacObjects
	for kind, into := range map[string]any{"ServiceAccount": &o.sa, "ClusterRole": &o.role, "ClusterRoleBinding": &o.binding,
		"ValidatingAdmissionPolicy": &o.vap, "ValidatingAdmissionPolicyBinding": &o.vapb} {
		data, ok := byKind[kind]
		if !ok {
			t.Fatalf("no %s", kind)
		}
		strict(t, data, into)
	}
	return o
}

func plainByKind(t *testing.T, name string) map[string][]byte {
	out := map[string][]byte{}
	for _, d := range docs(t, name) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(d, &meta); err != nil {
			t.Fatal(err)
		}
		out[meta.Kind] = d
	}
	return out
}

// checkRBAC holds the objects to what gpulet needs and no more, and ties
// them to the DaemonSet.
func checkRBAC(t *testing.T, o rbacObjects, ds *appsv1.DaemonSet, extra []string) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if spec.ServiceAccountName != o.sa.Name || o.sa.Namespace != ds.Namespace {
		t.Errorf("DaemonSet runs as %q, service account is %s/%s", spec.ServiceAccountName, o.sa.Namespace, o.sa.Name)
	}
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}}}
	if got, _ := json.Marshal(o.role.Rules); string(got) != mustJSON(want) {
		t.Errorf("ClusterRole rules %s, want %s", got, mustJSON(want))
	}
	if o.binding.RoleRef.Name != o.role.Name || len(o.binding.Subjects) != 1 ||
		o.binding.Subjects[0] != (rbacv1.Subject{Kind: "ServiceAccount", Name: o.sa.Name, Namespace: o.sa.Namespace}) {
		t.Errorf("binding %+v does not bind %s to %s", o.binding, o.role.Name, o.sa.Name)
	}
	if o.vapb.Spec.PolicyName != o.vap.Name || !slices.Equal(o.vapb.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
		t.Errorf("policy binding %+v", o.vapb.Spec)
	}
	if o.vap.Spec.FailurePolicy == nil || *o.vap.Spec.FailurePolicy != admissionv1.Fail {
		t.Error("the policy must fail closed")
	}
	mc := o.vap.Spec.MatchConditions
	if len(mc) != 1 || mc[0].Expression != "request.userInfo.username == 'system:serviceaccount:"+o.sa.Namespace+":"+o.sa.Name+"'" {
		t.Errorf("match conditions %+v do not select the service account", mc)
	}
	if got := evalVariable(t, o.vap, "allowedLabels"); !slices.Equal(got, extra) {
		t.Errorf("allowedLabels %v, want the extra labels %v", got, extra)
	}
	var node, extraEnv bool
	for _, e := range spec.Containers[0].Env {
		switch e.Name {
		case "NODE_NAME":
			node = e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
		case "GPULET_EXTRA_LABELS":
			extraEnv = e.Value == "accelerator=nvidia"
		}
	}
	if !node || !extraEnv {
		t.Errorf("DaemonSet env: NODE_NAME from spec.nodeName %v, GPULET_EXTRA_LABELS=accelerator=nvidia %v", node, extraEnv)
	}
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestRBACManifest(t *testing.T) {
	var ds appsv1.DaemonSet
	strict(t, docs(t, "gpulet-daemonset.yaml")[0], &ds)
	checkRBAC(t, parseRBAC(t, plainByKind(t, "gpulet-rbac.yaml")), &ds, []string{"accelerator"})
}

func TestHelmChartRBACMatchesTheManifest(t *testing.T) {
	objs := helmTemplate(t)
	var ds appsv1.DaemonSet
	strict(t, objs["DaemonSet"], &ds)
	chart := parseRBAC(t, objs)
	checkRBAC(t, chart, &ds, []string{"accelerator"})
	plain := parseRBAC(t, plainByKind(t, "gpulet-rbac.yaml"))
	if mustJSON(chart.vap.Spec) != mustJSON(plain.vap.Spec) || mustJSON(chart.role.Rules) != mustJSON(plain.role.Rules) {
		t.Errorf("the chart's policy differs from deploy/gpulet-rbac.yaml:\n%s\n%s", mustJSON(chart.vap.Spec), mustJSON(plain.vap.Spec))
	}

	// Other extras are allowed by the policy; labelling off renders no RBAC.
	objs = helmTemplate(t, "--set", "nodeLabels.extra.team=ml")
	strict(t, objs["DaemonSet"], &ds)
	if got := evalVariable(t, parseRBAC(t, objs).vap, "allowedLabels"); !slices.Equal(got, []string{"accelerator", "team"}) {
		t.Errorf("allowedLabels %v", got)
	}
	objs = helmTemplate(t, "--set", "nodeLabels.enabled=false")
	if _, ok := objs["ClusterRole"]; ok {
		t.Error("nodeLabels.enabled=false still grants patch on nodes")
	}
	strict(t, objs["DaemonSet"], &ds)
	if e := env(ds.Spec.Template.Spec.Containers[0]); e["GPULET_NODE_LABELS"] != "off" {
		t.Errorf("nodeLabels.enabled=false: env %v", e)
	}
}

// The policy's CEL, evaluated with cel-go as the API server would (same
// macros, optionals on, the strings extension); k8scel_test.go compiles the
// same expressions in the API server's own environment.
func celEnv(t *testing.T) *cel.Env {
	env, err := cel.NewEnv(cel.OptionalTypes(), ext.Strings(),
		cel.Variable("object", cel.DynType), cel.Variable("oldObject", cel.DynType),
		cel.Variable("request", cel.DynType), cel.Variable("variables", cel.MapType(cel.StringType, cel.DynType)))
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func eval(t *testing.T, expr string, vars map[string]any) any {
	t.Helper()
	env := celEnv(t)
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		t.Fatalf("compile %q: %v", expr, iss.Err())
	}
	prg, err := env.Program(ast)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := prg.Eval(vars)
	if err != nil {
		t.Fatalf("eval %q: %v", expr, err)
	}
	v, err := out.ConvertToNative(anyType)
	if err != nil {
		return out.Value()
	}
	return v
}

func evalVariable(t *testing.T, vap admissionv1.ValidatingAdmissionPolicy, name string) []string {
	for _, v := range vap.Spec.Variables {
		if v.Name == name {
			var out []string
			for _, x := range eval(t, v.Expression, map[string]any{}).([]any) {
				out = append(out, x.(string))
			}
			return out
		}
	}
	t.Fatalf("no variable %s", name)
	return nil
}

func toDyn(t *testing.T, v any) any {
	var out any
	if err := json.Unmarshal([]byte(mustJSON(v)), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// review is one write as a ValidatingAdmissionPolicy sees it.
type review struct {
	op       string   // CREATE, UPDATE or DELETE
	user     string   // request.userInfo.username
	node     []string // the token's node-name claim; nil: none
	old, new any      // oldObject, object (nil on CREATE, DELETE)
}

// admitReview runs the policy's match conditions, variables and validations
// on r, as the API server does once the resource rules matched.
func admitReview(t *testing.T, vap admissionv1.ValidatingAdmissionPolicy, r review) (matched bool, denied []string) {
	t.Helper()
	request := map[string]any{"operation": r.op, "userInfo": map[string]any{"username": r.user, "extra": map[string]any{}}}
	if r.node != nil {
		request["userInfo"].(map[string]any)["extra"] = map[string]any{"authentication.kubernetes.io/node-name": toDyn(t, r.node)}
	}
	vars := map[string]any{"object": toDyn(t, r.new), "oldObject": toDyn(t, r.old), "request": request}
	for _, mc := range vap.Spec.MatchConditions {
		if eval(t, mc.Expression, vars) != true {
			return false, nil
		}
	}
	variables := map[string]any{}
	vars["variables"] = variables
	for _, v := range vap.Spec.Variables {
		variables[v.Name] = eval(t, v.Expression, vars)
	}
	for _, v := range vap.Spec.Validations {
		if eval(t, v.Expression, vars) != true {
			denied = append(denied, v.Message)
		}
	}
	return true, denied
}

// admit runs the policy on an update of old to new by the given user.
func admit(t *testing.T, vap admissionv1.ValidatingAdmissionPolicy, user string, nodeClaim []string, old, new *corev1.Node) (matched bool, denied []string) {
	return admitReview(t, vap, review{op: "UPDATE", user: user, node: nodeClaim, old: old, new: new})
}

func TestAdmissionPolicyCEL(t *testing.T) {
	vap := parseRBAC(t, plainByKind(t, "gpulet-rbac.yaml")).vap
	const sa = "system:serviceaccount:gpu-resources:gpulet"
	node := func(labels, ann map[string]string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1ObjectMeta("gpu-node-1", labels, ann)}
	}
	base := map[string]string{"kubernetes.io/hostname": "gpu-node-1", "nvidia.com/gpu.count": "8"}
	with := func(m map[string]string, kv ...string) map[string]string {
		c := maps.Clone(m)
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "-" {
				delete(c, kv[i])
			} else {
				c[kv[i]] = kv[i+1]
			}
		}
		return c
	}
	owned := map[string]string{"gpulet.io/labels": "nvidia.com/gpu.count"}
	tainted := node(base, nil)
	tainted.Spec.Taints = []corev1.Taint{{Key: "x", Effect: corev1.TaintEffectNoSchedule}}
	tests := []struct {
		name      string
		user      string
		claim     []string
		old, new  *corev1.Node
		wantMatch bool
		allowed   bool
	}{
		{"gpulet labels its node", sa, []string{"gpu-node-1"}, node(base, nil),
			node(with(base, "nvidia.com/gpu.product", "NVIDIA-H200", "accelerator", "nvidia"), owned), true, true},
		{"gpulet labels a node without labels", sa, []string{"gpu-node-1"}, node(nil, nil), node(map[string]string{"nvidia.com/gpu.count": "1"}, owned), true, true},
		{"gpulet removes its labels", sa, []string{"gpu-node-1"}, node(with(base, "accelerator", "nvidia"), owned), node(with(base, "nvidia.com/gpu.count", "-", "accelerator", "-"), nil), true, true},
		{"another node", sa, []string{"gpu-node-2"}, node(base, nil), node(with(base, "nvidia.com/gpu.count", "4"), nil), true, false},
		{"a token without the node claim", sa, nil, node(base, nil), node(with(base, "nvidia.com/gpu.count", "4"), nil), true, false},
		{"a foreign label changed", sa, []string{"gpu-node-1"}, node(base, nil), node(with(base, "kubernetes.io/hostname", "x"), nil), true, false},
		{"a foreign label added", sa, []string{"gpu-node-1"}, node(base, nil), node(with(base, "node-role.kubernetes.io/control-plane", ""), nil), true, false},
		{"a foreign label removed", sa, []string{"gpu-node-1"}, node(base, nil), node(with(base, "kubernetes.io/hostname", "-"), nil), true, false},
		{"a foreign annotation", sa, []string{"gpu-node-1"}, node(base, nil), node(base, map[string]string{"other": "x"}), true, false},
		{"its per-node config state", sa, []string{"gpu-node-1"}, node(base, owned),
			node(base, with(owned, "gpulet.io/config", "ts4", "gpulet.io/config-state", "failed", "gpulet.io/config-message", "why")), true, true},
		{"its per-node config state on another node", sa, []string{"gpu-node-2"}, node(base, nil),
			node(base, map[string]string{"gpulet.io/config": "ts4"}), true, false},
		{"another gpulet.io annotation", sa, []string{"gpu-node-1"}, node(base, nil), node(base, map[string]string{"gpulet.io/other": "x"}), true, false},
		{"a taint", sa, []string{"gpu-node-1"}, node(base, nil), tainted, true, false},
		{"another user is not gpulet's business", "system:node:gpu-node-1", nil, node(base, nil), tainted, false, true},
		{"a formerly-extra label it recorded removed", sa, []string{"gpu-node-1"}, node(with(base, "team", "ml"), map[string]string{"gpulet.io/labels": "nvidia.com/gpu.count,team"}),
			node(base, owned), true, true},
		{"a formerly-extra label it recorded changed", sa, []string{"gpu-node-1"}, node(with(base, "team", "ml"), map[string]string{"gpulet.io/labels": "nvidia.com/gpu.count,team"}),
			node(with(base, "team", "ai"), map[string]string{"gpulet.io/labels": "nvidia.com/gpu.count,team"}), true, false},
		{"a recorded kubernetes.io label removed", sa, []string{"gpu-node-1"}, node(base, map[string]string{"gpulet.io/labels": "kubernetes.io/hostname"}),
			node(with(base, "kubernetes.io/hostname", "-"), nil), true, false},
		{"a foreign key claimed in the record", sa, []string{"gpu-node-1"}, node(base, owned),
			node(base, map[string]string{"gpulet.io/labels": "nvidia.com/gpu.count,topology.kubernetes.io/zone"}), true, false},
		{"a label it never recorded removed", sa, []string{"gpu-node-1"}, node(with(base, "team", "ml"), owned), node(base, owned), true, false},
		{"an owner reference", sa, []string{"gpu-node-1"}, node(base, nil), withOwner(node(base, nil)), true, false},
		{"a finalizer", sa, []string{"gpu-node-1"}, node(base, nil), withFinalizer(node(base, nil)), true, false},
		{"a token bound to two nodes", sa, []string{"gpu-node-1", "gpu-node-2"}, node(base, nil), node(with(base, "nvidia.com/gpu.count", "4"), nil), true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			matched, denied := admit(t, vap, tt.user, tt.claim, tt.old, tt.new)
			if matched != tt.wantMatch || (len(denied) == 0) != tt.allowed {
				t.Errorf("matched %v denied %v; want matched %v allowed %v", matched, denied, tt.wantMatch, tt.allowed)
			}
		})
	}
}

var anyType = reflect.TypeOf([]any{})

func withOwner(n *corev1.Node) *corev1.Node {
	n.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "x", UID: "0000"}}
	return n
}

func withFinalizer(n *corev1.Node) *corev1.Node {
	n.Finalizers = []string{"example.com/hold"}
	return n
}

func metav1ObjectMeta(name string, labels, ann map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Labels: labels, Annotations: ann}
}

// nodeFeatureRBAC are the Role and RoleBinding of NFD mode.
func nodeFeatureRBAC(t *testing.T, byKind map[string][]byte) (rbacv1.Role, rbacv1.RoleBinding) {
	t.Helper()
	var r rbacv1.Role
	var b rbacv1.RoleBinding
	for kind, into := range map[string]any{"Role": &r, "RoleBinding": &b} {
		data, ok := byKind[kind]
		if !ok {
			t.Fatalf("no %s", kind)
		}
		strict(t, data, into)
	}
	return r, b
}

// checkNodeFeatureRBAC holds NFD mode's Role to what gpulet does with
// NodeFeatures (publish.NodeFeatureTarget, RemoveNodeFeature) and its pod
// (kube.DaemonSetOwner), in its own namespace only, and the DaemonSet to
// the downward-API variables gpulet reads.
func checkNodeFeatureRBAC(t *testing.T, r rbacv1.Role, b rbacv1.RoleBinding, sa corev1.ServiceAccount, ds *appsv1.DaemonSet) {
	t.Helper()
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{"nfd.k8s-sigs.io"}, Resources: []string{"nodefeatures"}, Verbs: []string{"get", "create", "update", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
	}
	if got := mustJSON(r.Rules); got != mustJSON(want) {
		t.Errorf("Role rules %s, want %s", got, mustJSON(want))
	}
	if r.Namespace != sa.Namespace || b.Namespace != sa.Namespace || ds.Namespace != sa.Namespace {
		t.Errorf("Role in %q, binding in %q, service account in %q, DaemonSet in %q: want one namespace", r.Namespace, b.Namespace, sa.Namespace, ds.Namespace)
	}
	if b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: r.Name}) || len(b.Subjects) != 1 ||
		b.Subjects[0] != (rbacv1.Subject{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace}) {
		t.Errorf("binding %+v does not bind Role %s to %s", b, r.Name, sa.Name)
	}
	fields := map[string]string{}
	for _, e := range ds.Spec.Template.Spec.Containers[0].Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			fields[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if fields["POD_NAMESPACE"] != "metadata.namespace" || fields["POD_NAME"] != "metadata.name" {
		t.Errorf("DaemonSet downward API env %v, want POD_NAMESPACE and POD_NAME", fields)
	}
}

func TestNodeFeatureRBACManifest(t *testing.T) {
	var ds appsv1.DaemonSet
	strict(t, docs(t, "gpulet-daemonset.yaml")[0], &ds)
	byKind := plainByKind(t, "gpulet-nfd-rbac.yaml")
	r, b := nodeFeatureRBAC(t, byKind)
	var sa corev1.ServiceAccount
	strict(t, byKind["ServiceAccount"], &sa)
	checkNodeFeatureRBAC(t, r, b, sa, &ds)
	for _, kind := range []string{"ClusterRole", "ClusterRoleBinding"} {
		if _, ok := byKind[kind]; ok {
			t.Errorf("deploy/gpulet-nfd-rbac.yaml grants a %s: NFD mode needs no cluster-wide grant", kind)
		}
	}
	if e := env(ds.Spec.Template.Spec.Containers[0]); e["USE_NODE_FEATURE_API"] != "" {
		t.Errorf("the plain DaemonSet labels the Node by default: USE_NODE_FEATURE_API=%q", e["USE_NODE_FEATURE_API"])
	}
}

func TestHelmChartNodeFeatureAPI(t *testing.T) {
	// Default: the Node path only.
	objs := helmTemplate(t)
	if _, ok := objs["Role"]; ok {
		t.Error("the default chart grants nodefeatures")
	}
	var ds appsv1.DaemonSet
	strict(t, objs["DaemonSet"], &ds)
	if e := env(ds.Spec.Template.Spec.Containers[0]); e["USE_NODE_FEATURE_API"] != "" {
		t.Errorf("default chart: USE_NODE_FEATURE_API=%q", e["USE_NODE_FEATURE_API"])
	}

	// nodeLabels.nodeFeatureAPI: the Role, the setting, and no patch on nodes.
	objs = helmTemplate(t, "--set", "nodeLabels.nodeFeatureAPI=true")
	strict(t, objs["DaemonSet"], &ds)
	var sa corev1.ServiceAccount
	strict(t, objs["ServiceAccount"], &sa)
	r, b := nodeFeatureRBAC(t, objs)
	checkNodeFeatureRBAC(t, r, b, sa, &ds)
	plain, _ := nodeFeatureRBAC(t, plainByKind(t, "gpulet-nfd-rbac.yaml"))
	if mustJSON(r.Rules) != mustJSON(plain.Rules) {
		t.Errorf("the chart's Role differs from deploy/gpulet-rbac.yaml: %s, %s", mustJSON(r.Rules), mustJSON(plain.Rules))
	}
	for _, name := range []string{"ClusterRole/gpulet-node-labels", "ClusterRoleBinding/gpulet-node-labels",
		"ValidatingAdmissionPolicy/gpulet-node-labels", "ValidatingAdmissionPolicyBinding/gpulet-node-labels"} {
		if _, ok := objs[name]; ok {
			t.Errorf("nodeLabels.nodeFeatureAPI=true still renders %s", name)
		}
	}
	e := env(ds.Spec.Template.Spec.Containers[0])
	if e["USE_NODE_FEATURE_API"] != "true" || e["GPULET_NODE_LABELS"] != "" {
		t.Errorf("nodeLabels.nodeFeatureAPI=true: env %v", e)
	}
	// gpulet reads the rendered env as NFD mode in the pod's namespace.
	c := &config.Config{}
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	c.RunFlags(fs)
	e["POD_NAMESPACE"], e["POD_NAME"] = ds.Namespace, "gpulet-abcde"
	if err := c.Resolve(fs, func(k string) string { return e[k] }); err != nil {
		t.Fatal(err)
	}
	if l := c.Labels; !l.NodeFeatureAPI || l.Namespace != "gpu-resources" || l.PodName != "gpulet-abcde" {
		t.Errorf("gpulet reads the chart's env as %+v", l)
	}

	// Labelling off: neither.
	objs = helmTemplate(t, "--set", "nodeLabels.nodeFeatureAPI=true", "--set", "nodeLabels.enabled=false")
	if _, ok := objs["Role"]; ok {
		t.Error("nodeLabels.enabled=false still grants nodefeatures")
	}
}
