package deploy

import (
	"encoding/json"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// checkProbes: /healthz is the liveness probe and /readyz the readiness
// probe, both on the named metrics port that GPULET_METRICS_ADDRESS opens.
func checkProbes(t *testing.T, where string, ds *appsv1.DaemonSet) {
	t.Helper()
	c := ds.Spec.Template.Spec.Containers[0]
	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 9401 {
		t.Errorf("%s: ports %+v, want metrics:9401", where, c.Ports)
	}
	if env(c)["GPULET_METRICS_ADDRESS"] != ":9401" {
		t.Errorf("%s: GPULET_METRICS_ADDRESS = %q", where, env(c)["GPULET_METRICS_ADDRESS"])
	}
	for name, p := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name || p.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s: probe %s is %+v", where, name, p)
		}
	}
	found := false
	for _, v := range ds.Spec.Template.Spec.Volumes {
		found = found || v.HostPath != nil && v.HostPath.Path == "/var/lib/kubelet/pod-resources"
	}
	if !found {
		t.Errorf("%s: the kubelet's pod-resources folder is not mounted (pod attribution)", where)
	}
}

func TestProbesAndMetricsPort(t *testing.T) {
	var plain, chart appsv1.DaemonSet
	strict(t, docs(t, "gpulet-daemonset.yaml")[0], &plain)
	checkProbes(t, "deploy/gpulet-daemonset.yaml", &plain)
	strict(t, helmTemplate(t)["DaemonSet"], &chart)
	checkProbes(t, "chart", &chart)
}

func TestHelmChartMetricsExtras(t *testing.T) {
	objs := helmTemplate(t, "--set", "metrics.service.enabled=true", "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.dashboard.enabled=true")
	var svc corev1.Service
	strict(t, objs["Service"], &svc)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 9401 || svc.Spec.Selector["name"] != "gpulet" {
		t.Errorf("service %+v", svc.Spec)
	}
	var sm struct {
		Spec struct {
			Endpoints []struct{ Port, Path string }
		}
	}
	if err := yaml.Unmarshal(objs["ServiceMonitor"], &sm); err != nil || len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" {
		t.Errorf("service monitor %s: %v", objs["ServiceMonitor"], err)
	}
	var cm corev1.ConfigMap
	strict(t, objs["ConfigMap"], &cm)
	var dash struct {
		Panels []struct {
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal([]byte(cm.Data["gpulet.json"]), &dash); err != nil || len(dash.Panels) == 0 {
		t.Fatalf("dashboard does not load: %v", err)
	}
	// The panels query the names the exporter serves (internal/metrics tests them).
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			if !strings.HasPrefix(tg.Expr, "DCGM_FI_") && !strings.HasPrefix(tg.Expr, "gpulet_") {
				t.Errorf("panel query %q", tg.Expr)
			}
		}
	}
	if _, ok := helmTemplate(t)["Service"]; ok {
		t.Error("a Service by default")
	}
}
