package publish

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/labels"
	"github.com/gpulet/gpulet/internal/waittest"
)

const ns = "gpu-resources"

var dsOwner = &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "gpulet", UID: "ds-uid", Controller: ptr(true)}

func ptr[T any](v T) *T { return &v }

func fromYAML(t *testing.T, s string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(s), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

// Objects gpulet must never touch: NFD's own NodeFeature for the node,
// GFD-named objects of another node and in another namespace.
const foreignObjects = `apiVersion: nfd.k8s-sigs.io/v1alpha1
kind: NodeFeature
metadata: {name: gpu-node-1, namespace: gpu-resources, labels: {nfd.node.kubernetes.io/node-name: gpu-node-1}}
spec: {labels: {feature.node.kubernetes.io/cpu: "true"}}
---
apiVersion: nfd.k8s-sigs.io/v1alpha1
kind: NodeFeature
metadata: {name: nvidia-features-for-gpu-node-2, namespace: gpu-resources, labels: {nfd.node.kubernetes.io/node-name: gpu-node-2}}
spec: {labels: {nvidia.com/gpu.count: "4"}}
---
apiVersion: nfd.k8s-sigs.io/v1alpha1
kind: NodeFeature
metadata: {name: nvidia-features-for-gpu-node-1, namespace: other, labels: {nfd.node.kubernetes.io/node-name: gpu-node-1}}
spec: {labels: {nvidia.com/gpu.count: "1"}}
`

func newDynamic(t *testing.T, objs ...string) *dynamicfake.FakeDynamicClient {
	t.Helper()
	var in []runtime.Object
	for _, o := range objs {
		for _, d := range strings.Split(o, "\n---\n") {
			in = append(in, fromYAML(t, d))
		}
	}
	return dynamicfake.NewSimpleDynamicClient(runtime.NewScheme(), in...)
}

func getFeature(t *testing.T, c *dynamicfake.FakeDynamicClient, namespace, name string) *unstructured.Unstructured {
	t.Helper()
	o, err := c.Resource(NodeFeatureGVR).Namespace(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// writes are the create, update, patch and delete calls the client got.
func writes(c *dynamicfake.FakeDynamicClient) []string {
	var out []string
	for _, a := range c.Actions() {
		if v := a.GetVerb(); v != "get" && v != "list" && v != "watch" {
			out = append(out, v+" "+a.GetResource().Resource)
		}
	}
	return out
}

// checkForeign fails unless the foreign objects are as they were created.
func checkForeign(t *testing.T, c *dynamicfake.FakeDynamicClient) {
	t.Helper()
	for _, d := range strings.Split(foreignObjects, "\n---\n") {
		want := fromYAML(t, d)
		got := getFeature(t, c, want.GetNamespace(), want.GetName())
		if !reflect.DeepEqual(got.Object, want.Object) {
			t.Errorf("foreign NodeFeature %s/%s changed:\n%v\nwant\n%v", want.GetNamespace(), want.GetName(), got.Object, want.Object)
		}
	}
}

func TestNodeFeatureCreateIsExact(t *testing.T) {
	c := newDynamic(t, foreignObjects)
	tg := &NodeFeatureTarget{Client: c, Namespace: ns, Node: nodeName, Owner: dsOwner}
	want := labels.Labels{"nvidia.com/gpu.count": "8", "nvidia.com/gpu.product": "NVIDIA-H200", labels.TimestampKey: "1000", "accelerator": "nvidia"}
	wrote, err := tg.Sync(context.Background(), want)
	if err != nil || !wrote {
		t.Fatalf("Sync = %v, %v; want a create", wrote, err)
	}
	if w := writes(c); !reflect.DeepEqual(w, []string{"create nodefeatures"}) {
		t.Errorf("writes %v", w)
	}
	got := getFeature(t, c, ns, "nvidia-features-for-gpu-node-1")
	exact := fromYAML(t, `apiVersion: nfd.k8s-sigs.io/v1alpha1
kind: NodeFeature
metadata:
  name: nvidia-features-for-gpu-node-1
  namespace: gpu-resources
  labels:
    nfd.node.kubernetes.io/node-name: gpu-node-1
  ownerReferences:
  - apiVersion: apps/v1
    kind: DaemonSet
    name: gpulet
    uid: ds-uid
    controller: true
spec:
  features: {flags: {}, attributes: {}, instances: {}}
  labels:
    accelerator: nvidia
    nvidia.com/gfd.timestamp: "1000"
    nvidia.com/gpu.count: "8"
    nvidia.com/gpu.product: NVIDIA-H200
`)
	if !reflect.DeepEqual(got.Object, exact.Object) {
		a, _ := yaml.Marshal(got.Object)
		t.Errorf("NodeFeature\n%s\nwant\n%s", a, func() []byte { b, _ := yaml.Marshal(exact.Object); return b }())
	}
	if tg.String() != "NodeFeature gpu-resources/nvidia-features-for-gpu-node-1" {
		t.Errorf("String() = %q", tg.String())
	}
	checkForeign(t, c)
}

func TestNodeFeatureWritesOnlyOnChange(t *testing.T) {
	c := newDynamic(t, foreignObjects)
	ctx := context.Background()
	tg := &NodeFeatureTarget{Client: c, Namespace: ns, Node: nodeName, Owner: dsOwner}
	base := labels.Labels{"nvidia.com/gpu.count": "8", "accelerator": "nvidia", labels.TimestampKey: "1000"}
	if _, err := tg.Sync(ctx, base); err != nil {
		t.Fatal(err)
	}
	specLabels := func() map[string]string {
		m, _, _ := unstructured.NestedStringMap(getFeature(t, c, ns, NodeFeatureName(nodeName)).Object, "spec", "labels")
		return m
	}
	with := func(kv ...string) labels.Labels {
		l := labels.Labels{}
		for k, v := range base {
			l[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "-" {
				delete(l, kv[i])
			} else {
				l[kv[i]] = kv[i+1]
			}
		}
		return l
	}
	steps := []struct {
		name  string
		tg    *NodeFeatureTarget
		want  labels.Labels
		write bool
	}{
		{"unchanged", tg, base, false},
		{"a new timestamp alone", tg, with(labels.TimestampKey, "2000"), false},
		{"unknown owner leaves the owner reference", &NodeFeatureTarget{Client: c, Namespace: ns, Node: nodeName}, base, false},
		{"a value changed", tg, with("nvidia.com/gpu.count", "4", labels.TimestampKey, "3000"), true},
		{"a label no longer computed", tg, with("nvidia.com/gpu.count", "4", "accelerator", "-", labels.TimestampKey, "3000"), true},
		{"a label added", tg, with("nvidia.com/gpu.count", "4", "accelerator", "-", "nvidia.com/mig.capable", "false"), true},
		{"the timestamp dropped (--no-timestamp)", tg, with("nvidia.com/gpu.count", "4", "accelerator", "-", "nvidia.com/mig.capable", "false", labels.TimestampKey, "-"), true},
		{"a new DaemonSet (reinstalled)", &NodeFeatureTarget{Client: c, Namespace: ns, Node: nodeName, Owner: &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "gpulet", UID: "new-uid", Controller: ptr(true)}},
			with("nvidia.com/gpu.count", "4", "accelerator", "-", "nvidia.com/mig.capable", "false", labels.TimestampKey, "-"), true},
	}
	for _, s := range steps {
		c.ClearActions()
		wrote, err := s.tg.Sync(ctx, s.want)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		w := writes(c)
		if wrote != s.write || (s.write && !reflect.DeepEqual(w, []string{"update nodefeatures"})) || (!s.write && len(w) != 0) {
			t.Errorf("%s: wrote %v, writes %v; want a write %v", s.name, wrote, w, s.write)
		}
		if got := specLabels(); s.write && !reflect.DeepEqual(got, map[string]string(s.want)) {
			t.Errorf("%s: spec.labels %v, want %v", s.name, got, s.want)
		}
	}
	if refs := getFeature(t, c, ns, NodeFeatureName(nodeName)).GetOwnerReferences(); len(refs) != 1 || refs[0].UID != "new-uid" {
		t.Errorf("owner references %+v, want the new DaemonSet's only", refs)
	}
	checkForeign(t, c)
}

// An object someone else changed (or GFD wrote before gpulet replaced it)
// is made gpulet's again: its labels, its features, its object labels.
func TestNodeFeatureRewritesForeignContent(t *testing.T) {
	want := labels.Labels{"nvidia.com/gpu.count": "8"}
	for name, obj := range map[string]string{
		"GFD's labels": `{apiVersion: nfd.k8s-sigs.io/v1alpha1, kind: NodeFeature, metadata: {name: nvidia-features-for-gpu-node-1, namespace: gpu-resources, labels: {nfd.node.kubernetes.io/node-name: gpu-node-1}},
  spec: {features: {flags: {}, attributes: {}, instances: {}}, labels: {nvidia.com/gpu.count: "8", nvidia.com/gpu.clique: "x"}}}`,
		"features": `{apiVersion: nfd.k8s-sigs.io/v1alpha1, kind: NodeFeature, metadata: {name: nvidia-features-for-gpu-node-1, namespace: gpu-resources, labels: {nfd.node.kubernetes.io/node-name: gpu-node-1}},
  spec: {features: {flags: {x: {elements: {y: {}}}}}, labels: {nvidia.com/gpu.count: "8"}}}`,
		"object labels": `{apiVersion: nfd.k8s-sigs.io/v1alpha1, kind: NodeFeature, metadata: {name: nvidia-features-for-gpu-node-1, namespace: gpu-resources, labels: {nfd.node.kubernetes.io/node-name: gpu-node-2}},
  spec: {labels: {nvidia.com/gpu.count: "8"}}}`,
	} {
		c := newDynamic(t, obj)
		tg := &NodeFeatureTarget{Client: c, Namespace: ns, Node: nodeName}
		if wrote, err := tg.Sync(context.Background(), want); err != nil || !wrote {
			t.Errorf("%s: Sync = %v, %v; want an update", name, wrote, err)
			continue
		}
		got := getFeature(t, c, ns, NodeFeatureName(nodeName))
		l, _, _ := unstructured.NestedStringMap(got.Object, "spec", "labels")
		f, _, _ := unstructured.NestedMap(got.Object, "spec", "features")
		if !reflect.DeepEqual(l, map[string]string(want)) || len(f["flags"].(map[string]any)) != 0 || got.GetLabels()[NodeFeatureNodeLabel] != nodeName {
			t.Errorf("%s: object after sync %v", name, got.Object)
		}
		if wrote, err := tg.Sync(context.Background(), want); err != nil || wrote {
			t.Errorf("%s: second Sync = %v, %v; want no write", name, wrote, err)
		}
	}
}

func TestRemoveNodeFeature(t *testing.T) {
	c := newDynamic(t, foreignObjects)
	ctx := context.Background()
	tg := &NodeFeatureTarget{Client: c, Namespace: ns, Node: nodeName, Owner: dsOwner}
	if _, err := tg.Sync(ctx, labels.Labels{"nvidia.com/gpu.count": "8"}); err != nil {
		t.Fatal(err)
	}
	c.ClearActions()
	removed, err := RemoveNodeFeature(ctx, c, ns, nodeName)
	if err != nil || !removed {
		t.Fatalf("RemoveNodeFeature = %v, %v", removed, err)
	}
	if w := writes(c); !reflect.DeepEqual(w, []string{"delete nodefeatures"}) {
		t.Errorf("writes %v", w)
	}
	if _, err := c.Resource(NodeFeatureGVR).Namespace(ns).Get(ctx, NodeFeatureName(nodeName), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the NodeFeature is still there: %v", err)
	}
	if removed, err := RemoveNodeFeature(ctx, c, ns, nodeName); err != nil || removed {
		t.Errorf("second RemoveNodeFeature = %v, %v; want nothing to remove", removed, err)
	}
	checkForeign(t, c)
}

func TestNodeFeatureErrorsSayWhat(t *testing.T) {
	c := newDynamic(t)
	c.PrependReactor("*", "nodefeatures", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(NodeFeatureGVR.GroupResource(), NodeFeatureName(nodeName), errors.New("no RBAC"))
	})
	tg := &NodeFeatureTarget{Client: c, Namespace: ns, Node: nodeName}
	_, err := tg.Sync(context.Background(), labels.Labels{"nvidia.com/gpu.count": "8"})
	if err == nil || !strings.Contains(err.Error(), "nodefeatures.nfd.k8s-sigs.io in its namespace") || !apierrors.IsForbidden(err) {
		t.Errorf("err = %v, want the RBAC named", err)
	}
	// No CRD: the API server answers 404 for the resource, on create too.
	c = newDynamic(t)
	c.PrependReactor("create", "nodefeatures", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewNotFound(NodeFeatureGVR.GroupResource(), "")
	})
	tg.Client = c
	if _, err := tg.Sync(context.Background(), labels.Labels{"nvidia.com/gpu.count": "8"}); err == nil || !strings.Contains(err.Error(), "is Node Feature Discovery installed") {
		t.Errorf("err = %v, want NFD named", err)
	}
}

// The publisher with a NodeFeature target: one create, nothing while idle
// or after a restart with the same GPUs, an update on change, and the object
// stays when gpulet stops.
func TestPublisherNodeFeature(t *testing.T) {
	// In a synctest bubble: the quiet periods below pass on the fake clock,
	// after every timer due in them has fired, so "nothing was written" is
	// certain rather than likely.
	synctest.Test(t, func(t *testing.T) {
		c := newDynamic(t, foreignObjects)
		store := inventory.NewStore(&inventory.Node{GPUs: []inventory.GPU{{UUID: "GPU-0"}, {UUID: "GPU-1", Minor: 1}}})
		start := func() (stop func()) {
			now := 1000
			p := &Publisher{
				Target: &NodeFeatureTarget{Client: c, Namespace: ns, Node: nodeName, Owner: dsOwner},
				Store:  store, Debounce: 20 * time.Millisecond, RetryMax: 40 * time.Millisecond,
				Compute: func(s inventory.Snapshot) (labels.Labels, error) {
					now++
					return labels.Labels{"nvidia.com/gpu.count": itoa(len(s.Node.GPUs)), labels.TimestampKey: itoa(now)}, nil
				},
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = p.Run(ctx) }()
			return func() { cancel(); <-done }
		}
		count := func() string {
			o, err := c.Resource(NodeFeatureGVR).Namespace(ns).Get(context.Background(), NodeFeatureName(nodeName), metav1.GetOptions{})
			if err != nil {
				return ""
			}
			v, _, _ := unstructured.NestedString(o.Object, "spec", "labels", "nvidia.com/gpu.count")
			return v
		}
		stop := start()
		waittest.Until(t, 2*time.Second, "the NodeFeature created", func() bool { return count() == "2" })
		store.SetHealth("GPU-0", inventory.Health{Reason: "XID 48"})
		store.SetNode(&inventory.Node{GPUs: []inventory.GPU{{UUID: "GPU-0"}}})
		waittest.Until(t, 2*time.Second, "the NodeFeature updated", func() bool { return count() == "1" })
		stop()
		c.ClearActions()
		stop = start()
		waittest.Until(t, 2*time.Second, "the restarted publisher reads the NodeFeature", func() bool { return len(c.Actions()) > 0 })
		time.Sleep(100 * time.Millisecond)
		stop()
		if w := writes(c); len(w) != 0 {
			t.Errorf("writes after a restart with the same GPUs: %v", w)
		}
		if count() != "1" {
			t.Error("the NodeFeature is gone after gpulet stopped")
		}
		checkForeign(t, c)
	})
}
