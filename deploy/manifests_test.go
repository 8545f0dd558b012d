// Package deploy holds the Kubernetes manifests operators apply; this test
// reads them with the Kubernetes API types so a typo fails here, not on a
// cluster.
package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

// docs splits a multi-document YAML file.
func docs(t *testing.T, name string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, d := range bytes.Split(data, []byte("\n---")) {
		if len(bytes.TrimSpace(d)) > 0 {
			out = append(out, d)
		}
	}
	return out
}

func strict(t *testing.T, data []byte, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		t.Fatal(err)
	}
}

func TestDaemonSetMatchesTheSeedGuide(t *testing.T) {
	var ds appsv1.DaemonSet
	strict(t, docs(t, "gpulet-daemonset.yaml")[0], &ds)
	checkSeedDaemonSet(t, &ds)
}

// checkSeedDaemonSet holds a gpulet DaemonSet to the seed guide's: namespace,
// tolerations, security settings, the device-plugins hostPath, priority.
func checkSeedDaemonSet(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	if ds.Kind != "DaemonSet" || ds.Namespace != "gpu-resources" {
		t.Fatalf("%s in %q, want a DaemonSet in gpu-resources", ds.Kind, ds.Namespace)
	}
	spec := ds.Spec.Template.Spec
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if !selects(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) {
		t.Errorf("selector %v does not match template labels %v", ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels)
	}
	tol := map[string]corev1.Toleration{}
	for _, tl := range spec.Tolerations {
		tol[tl.Key] = tl
	}
	if tl, ok := tol["CriticalAddonsOnly"]; !ok || tl.Operator != corev1.TolerationOpExists {
		t.Error("no CriticalAddonsOnly toleration")
	}
	if tl, ok := tol["nvidia.com/gpu"]; !ok || tl.Operator != corev1.TolerationOpExists || tl.Effect != corev1.TaintEffectNoSchedule {
		t.Error("no nvidia.com/gpu NoSchedule toleration")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("securityContext %+v: want allowPrivilegeEscalation false, drop ALL", sc)
	}
	if len(c.Args) == 0 || c.Args[0] != "run" {
		t.Errorf("args %v: the container must run the daemon", c.Args)
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil && v.HostPath.Path == "/var/lib/kubelet/device-plugins" && m.MountPath == v.HostPath.Path {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Error("hostPath /var/lib/kubelet/device-plugins is not mounted at the same path")
	}
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

func TestNamespace(t *testing.T) {
	var ns corev1.Namespace
	strict(t, docs(t, "namespace.yaml")[0], &ns)
	if ns.Kind != "Namespace" || ns.Name != "gpu-resources" {
		t.Fatalf("%s %s", ns.Kind, ns.Name)
	}
}

func TestJobsAskForOneGPU(t *testing.T) {
	files, _ := filepath.Glob("*job*.yaml")
	if len(files) == 0 {
		t.Fatal("no example Job")
	}
	for _, f := range files {
		var job batchv1.Job
		strict(t, docs(t, f)[0], &job)
		if job.Kind != "Job" {
			t.Errorf("%s: kind %q", f, job.Kind)
			continue
		}
		lim := job.Spec.Template.Spec.Containers[0].Resources.Limits["nvidia.com/gpu"]
		if lim.Cmp(resource.MustParse("1")) != 0 {
			t.Errorf("%s: limits nvidia.com/gpu = %s, want 1", f, lim.String())
		}
	}
}
