package deploy

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/config"
)

// The smallest grant per mode, as docs/security.md states it: what each
// mode of the plain manifests and of the chart runs with and may do,
// asserted exactly, so a new mount, grant or relaxed setting fails here.

// patched applies a strategic merge patch file to ds, as kubectl patch does.
func patched(t *testing.T, ds *appsv1.DaemonSet, file string) *appsv1.DaemonSet {
	t.Helper()
	base, err := json.Marshal(ds)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := yaml.YAMLToJSON(docs(t, file)[0])
	if err != nil {
		t.Fatal(err)
	}
	out, err := strategicpatch.StrategicMergePatch(base, patch, appsv1.DaemonSet{})
	if err != nil {
		t.Fatalf("patch %s: %v", file, err)
	}
	var merged appsv1.DaemonSet
	if err := json.Unmarshal(out, &merged); err != nil {
		t.Fatal(err)
	}
	return &merged
}

// gpuletContainer is the settings every gpulet DaemonSet container runs
// with: UID 0 (the kubelet's folders are root-owned 0750) and nothing else.
var gpuletContainer = corev1.SecurityContext{
	RunAsUser: ptr.To[int64](0), RunAsGroup: ptr.To[int64](0),
	AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
	SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
}

// hookContainer is the uninstall hook's: API calls only, so not root.
var hookContainer = corev1.SecurityContext{
	RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532), RunAsGroup: ptr.To[int64](65532),
	AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
	SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
}

var podDefault = corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}

// Host folders per mode: mount path -> read-only.
var (
	plainMounts = map[string]bool{"/var/lib/kubelet/device-plugins": false, "/var/lib/kubelet/pod-resources": true}
	cdiMounts   = with(plainMounts, config.DefaultCDISpecDir, false)
	draMountSet = with(cdiMounts, config.DefaultDRARegistrarDir, false, config.DefaultDRAPluginDir, false,
		config.DefaultDRAPluginDir+"/mps/shm", false)
)

func with(m map[string]bool, kv ...any) map[string]bool {
	c := maps.Clone(m)
	for i := 0; i < len(kv); i += 2 {
		c[kv[i].(string)] = kv[i+1].(bool)
	}
	return c
}

// checkPodSecurity holds a DaemonSet to exactly these settings and host
// folders (plus extra ones the test setup adds, such as the simulator's).
func checkPodSecurity(t *testing.T, what string, ds *appsv1.DaemonSet, mounts map[string]bool) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if mustJSON(spec.SecurityContext) != mustJSON(podDefault) {
		t.Errorf("%s: pod securityContext %s, want %s", what, mustJSON(spec.SecurityContext), mustJSON(podDefault))
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC || len(spec.InitContainers) != 0 || len(spec.Containers) != 1 {
		t.Errorf("%s: host namespaces or other containers: %+v", what, spec)
	}
	c := spec.Containers[0]
	if mustJSON(c.SecurityContext) != mustJSON(gpuletContainer) {
		t.Errorf("%s: container securityContext %s, want %s", what, mustJSON(c.SecurityContext), mustJSON(gpuletContainer))
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	got := map[string]bool{}
	for _, m := range c.VolumeMounts {
		if hp, ok := hostPaths[m.Name]; ok {
			got[hp] = m.ReadOnly
		}
	}
	if !maps.Equal(got, mounts) {
		t.Errorf("%s: host folders (path: read-only) %v, want %v", what, got, mounts)
	}
	if len(hostPaths) != len(got) {
		t.Errorf("%s: host volumes %v, mounted %v", what, hostPaths, got)
	}
	// The driver files and devices the NVIDIA runtime adds: nvidia-smi and
	// NVML (utility) in every mode; the MPS binaries, libcuda and the UVM
	// devices (compute) only with DRA, for its claims' MPS daemons.
	e := env(c)
	caps := "utility"
	if e["GPULET_DRA"] == "true" {
		caps = "compute,utility"
	}
	if e["NVIDIA_DRIVER_CAPABILITIES"] != caps {
		t.Errorf("%s: NVIDIA_DRIVER_CAPABILITIES=%q, want %q", what, e["NVIDIA_DRIVER_CAPABILITIES"], caps)
	}
}

// checkMPSHost holds a DRA DaemonSet to what mps.CheckHost needs before an
// MPS claim's daemon starts: the plugin folder (which holds the daemons'
// pipe and log folders) mounted from the host at its own path, and the
// host's <plugin folder>/mps/shm, nothing wider, as /dev/shm.
func checkMPSHost(t *testing.T, what string, ds *appsv1.DaemonSet, pluginDir string) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounted := map[string]string{} // container path -> host path
	for _, m := range spec.Containers[0].VolumeMounts {
		mounted[m.MountPath] = hostPaths[m.Name]
	}
	if got := mounted[pluginDir]; got != pluginDir {
		t.Errorf("%s: the plugin folder %s is mounted from host %q", what, pluginDir, got)
	}
	if got, want := mounted["/dev/shm"], pluginDir+"/mps/shm"; got != want {
		t.Errorf("%s: /dev/shm is host %q, want %s", what, got, want)
	}
	if e := env(spec.Containers[0]); e["GPULET_DRA_PLUGIN_DIR"] != "" && e["GPULET_DRA_PLUGIN_DIR"] != pluginDir {
		t.Errorf("%s: GPULET_DRA_PLUGIN_DIR=%q, mounted %s", what, e["GPULET_DRA_PLUGIN_DIR"], pluginDir)
	}
}

