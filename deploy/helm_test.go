package deploy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/labels/publish"
)

// helmTemplate renders the chart with the real helm (HELM, else helm on
// PATH; `make unit` installs it). CI must not skip this.
func helmTemplate(t *testing.T, args ...string) map[string][]byte {
	t.Helper()
	return helmTemplateChart(t, "helm/gpulet", args...)
}

// helmBin is the real helm (HELM, else helm on PATH); it skips without one, but not in CI.
func helmBin(t *testing.T) string {
	t.Helper()
	helm := os.Getenv("HELM")
	if helm == "" {
		helm, _ = exec.LookPath("helm")
	}
	if helm == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("helm is not installed (make unit installs it into _output/bin)")
		}
		t.Skip("helm not found: set HELM or run make unit")
	}
	return helm
}

// helmTemplateChart renders chart (a folder or a packaged .tgz) and returns its objects by kind.
func helmTemplateChart(t *testing.T, chart string, args ...string) map[string][]byte {
	t.Helper()
	cmd := exec.Command(helmBin(t), append([]string{"template", "gpulet", chart, "--namespace", "gpu-resources"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, out)
	}
	byKind := map[string][]byte{}
	for _, d := range strings.Split(string(out), "\n---") {
		var meta struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if yaml.Unmarshal([]byte(d), &meta) == nil && meta.Kind != "" {
			// Every object by kind/name; the first of a kind also by kind.
			named := meta.Kind + "/" + meta.Metadata.Name
			if _, dup := byKind[named]; dup {
				t.Fatalf("two %s objects rendered", named)
			}
			byKind[named] = []byte(d)
			if _, dup := byKind[meta.Kind]; !dup {
				byKind[meta.Kind] = []byte(d)
			}
		}
	}
	return byKind
}

func env(c corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		m[e.Name] = e.Value
	}
	return m
}

func TestHelmChartDefaultsMatchTheManifest(t *testing.T) {
	objs := helmTemplate(t)
	var ds, plain appsv1.DaemonSet
	strict(t, objs["DaemonSet"], &ds)
	checkSeedDaemonSet(t, &ds)
	if _, ok := objs["ConfigMap"]; ok {
		t.Error("a ConfigMap without a config")
	}
	strict(t, docs(t, "gpulet-daemonset.yaml")[0], &plain)
	got, want := env(ds.Spec.Template.Spec.Containers[0]), env(plain.Spec.Template.Spec.Containers[0])
	for k, v := range want {
		if got[k] != v {
			t.Errorf("env %s = %q in the chart, %q in deploy/gpulet-daemonset.yaml", k, got[k], v)
		}
	}
}

func TestHelmChartWithConfigAndSimulator(t *testing.T) {
	cfg := "version: v1\nflags:\n  plugin:\n    passDeviceSpecs: true\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n"
	objs := helmTemplate(t, "--set", "sim.enabled=true", "--set", "sim.profile=dgx1-v100", "--set-string", "config="+cfg)
	var cm corev1.ConfigMap
	strict(t, objs["ConfigMap"], &cm)
	f, err := config.ParseFile([]byte(cm.Data["config.yaml"]))
	if err != nil {
		t.Fatalf("the rendered config does not load: %v\n%s", err, cm.Data["config.yaml"])
	}
	if sh := f.SharingConfig(); len(sh.Resources) != 1 || sh.Resources[0].Replicas != 4 {
		t.Errorf("config lost in rendering: %+v", sh)
	}
	var ds appsv1.DaemonSet
	strict(t, objs["DaemonSet"], &ds)
	checkSeedDaemonSet(t, &ds)
	e := env(ds.Spec.Template.Spec.Containers[0])
	if e["CONFIG_FILE"] != "/etc/gpulet/config.yaml" || e["GPULET_BACKEND"] != "sim" || e["GPULET_SIM_PROFILE"] != "dgx1-v100" {
		t.Errorf("env %v", e)
	}
	mounts := map[string]string{}
	for _, m := range ds.Spec.Template.Spec.Containers[0].VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	vols := map[string]corev1.Volume{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		vols[v.Name] = v
	}
	if mounts["config"] != "/etc/gpulet" || vols["config"].ConfigMap == nil || vols["config"].ConfigMap.Name != cm.Name {
		t.Errorf("config not mounted from %s: mounts %v", cm.Name, mounts)
	}
	if v := vols["sim"]; v.HostPath == nil || v.HostPath.Path != mounts["sim"] {
		t.Errorf("the sim root must be a hostPath at the same path (the runtime resolves device specs on the host): %+v, mounted at %q", v, mounts["sim"])
	}
	if ds.Spec.Template.Annotations["checksum/config"] == "" {
		t.Error("no config checksum: pods would not roll when the config changes")
	}
}

