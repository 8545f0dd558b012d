package publish

// NFD's NodeFeature API (GFD's useNodeFeatureAPI): instead of patching the
// Node, gpulet writes its labels into a NodeFeature object named and
// labelled as GFD names and labels it, and nfd-master puts them on the
// Node. The object is whole gpulet's, so there is no owned-keys record: its
// spec.labels are the labels. It is read with the dynamic client as
// unstructured data, to keep NFD's Go module (and its dependencies) out.

import (
	"context"
	"fmt"
	"maps"
	"reflect"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/gpulet/gpulet/internal/labels"
)

// NodeFeatureGVR is NFD's NodeFeature resource.
var NodeFeatureGVR = schema.GroupVersionResource{Group: "nfd.k8s-sigs.io", Version: "v1alpha1", Resource: "nodefeatures"}

const (
	// NodeFeatureNodeLabel tells nfd-master which node a NodeFeature is for
	// (NFD's NodeFeatureObjNodeNameLabel; creators must set it).
	NodeFeatureNodeLabel = "nfd.node.kubernetes.io/node-name"
	// nodeFeaturePrefix is GFD's: its object is nvidia-features-for-<node>,
	// so gpulet replacing GFD takes over the same object.
	nodeFeaturePrefix = "nvidia-features-for-"
)

// NodeFeatureName is the name of node's NodeFeature object, as GFD names it.
func NodeFeatureName(node string) string { return nodeFeaturePrefix + node }

// NodeFeatureTarget publishes the labels as node's NodeFeature object in
// Namespace.
type NodeFeatureTarget struct {
	Client    dynamic.Interface
	Namespace string
	Node      string
	// Owner, when set, is the object's only owner reference (the DaemonSet:
	// kube.DaemonSetOwner). Nil leaves the object's owner references as they are.
	Owner *metav1.OwnerReference
}

func (t *NodeFeatureTarget) String() string {
	return "NodeFeature " + t.Namespace + "/" + NodeFeatureName(t.Node)
}

// Sync creates or updates the NodeFeature to carry want, and reports
// whether it had to write.
func (t *NodeFeatureTarget) Sync(ctx context.Context, want labels.Labels) (bool, error) {
	res := t.Client.Resource(NodeFeatureGVR).Namespace(t.Namespace)
	name := NodeFeatureName(t.Node)
	obj, err := res.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		obj = &unstructured.Unstructured{}
		obj.SetAPIVersion(NodeFeatureGVR.GroupVersion().String())
		obj.SetKind("NodeFeature")
		obj.SetNamespace(t.Namespace)
		obj.SetName(name)
		t.fill(obj, want)
		if _, err := res.Create(ctx, obj, metav1.CreateOptions{FieldManager: "gpulet"}); err != nil {
			return false, t.explain("create", err)
		}
		return true, nil
	}
	if err != nil {
		return false, t.explain("read", err)
	}
	if t.inSync(obj, want) {
		return false, nil
	}
	t.fill(obj, want) // keeps the resourceVersion read: a concurrent writer makes this fail, and it is retried
	if _, err := res.Update(ctx, obj, metav1.UpdateOptions{FieldManager: "gpulet"}); err != nil {
		return false, t.explain("update", err)
	}
	return true, nil
}

func (t *NodeFeatureTarget) explain(verb string, err error) error {
	hint := ""
	switch {
	case apierrors.IsForbidden(err):
		hint = " (gpulet's service account needs get, create, update on nodefeatures.nfd.k8s-sigs.io in its namespace: see deploy/gpulet-nfd-rbac.yaml)"
	case apierrors.IsNotFound(err):
		hint = " (is Node Feature Discovery installed, with its NodeFeature CRD?)"
	}
	return fmt.Errorf("%s %s%s: %w", verb, t, hint, err)
}

// fill sets what gpulet owns in the object: its node label (the object's
// only label, as GFD sets it), spec (GFD's empty features and the labels)
// and, when known, the owner reference.
func (t *NodeFeatureTarget) fill(obj *unstructured.Unstructured, want labels.Labels) {
	obj.SetLabels(map[string]string{NodeFeatureNodeLabel: t.Node})
	lbls := map[string]any{}
	for k, v := range want {
		lbls[k] = v
	}
	obj.Object["spec"] = map[string]any{
		"features": map[string]any{"flags": map[string]any{}, "attributes": map[string]any{}, "instances": map[string]any{}},
		"labels":   lbls,
	}
	if t.Owner != nil {
		obj.SetOwnerReferences([]metav1.OwnerReference{*t.Owner})
	}
}

// inSync reports whether obj already is what fill would make it, but for
// the timestamp's value: it dates the last change, not the last look.
func (t *NodeFeatureTarget) inSync(obj *unstructured.Unstructured, want labels.Labels) bool {
	if !maps.Equal(obj.GetLabels(), map[string]string{NodeFeatureNodeLabel: t.Node}) {
		return false
	}
	if t.Owner != nil && !reflect.DeepEqual(obj.GetOwnerReferences(), []metav1.OwnerReference{*t.Owner}) {
		return false
	}
	features, _, err := unstructured.NestedMap(obj.Object, "spec", "features")
	if err != nil {
		return false
	}
	for _, v := range features {
		if m, ok := v.(map[string]any); v != nil && (!ok || len(m) > 0) {
			return false // features gpulet did not write
		}
	}
	got, _, err := unstructured.NestedStringMap(obj.Object, "spec", "labels")
	if err != nil || len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || (g != v && k != labels.TimestampKey) {
			return false
		}
	}
	return true
}

// CheckPolicy makes a dry-run create of the node's NodeFeature with a label
// the policy refuses (deploy/gpulet-nfd-rbac.yaml's gpulet-node-feature).
func (t *NodeFeatureTarget) CheckPolicy(ctx context.Context) error {
	obj := &unstructured.Unstructured{}
	obj.SetAPIVersion(NodeFeatureGVR.GroupVersion().String())
	obj.SetKind("NodeFeature")
	obj.SetName(NodeFeatureName(t.Node))
	obj.SetNamespace(t.Namespace)
	t.fill(obj, labels.Labels{PolicyProbeLabel: "1"})
	_, err := t.Client.Resource(NodeFeatureGVR).Namespace(t.Namespace).Create(ctx, obj,
		metav1.CreateOptions{FieldManager: "gpulet", DryRun: []string{metav1.DryRunAll}})
	return policyVerdict("create of "+t.String(), "the ValidatingAdmissionPolicy and binding of deploy/gpulet-nfd-rbac.yaml or the Helm chart", err)
}

// RemoveNodeFeature deletes node's NodeFeature object from namespace (nfd-
// master then takes its labels off the Node). It reports whether there was
// one. Other NodeFeatures (NFD's own, other nodes') are not touched.
func RemoveNodeFeature(ctx context.Context, c dynamic.Interface, namespace, node string) (bool, error) {
	t := &NodeFeatureTarget{Namespace: namespace, Node: node}
	err := c.Resource(NodeFeatureGVR).Namespace(namespace).Delete(ctx, NodeFeatureName(node), metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("delete %s (gpulet's service account needs delete on nodefeatures.nfd.k8s-sigs.io): %w", t, err)
	}
	return true, nil
}