// grants are what the service account a pod runs as may do, from every
// ClusterRole and Role bound to it: "group/resource" -> sorted verbs, and
// the admission policies matching it.
type grants struct {
	rules    map[string][]string
	policies []string
}

func grantsOf(t *testing.T, objs map[string][]byte, sa string) grants {
	t.Helper()
	roles := map[string][]rbacv1.PolicyRule{}
	var bound []string
	g := grants{rules: map[string][]string{}}
	for name, data := range objs {
		kind, _, ok := strings.Cut(name, "/")
		if !ok {
			continue
		}
		switch kind {
		case "ClusterRole", "Role":
			var r rbacv1.ClusterRole
			if err := yaml.Unmarshal(data, &r); err != nil {
				t.Fatal(err)
			}
			roles[kind+"/"+r.Name] = r.Rules
		case "ClusterRoleBinding", "RoleBinding":
			var b rbacv1.ClusterRoleBinding
			if err := yaml.Unmarshal(data, &b); err != nil {
				t.Fatal(err)
			}
			for _, s := range b.Subjects {
				if s.Kind == "ServiceAccount" && s.Name == sa {
					bound = append(bound, b.RoleRef.Kind+"/"+b.RoleRef.Name)
				}
			}
		case "ValidatingAdmissionPolicy":
			if strings.Contains(string(data), "system:serviceaccount:gpu-resources:"+sa+"'") {
				var p struct{ Metadata struct{ Name string } }
				if err := yaml.Unmarshal(data, &p); err != nil {
					t.Fatal(err)
				}
				g.policies = append(g.policies, p.Metadata.Name)
			}
		}
	}
	for _, ref := range bound {
		for _, rule := range roles[ref] {
			for _, grp := range rule.APIGroups {
				for _, res := range rule.Resources {
					k := grp + "/" + res
					v := slices.Sorted(slices.Values(append(g.rules[k], rule.Verbs...)))
					g.rules[k] = slices.Compact(v)
				}
			}
		}
	}
	slices.Sort(g.policies)
	return g
}

var (
	nodeLabelGrant = map[string][]string{"/nodes": {"get", "patch"}, "/events": {"create"}}
	// Per-node configuration: read the Node's label (get, an informer on
	// its own Node) and post Events; its annotations use nodeLabelGrant's patch.
	nodeConfigGrant = map[string][]string{"/nodes": {"get", "list", "watch"}, "/events": {"create"}}
	nfdGrant        = map[string][]string{"nfd.k8s-sigs.io/nodefeatures": {"create", "delete", "get", "update"}, "/pods": {"get"}}
	draGrant        = map[string][]string{"resource.k8s.io/resourceslices": {"create", "delete", "get", "list", "update", "watch"},
		"resource.k8s.io/resourceclaims": {"get"}, "/nodes": {"get"}}
)

func union(ms ...map[string][]string) map[string][]string {
	out := map[string][]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = slices.Compact(slices.Sorted(slices.Values(append(out[k], v...))))
		}
	}
	return out
}

func checkGrants(t *testing.T, what string, got grants, rules map[string][]string, policies ...string) {
	t.Helper()
	if mustJSON(got.rules) != mustJSON(rules) {
		t.Errorf("%s: gpulet may %v, want exactly %v", what, got.rules, rules)
	}
	slices.Sort(policies)
	if !slices.Equal(got.policies, policies) {
		t.Errorf("%s: admission policies %v, want %v (one per write path)", what, got.policies, policies)
	}
}

// plainObjects are the named objects of the plain manifest files.
func plainObjects(t *testing.T, files ...string) map[string][]byte {
	out := map[string][]byte{}
	for _, f := range files {
		maps.Copy(out, namedDocs(t, f))
	}
	return out
}

