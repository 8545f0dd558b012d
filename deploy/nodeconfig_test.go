package deploy

import (
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/nodeconfig"
)

// nodeConfigEnv are the settings of NVIDIA's config-manager gpulet reads.
var nodeConfigEnv = []string{"CONFIG_FILE_SRCDIR", "NODE_LABEL", "DEFAULT_CONFIG", "FALLBACK_STRATEGIES"}

// configMapMount checks that c mounts the ConfigMap at CONFIG_FILE_SRCDIR
// and returns the ConfigMap's name.
func configMapMount(t *testing.T, ds *appsv1.DaemonSet) string {
	t.Helper()
	c := ds.Spec.Template.Spec.Containers[0]
	dir := env(c)["CONFIG_FILE_SRCDIR"]
	for _, m := range c.VolumeMounts {
		if m.MountPath != dir {
			continue
		}
		for _, v := range ds.Spec.Template.Spec.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil && m.ReadOnly {
				return v.ConfigMap.Name
			}
		}
	}
	t.Fatalf("no ConfigMap mounted read-only at CONFIG_FILE_SRCDIR=%q: %+v", dir, c.VolumeMounts)
	return ""
}

// The plain manifests: the patch sets NVIDIA's config-manager settings,
// each a gpulet setting, and mounts the example ConfigMap, whose configs
// all load; a Node without the label gets "default".
func TestNodeConfigManifests(t *testing.T) {
	var base appsv1.DaemonSet
	strict(t, docs(t, "gpulet-daemonset.yaml")[0], &base)
	ds := patched(t, &base, "gpulet-node-config-daemonset-patch.yaml")
	e := env(ds.Spec.Template.Spec.Containers[0])
	for _, k := range []string{"DEVICE_LIST_STRATEGY", "DEVICE_ID_STRATEGY"} {
		if _, set := e[k]; set {
			t.Errorf("the patch leaves %s set: it would win over every per-node config", k)
		}
	}
	for _, k := range nodeConfigEnv {
		if !slices.ContainsFunc(config.Settings, func(s *config.Setting) bool { return slices.Contains(s.Env, k) }) {
			t.Errorf("%s is no gpulet setting", k)
		}
	}
	var cm corev1.ConfigMap
	strict(t, docs(t, "examples/node-config.yaml")[0], &cm)
	if name := configMapMount(t, ds); name != cm.Name || cm.Namespace != ds.Namespace {
		t.Errorf("the patch mounts ConfigMap %s, the example is %s/%s", name, cm.Namespace, cm.Name)
	}
	var names []string
	for k, v := range cm.Data {
		names = append(names, k)
		if _, err := config.ParseFile([]byte(v)); err != nil {
			t.Errorf("example config %s: %v", k, err)
		}
	}
	slices.Sort(names)
	c, err := nodeconfig.Choose("", names, e["DEFAULT_CONFIG"], strings.Split(e["FALLBACK_STRATEGIES"], ","))
	if err != nil || c.Name != "default" || e["NODE_LABEL"] != config.DefaultNodeConfigLabel {
		t.Errorf("without a label: %+v, %v; label %q", c, err, e["NODE_LABEL"])
	}
}

// nvidiaChart is NVIDIA's nvidia-device-plugin chart from the module cache
// (the version test/e2e/nvidiabins pins), or "" when it is not there.
func nvidiaChart() string {
	mod := os.Getenv("GOMODCACHE")
	if mod == "" {
		mod = filepath.Join(build.Default.GOPATH, "pkg", "mod")
	}
	dir := filepath.Join(mod, "github.com", "!n!v!i!d!i!a", "k8s-device-plugin@v0.19.3", "deployments", "helm", "nvidia-device-plugin")
	if _, err := os.Stat(dir); err != nil {
		return ""
	}
	return dir
}