// On helm uninstall a pre-delete hook removes gpulet's labels from every
// node, with its own service account (gpulet's may patch only its node).
func TestHelmChartUninstallHook(t *testing.T) {
	objs := helmTemplate(t)
	var job batchv1.Job
	strict(t, objs["Job/gpulet-remove-labels"], &job)
	if job.Annotations["helm.sh/hook"] != "pre-delete" {
		t.Errorf("the label removal Job is not a pre-delete hook: %v", job.Annotations)
	}
	pod := job.Spec.Template.Spec
	if got := strings.Join(pod.Containers[0].Args, " "); got != "labels --remove --all-nodes" {
		t.Errorf("the hook runs %q, want labels --remove --all-nodes", got)
	}
	if pod.ServiceAccountName != "gpulet-uninstall" || pod.ServiceAccountName == "gpulet" {
		t.Errorf("the hook runs as %q, want its own gpulet-uninstall", pod.ServiceAccountName)
	}
	var role rbacv1.ClusterRole
	strict(t, objs["ClusterRole/gpulet-uninstall"], &role)
	verbs := map[string]bool{}
	for _, r := range role.Rules {
		for _, res := range r.Resources {
			if res == "nodes" {
				for _, v := range r.Verbs {
					verbs[v] = true
				}
			}
		}
	}
	if !verbs["list"] || !verbs["patch"] || len(verbs) != 3 {
		t.Errorf("uninstall role verbs on nodes %v, want get, list, patch", verbs)
	}
	var binding rbacv1.ClusterRoleBinding
	strict(t, objs["ClusterRoleBinding/gpulet-uninstall"], &binding)
	if binding.RoleRef.Name != "gpulet-uninstall" || len(binding.Subjects) != 1 || binding.Subjects[0].Name != "gpulet-uninstall" {
		t.Errorf("uninstall binding %+v", binding)
	}
	// No hook object outlives the hook, succeeded or failed; helm prints
	// the Job's log when it fails.
	for name, data := range objs {
		var meta struct {
			Metadata struct{ Annotations map[string]string }
		}
		if err := yaml.Unmarshal(data, &meta); err != nil {
			t.Fatal(err)
		}
		a := meta.Metadata.Annotations
		if a["helm.sh/hook"] == "" || !strings.Contains(name, "/") {
			continue
		}
		if got := a["helm.sh/hook-delete-policy"]; got != "before-hook-creation,hook-succeeded,hook-failed" {
			t.Errorf("%s: hook-delete-policy %q, want before-hook-creation,hook-succeeded,hook-failed", name, got)
		}
	}
	if job.Annotations["helm.sh/hook-output-log-policy"] != "hook-failed" {
		t.Errorf("the hook Job's log is lost on failure: %v", job.Annotations)
	}
	if e := env(pod.Containers[0]); e["GPULET_EXTRA_LABELS"] != "accelerator=nvidia" {
		t.Errorf("the hook's extra labels %q, want the DaemonSet's accelerator=nvidia", e["GPULET_EXTRA_LABELS"])
	}
	for _, args := range [][]string{
		{"--set", "nodeLabels.removeOnUninstall=false"},
		{"--set", "nodeLabels.nodeFeatureAPI=true"}, // NodeFeatures go with the DaemonSet
		{"--set", "nodeLabels.enabled=false"},
	} {
		if _, ok := helmTemplate(t, args...)["Job/gpulet-remove-labels"]; ok {
			t.Errorf("%v still renders the uninstall hook", args)
		}
	}
}

// takeOver=true sets GPULET_TAKE_OVER, which `gpulet run` reads as
// --take-over; the default sets nothing (gpulet holds back).
func TestHelmChartTakeOver(t *testing.T) {
	var ds appsv1.DaemonSet
	strict(t, helmTemplate(t)["DaemonSet"], &ds)
	if v, ok := env(ds.Spec.Template.Spec.Containers[0])["GPULET_TAKE_OVER"]; ok {
		t.Errorf("default chart sets GPULET_TAKE_OVER=%q", v)
	}
	strict(t, helmTemplate(t, "--set", "takeOver=true")["DaemonSet"], &ds)
	e := env(ds.Spec.Template.Spec.Containers[0])
	c := &config.Config{}
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	c.RunFlags(fs)
	if err := c.Resolve(fs, func(k string) string { return e[k] }); err != nil {
		t.Fatal(err)
	}
	if !c.TakeOver {
		t.Errorf("takeOver=true renders env %v, which gpulet does not read as take-over", e)
	}
}