func TestSmallestGrantPerModePlainManifests(t *testing.T) {
	var base appsv1.DaemonSet
	strict(t, docs(t, "gpulet-daemonset.yaml")[0], &base)
	checkPodSecurity(t, "plain (envvar)", &base, plainMounts)
	cdi := patched(t, &base, "gpulet-cdi-daemonset-patch.yaml")
	if e := env(cdi.Spec.Template.Spec.Containers[0]); !strings.HasPrefix(e["DEVICE_LIST_STRATEGY"], "cdi-") {
		t.Errorf("the CDI patch leaves DEVICE_LIST_STRATEGY=%q", e["DEVICE_LIST_STRATEGY"])
	}
	checkPodSecurity(t, "plain + CDI patch", cdi, cdiMounts)
	dra := patched(t, &base, "gpulet-dra-daemonset-patch.yaml")
	checkPodSecurity(t, "plain + DRA patch", dra, draMountSet)
	checkMPSHost(t, "plain + DRA patch", dra, config.DefaultDRAPluginDir)

	checkGrants(t, "labels on the Node", grantsOf(t, plainObjects(t, "gpulet-rbac.yaml"), "gpulet"), nodeLabelGrant, "gpulet-node-labels")
	checkGrants(t, "labels through NFD", grantsOf(t, plainObjects(t, "gpulet-nfd-rbac.yaml"), "gpulet"), nfdGrant, "gpulet-node-feature")
	checkGrants(t, "labels on the Node + DRA", grantsOf(t, plainObjects(t, "gpulet-rbac.yaml", "gpulet-dra-rbac.yaml"), "gpulet"),
		union(nodeLabelGrant, draGrant), "gpulet-node-labels", "gpulet-resourceslices")
	checkPodSecurity(t, "plain + per-node config patch", patched(t, &base, "gpulet-node-config-daemonset-patch.yaml"), plainMounts)
	checkGrants(t, "labels on the Node + per-node config", grantsOf(t, plainObjects(t, "gpulet-rbac.yaml", "gpulet-node-config-rbac.yaml"), "gpulet"),
		union(nodeLabelGrant, nodeConfigGrant), "gpulet-node-labels")
}

func TestSmallestGrantPerModeChart(t *testing.T) {
	for _, tc := range []struct {
		mode     string
		args     []string
		mounts   map[string]bool
		rules    map[string][]string
		policies []string
	}{
		{"plain (envvar), labels on the Node", nil, plainMounts, nodeLabelGrant, []string{"gpulet-node-labels"}},
		{"cdi-cri", []string{"--set", "deviceListStrategy=cdi-cri"}, cdiMounts, nodeLabelGrant, []string{"gpulet-node-labels"}},
		{"cdi-annotations", []string{"--set", "deviceListStrategy=cdi-annotations"}, cdiMounts, nodeLabelGrant, []string{"gpulet-node-labels"}},
		{"DRA", []string{"--set", "dra.enabled=true"}, draMountSet, union(nodeLabelGrant, draGrant),
			[]string{"gpulet-node-labels", "gpulet-resourceslices"}},
		{"labels through NFD", []string{"--set", "nodeLabels.nodeFeatureAPI=true"}, plainMounts, nfdGrant, []string{"gpulet-node-feature"}},
		{"no labels", []string{"--set", "nodeLabels.enabled=false"}, plainMounts, map[string][]string{}, nil},
		{"per-node config", []string{"--set-string", "config.map.default=version: v1"}, plainMounts, union(nodeLabelGrant, nodeConfigGrant),
			[]string{"gpulet-node-labels"}},
		{"no labels, DRA", []string{"--set", "nodeLabels.enabled=false", "--set", "dra.enabled=true"}, draMountSet, draGrant,
			[]string{"gpulet-resourceslices"}},
		{"DRA, another plugin folder", []string{"--set", "dra.enabled=true", "--set", "dra.pluginDir=/data/kubelet/plugins/gpu.nvidia.com"},
			with(cdiMounts, config.DefaultDRARegistrarDir, false, "/data/kubelet/plugins/gpu.nvidia.com", false,
				"/data/kubelet/plugins/gpu.nvidia.com/mps/shm", false),
			union(nodeLabelGrant, draGrant), []string{"gpulet-node-labels", "gpulet-resourceslices"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			objs := helmTemplate(t, tc.args...)
			var ds appsv1.DaemonSet
			strict(t, objs["DaemonSet"], &ds)
			checkPodSecurity(t, tc.mode, &ds, tc.mounts)
			if e := env(ds.Spec.Template.Spec.Containers[0]); e["GPULET_DRA"] == "true" {
				checkMPSHost(t, tc.mode, &ds, e["GPULET_DRA_PLUGIN_DIR"])
			}
			checkGrants(t, tc.mode, grantsOf(t, objs, "gpulet"), tc.rules, tc.policies...)
			if data, ok := objs["Job/gpulet-remove-labels"]; ok {
				var job batchv1.Job
				strict(t, data, &job)
				p := job.Spec.Template.Spec
				if mustJSON(p.SecurityContext) != mustJSON(podDefault) {
					t.Errorf("hook pod securityContext %s", mustJSON(p.SecurityContext))
				}
				for _, c := range p.Containers {
					if mustJSON(c.SecurityContext) != mustJSON(hookContainer) {
						t.Errorf("hook container securityContext %s, want %s", mustJSON(c.SecurityContext), mustJSON(hookContainer))
					}
				}
				if len(p.Volumes) != 0 {
					t.Errorf("the hook mounts %v", p.Volumes)
				}
				checkGrants(t, tc.mode+" (uninstall hook)", grantsOf(t, objs, "gpulet-uninstall"),
					map[string][]string{"/nodes": {"get", "list", "patch"}})
			}
		})
	}
}
