package publish

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"

	"github.com/gpulet/gpulet/internal/waittest"
)

// The fake clients do not run admission and ignore dry-run: the reactors
// here answer a dry-run write as the API server would, with the policy in
// force (Forbidden) or absent (admitted, nothing stored).
type policyAnswer int

const (
	policyInForce policyAnswer = iota
	policyAbsent
	apiDown
)

func dryRun(a k8stesting.Action) bool {
	switch a := a.(type) {
	case k8stesting.PatchActionImpl:
		return slices.Equal(a.PatchOptions.DryRun, []string{metav1.DryRunAll})
	case k8stesting.CreateActionImpl:
		return slices.Equal(a.CreateOptions.DryRun, []string{metav1.DryRunAll})
	}
	return false
}

func policyReactor(answer *atomic.Int32, gr schema.GroupResource, obj runtime.Object) k8stesting.ReactionFunc {
	return func(a k8stesting.Action) (bool, runtime.Object, error) {
		if !dryRun(a) {
			return false, nil, nil
		}
		switch policyAnswer(answer.Load()) {
		case policyInForce:
			return true, nil, apierrors.NewForbidden(gr, "x", errors.New("ValidatingAdmissionPolicy 'gpulet-node-labels' denied request"))
		case policyAbsent:
			return true, obj, nil
		default:
			return true, nil, apierrors.NewServiceUnavailable("etcd is down")
		}
	}
}

func TestNodePolicyCheck(t *testing.T) {
	for _, tt := range []struct {
		answer policyAnswer
		want   string // "" for no error
	}{
		{policyInForce, ""},
		{policyAbsent, "is not in force"},
		{apiDown, "etcd is down"},
	} {
		c := newClient(nil, nil)
		var answer atomic.Int32
		answer.Store(int32(tt.answer))
		c.PrependReactor("patch", "nodes", policyReactor(&answer, corev1.Resource("nodes"), &corev1.Node{}))
		err := NodeTarget{Client: c, Node: nodeName}.CheckPolicy(context.Background())
		if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("answer %d: err %v, want %q", tt.answer, err, tt.want)
		}
		p := patches(c)
		if len(p) != 1 || !strings.Contains(mustMarshal(p[0]), PolicyProbeLabel) || !dryRun(c.Actions()[0]) {
			t.Errorf("answer %d: calls %v, want one dry-run patch with %s", tt.answer, c.Actions(), PolicyProbeLabel)
		}
	}
}

func mustMarshal(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// Without the policy in force the publisher writes nothing, and says why;
// once it is, the labels land.
func TestPublisherWritesNothingWithoutThePolicy(t *testing.T) {
	c := newClient(nil, nil)
	var answer atomic.Int32
	answer.Store(int32(policyAbsent))
	c.PrependReactor("patch", "nodes", policyReactor(&answer, corev1.Resource("nodes"), &corev1.Node{}))
	var checks atomic.Int32
	c.PrependReactor("patch", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if dryRun(a) {
			checks.Add(1)
		}
		return false, nil, nil
	})
	h := startPublisherWith(t, c, func(p *Publisher) { p.CheckPolicy = true })
	waittest.Until(t, 5*time.Second, "three policy checks", func() bool { return checks.Load() >= 3 })
	for _, a := range c.Actions() {
		if a.GetVerb() == "patch" && !dryRun(a) {
			t.Fatalf("a write without the policy: %v", a)
		}
	}
	if l := nodeOf(t, c).Labels; len(l) != 0 {
		t.Fatalf("labels %v without the policy", l)
	}
	answer.Store(int32(policyInForce))
	waittest.Until(t, 5*time.Second, "labels once the policy is in force", func() bool { return nodeOf(t, c).Labels["nvidia.com/gpu.count"] == "2" })
	h.stop()
}

func TestNodeFeaturePolicyCheck(t *testing.T) {
	gr := schema.GroupResource{Group: NodeFeatureGVR.Group, Resource: NodeFeatureGVR.Resource}
	for _, tt := range []struct {
		answer policyAnswer
		exists bool
		want   string
	}{
		{policyInForce, false, ""},
		{policyAbsent, false, "is not in force"},
		{apiDown, false, "etcd is down"},
		{policyInForce, true, ""},
	} {
		var objs []string
		if tt.exists {
			objs = append(objs, foreignObjects)
		}
		c := newDynamic(t, objs...)
		var answer atomic.Int32
		answer.Store(int32(tt.answer))
		c.PrependReactor("create", "nodefeatures", policyReactor(&answer, gr, fromYAML(t, strings.Split(foreignObjects, "\n---\n")[0])))
		tgt := &NodeFeatureTarget{Client: c, Namespace: ns, Node: "gpu-node-2"}
		err := tgt.CheckPolicy(context.Background())
		if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("answer %d: err %v, want %q", tt.answer, err, tt.want)
		}
		if w := writes(c); len(w) != 1 || w[0] != "create nodefeatures" || !dryRun(c.Actions()[0]) {
			t.Errorf("answer %d: writes %v, want one dry-run create", tt.answer, w)
		}
	}
}