// `make chart` packages the chart for a release: helm package with --version and --app-version.
// The packaged chart carries that appVersion and deploys the image tagged with it (DaemonSet and
// uninstall hook); the chart in the repository deploys :latest, as deploy/gpulet-daemonset.yaml.
func TestHelmPackageCarriesTheReleaseVersion(t *testing.T) {
	const release = "v1.7.0-rc.1"
	dir := t.TempDir()
	out, err := exec.Command(helmBin(t), "package", "helm/gpulet", "--version", strings.TrimPrefix(release, "v"),
		"--app-version", release, "-d", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("helm package: %v\n%s", err, out)
	}
	tgz := filepath.Join(dir, "gpulet-1.7.0-rc.1.tgz")
	out, err = exec.Command(helmBin(t), "show", "chart", tgz).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "appVersion: "+release+"\n") {
		t.Errorf("helm show chart: %v\n%s", err, out)
	}
	for chart, tag := range map[string]string{tgz: release, "helm/gpulet": "latest"} {
		objs := helmTemplateChart(t, chart)
		var ds appsv1.DaemonSet
		strict(t, objs["DaemonSet"], &ds)
		if got := ds.Spec.Template.Spec.Containers[0].Image; got != "ghcr.io/gpulet/gpulet:"+tag {
			t.Errorf("%s: DaemonSet image %s, want tag %s", chart, got, tag)
		}
		if hook := string(objs["Job"]); !strings.Contains(hook, "image: \"ghcr.io/gpulet/gpulet:"+tag+"\"") {
			t.Errorf("%s: uninstall hook Job does not run the image tagged %s:\n%s", chart, tag, hook)
		}
	}
}

// The hook removes gpulet's labels from 5,000 nodes within its deadline: it
// lists the nodes in pages (no Get per node) and patches each labelled one
// once, and at publish.RemoveAllQPS those calls fit in half the Job's
// activeDeadlineSeconds, with the time the code itself took added.
func TestUninstallHookScalesTo5000Nodes(t *testing.T) {
	const nodes = 5000
	objs := helmTemplate(t)
	var job batchv1.Job
	strict(t, objs["Job/gpulet-remove-labels"], &job)
	if job.Spec.ActiveDeadlineSeconds == nil {
		t.Fatal("the hook Job has no deadline")
	}
	deadline := time.Duration(*job.Spec.ActiveDeadlineSeconds) * time.Second
	extra := map[string]string{}
	for _, kv := range strings.Split(env(job.Spec.Template.Spec.Containers[0])["GPULET_EXTRA_LABELS"], ",") {
		k, v, _ := strings.Cut(kv, "=")
		extra[k] = v
	}

	var in []runtime.Object
	for i := range nodes {
		in = append(in, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("gpu-%04d", i),
			Labels:      map[string]string{"nvidia.com/gpu.count": "8", "accelerator": "nvidia", "kubernetes.io/hostname": "x"},
			Annotations: map[string]string{publish.OwnedAnnotation: "accelerator,nvidia.com/gpu.count"}}})
	}
	in = append(in, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cpu-0"}}) // never labelled: no patch
	c := fake.NewSimpleClientset(in...)                                         //nolint:staticcheck // NewClientset's field tracking costs ~20 ms a patch under -race
	// The patches are recorded, not applied: the fake's own cost is not the
	// hook's. Each is checked below.
	var mu sync.Mutex
	bodies := map[string]string{}
	c.PrependReactor("patch", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.PatchAction)
		mu.Lock()
		defer mu.Unlock()
		bodies[p.GetName()] = string(p.GetPatch())
		return true, &corev1.Node{}, nil
	})
	c.ClearActions()
	start := time.Now()
	removed, err := publish.RemoveAll(context.Background(), c, publish.Removable(extra))
	took := time.Since(start)
	if err != nil || len(removed) != nodes {
		t.Fatalf("removed from %d nodes, err %v; want %d", len(removed), err, nodes)
	}
	calls := map[string]int{}
	pages := 0
	for _, a := range c.Actions() {
		calls[a.GetVerb()]++
		if l, ok := a.(k8stesting.ListActionImpl); ok {
			if l.ListOptions.Limit <= 0 {
				t.Errorf("nodes listed without a page size")
			} else {
				pages = (nodes + int(l.ListOptions.Limit)) / int(l.ListOptions.Limit) // what a real server pages
			}
		}
	}
	if calls["get"] != 0 || calls["list"] != 1 || calls["patch"] != nodes || len(calls) != 2 {
		t.Errorf("calls %v, want one list, %d patches, no get", calls, nodes)
	}
	apiTime := time.Duration(float64(pages+calls["patch"]) / publish.RemoveAllQPS * float64(time.Second))
	t.Logf("%d nodes: %d list pages + %d patches at %d/s = %v, code %v, deadline %v", nodes, pages, calls["patch"], publish.RemoveAllQPS, apiTime, took, deadline)
	if apiTime+took > deadline/2 {
		t.Errorf("%v of rate-limited calls plus %v of code does not fit half the hook's %v deadline", apiTime, took, deadline)
	}
	const want = `{"metadata":{"annotations":{"gpulet.io/labels":null},"labels":{"accelerator":null,"nvidia.com/gpu.count":null}}}`
	for i := range nodes {
		if got := bodies[fmt.Sprintf("gpu-%04d", i)]; got != want {
			t.Fatalf("gpu-%04d patched with %s, want %s", i, got, want)
		}
	}
}
