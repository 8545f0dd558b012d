package kube

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

const ns = "gpu-resources"

func ptr[T any](v T) *T { return &v }

func TestDaemonSetOwner(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "gpulet-abcde", Namespace: ns, UID: "pod-uid", OwnerReferences: []metav1.OwnerReference{
		{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "gpulet", UID: types.UID("ds-uid"), Controller: ptr(true), BlockOwnerDeletion: ptr(true)}}}}
	bare := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "bare", Namespace: ns}}
	c := fake.NewClientset(pod, bare)
	got, err := DaemonSetOwner(context.Background(), c, ns, "gpulet-abcde")
	if err != nil || !reflect.DeepEqual(got, &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "gpulet", UID: "ds-uid", Controller: ptr(true)}) {
		t.Errorf("DaemonSetOwner = %+v, %v; want the DaemonSet gpulet, controller", got, err)
	}
	if got, err := DaemonSetOwner(context.Background(), c, ns, "bare"); err != nil || got != nil {
		t.Errorf("a pod without DaemonSet: %+v, %v", got, err)
	}
	if _, err := DaemonSetOwner(context.Background(), c, ns, "gone"); err == nil || !strings.Contains(err.Error(), "get on pods") {
		t.Errorf("a missing pod: err = %v", err)
	}
}

func TestNamespace(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "namespace")
	if err := os.WriteFile(file, []byte("gpu-resources\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		configured, file, want string
		err                    bool
	}{
		{"from-env", file, "from-env", false},
		{"", file, "gpu-resources", false},
		{"", filepath.Join(dir, "missing"), "", true},
	} {
		got, err := Namespace(tt.configured, tt.file)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("Namespace(%q, %q) = %q, %v", tt.configured, tt.file, got, err)
		}
	}
}
