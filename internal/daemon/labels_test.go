//go:build !nokube

package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/labels/publish"
)

// TestLabelTarget: the Node by default; with useNodeFeatureAPI the node's
// NodeFeature in the configured namespace, owned by the pod's DaemonSet, or
// unowned with a warning when the pod cannot say.
func TestLabelTarget(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "gpulet-x", Namespace: "gpu-resources",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "gpulet", UID: "ds-uid"}}}}
	client := fake.NewClientset(pod)
	dyn := func() (dynamic.Interface, error) { return dynamicfake.NewSimpleDynamicClient(runtime.NewScheme()), nil }
	for _, tt := range []struct {
		name   string
		labels config.LabelConfig
		want   string
		owner  string
		warn   string
	}{
		{"node", config.LabelConfig{NodeName: "n1", Namespace: "gpu-resources"}, "node n1", "", ""},
		{"node feature", config.LabelConfig{NodeName: "n1", NodeFeatureAPI: true, Namespace: "gpu-resources", PodName: "gpulet-x"},
			"NodeFeature gpu-resources/nvidia-features-for-n1", "ds-uid", ""},
		{"no POD_NAME", config.LabelConfig{NodeName: "n1", NodeFeatureAPI: true, Namespace: "gpu-resources"},
			"NodeFeature gpu-resources/nvidia-features-for-n1", "", "set POD_NAME"},
		{"the pod unreadable", config.LabelConfig{NodeName: "n1", NodeFeatureAPI: true, Namespace: "gpu-resources", PodName: "gone"},
			"NodeFeature gpu-resources/nvidia-features-for-n1", "", "get on pods"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, nil))
			got, err := labelTarget(context.Background(), &config.Config{Labels: tt.labels}, client, dyn, log)
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tt.want {
				t.Errorf("target %q, want %q", got, tt.want)
			}
			if nf, ok := got.(*publish.NodeFeatureTarget); ok {
				if uid := ""; nf.Owner != nil {
					uid = string(nf.Owner.UID)
					if uid != tt.owner {
						t.Errorf("owner %+v, want uid %q", nf.Owner, tt.owner)
					}
				} else if tt.owner != "" {
					t.Errorf("no owner, want uid %q", tt.owner)
				}
			}
			if (tt.warn == "") != !strings.Contains(buf.String(), "level=WARN") || !strings.Contains(buf.String(), tt.warn) {
				t.Errorf("log %q, want a warning with %q", buf.String(), tt.warn)
			}
		})
	}
}