// An operator's values for NVIDIA's chart (testdata/nvidia-values.yaml,
// NVIDIA's keys) install gpulet's chart unchanged: the same ConfigMap of
// named configs, mounted at CONFIG_FILE_SRCDIR, with the label, default and
// fallbacks NVIDIA's config-manager gets, applied live (no checksum
// annotation: a ConfigMap edit rolls nothing). NVIDIA's own chart, from the
// module cache, is rendered with the same file to compare.
func TestHelmChartTakesNVIDIAsConfigValues(t *testing.T) {
	objs := helmTemplate(t, "-f", "testdata/nvidia-values.yaml")
	var ds appsv1.DaemonSet
	strict(t, objs["DaemonSet"], &ds)
	checkSeedDaemonSet(t, &ds)
	if a := ds.Spec.Template.Annotations["checksum/config"]; a != "" {
		t.Errorf("a checksum annotation (%s) would roll every pod on a ConfigMap edit", a)
	}
	var cm corev1.ConfigMap
	strict(t, objs["ConfigMap/gpulet-configs"], &cm)
	if name := configMapMount(t, &ds); name != cm.Name {
		t.Errorf("mounts %s, renders %s", name, cm.Name)
	}
	for k, v := range cm.Data {
		if _, err := config.ParseFile([]byte(v)); err != nil {
			t.Errorf("config %s does not load: %v", k, err)
		}
	}
	ours := env(ds.Spec.Template.Spec.Containers[0])
	if ours["FALLBACK_STRATEGIES"] != "named,single" || ours["NODE_LABEL"] != config.DefaultNodeConfigLabel {
		t.Errorf("env %v", ours)
	}
	g := grantsOf(t, objs, "gpulet")
	checkGrants(t, "NVIDIA's values", g, union(nodeLabelGrant, nodeConfigGrant), "gpulet-node-labels")

	chart := nvidiaChart()
	if chart == "" {
		t.Skip("NVIDIA's chart (github.com/NVIDIA/k8s-device-plugin@v0.19.3) is not in the module cache")
	}
	theirs := helmTemplateChart(t, chart, "-f", "testdata/nvidia-values.yaml")
	var ncm corev1.ConfigMap
	strict(t, theirs["ConfigMap"], &ncm)
	if mustJSON(ncm.Data) != mustJSON(cm.Data) {
		t.Errorf("ConfigMap data differs:\nNVIDIA's %s\ngpulet's %s", mustJSON(ncm.Data), mustJSON(cm.Data))
	}
	var nds appsv1.DaemonSet
	strict(t, theirs["DaemonSet"], &nds)
	var sidecar map[string]string
	for _, c := range nds.Spec.Template.Spec.Containers {
		if slices.Contains(c.Command, "config-manager") {
			sidecar = env(c)
		}
	}
	if sidecar == nil {
		t.Fatal("NVIDIA's chart rendered no config-manager sidecar")
	}
	for _, k := range []string{"NODE_LABEL", "DEFAULT_CONFIG", "FALLBACK_STRATEGIES"} {
		if sidecar[k] != ours[k] {
			t.Errorf("%s: NVIDIA's config-manager gets %q, gpulet %q", k, sidecar[k], ours[k])
		}
	}
}

// NVIDIA's chart refuses config.name with config.map, and a map no config
// is chosen from for a Node without the label; so does gpulet's.
func TestHelmChartRefusesNVIDIAsBadConfigValues(t *testing.T) {
	helm := helmBin(t)
	for _, tc := range []struct {
		name string
		args []string
		says string
	}{
		{"name and map", []string{"--set", "config.name=mine", "--set-string", "config.map.a=version: v1"}, "both set"},
		{"no default", []string{"--set-string", "config.map.a=version: v1", "--set-string", "config.map.b=version: v1"}, "none is chosen"},
	} {
		out, err := exec.Command(helm, append([]string{"template", "gpulet", "helm/gpulet", "--namespace", "gpu-resources"}, tc.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.says) {
			t.Errorf("%s: err %v\n%s", tc.name, err, out)
		}
	}
	// An existing ConfigMap by name: mounted, nothing rendered for it.
	objs := helmTemplate(t, "--set", "config.name=site-configs", "--set", "config.default=ts4")
	var ds appsv1.DaemonSet
	strict(t, objs["DaemonSet"], &ds)
	if name := configMapMount(t, &ds); name != "site-configs" || env(ds.Spec.Template.Spec.Containers[0])["DEFAULT_CONFIG"] != "ts4" {
		t.Errorf("mounts %s, env %v", name, env(ds.Spec.Template.Spec.Containers[0]))
	}
	if _, ok := objs["ConfigMap"]; ok {
		t.Error("a ConfigMap rendered for config.name")
	}
}
