package deploy

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/google/cel-go/cel"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourcev1 "k8s.io/api/resource/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/dra"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/inventory"
)

func deviceClasses(t *testing.T) map[string]resourcev1.DeviceClass {
	out := map[string]resourcev1.DeviceClass{}
	for _, d := range docs(t, "dra-deviceclasses.yaml") {
		var dc resourcev1.DeviceClass
		strict(t, d, &dc)
		out[dc.Name] = dc
	}
	return out
}

// published returns the devices gpulet's DRA driver publishes for a
// simulated profile.
func published(t *testing.T, profile string) []resourcev1.Device {
	p, err := sim.LoadProfile(profile)
	if err != nil {
		t.Fatal(err)
	}
	node, err := p.Node()
	if err != nil {
		t.Fatal(err)
	}
	return dra.Devices(inventory.NewStore(node).Snapshot(), dra.DeviceOptions{})
}

// celSelects evaluates a DeviceClass selector on a device with cel-go, the
// device shaped as the scheduler shows it (attributes by domain; names
// without one are the driver's).
func celSelects(t *testing.T, expr string, d resourcev1.Device) bool {
	t.Helper()
	attrs := map[string]map[string]any{}
	for name, a := range d.Attributes {
		domain, id, ok := strings.Cut(string(name), "/")
		if !ok {
			domain, id = dra.DriverName, domain
		}
		if attrs[domain] == nil {
			attrs[domain] = map[string]any{}
		}
		switch {
		case a.StringValue != nil:
			attrs[domain][id] = *a.StringValue
		case a.IntValue != nil:
			attrs[domain][id] = *a.IntValue
		case a.VersionValue != nil:
			attrs[domain][id] = *a.VersionValue
		}
	}
	env, err := cel.NewEnv(cel.Variable("device", cel.DynType))
	if err != nil {
		t.Fatal(err)
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		t.Fatalf("compile %q: %v", expr, iss.Err())
	}
	prg, err := env.Program(ast)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := prg.ContextEval(context.Background(), map[string]any{"device": map[string]any{"driver": dra.DriverName, "attributes": attrs}})
	if err != nil {
		t.Fatalf("eval %q: %v", expr, err)
	}
	return out.Value() == true
}

func TestDRADeviceClassesSelectGpuletsDevices(t *testing.T) {
	classes := deviceClasses(t)
	tests := []struct {
		profile, class string
		want           int
	}{
		{"dgx-h100", "gpu.nvidia.com", 8},
		{"dgx-h100", "mig.nvidia.com", 0},
		{"mig", "gpu.nvidia.com", 0},
		{"mig", "mig.nvidia.com", 8},
	}
	for _, tc := range tests {
		t.Run(tc.profile+"/"+tc.class, func(t *testing.T) {
			dc, ok := classes[tc.class]
			if !ok || len(dc.Spec.Selectors) != 1 {
				t.Fatalf("no DeviceClass %s with one selector", tc.class)
			}
			if want := map[string]string{"gpu.nvidia.com": "nvidia.com/gpu"}[tc.class]; ptr.Deref(dc.Spec.ExtendedResourceName, "") != want {
				t.Errorf("%s: extendedResourceName %v, want %q (NVIDIA's)", tc.class, dc.Spec.ExtendedResourceName, want)
			}
			n := 0
			for _, d := range publishedFor(t, tc.profile) {
				if celSelects(t, dc.Spec.Selectors[0].CEL.Expression, d) {
					n++
				}
			}
			if n != tc.want {
				t.Errorf("%s selects %d devices, want %d", tc.class, n, tc.want)
			}
		})
	}
}

func publishedFor(t *testing.T, profile string) []resourcev1.Device {
	if profile == "mig" {
		return publishedMIG(t)
	}
	return published(t, profile)
}

// publishedMIG is the dgx-h100 with one MIG instance on every GPU.
func publishedMIG(t *testing.T) []resourcev1.Device {
	p, err := sim.LoadProfile("dgx-h100")
	if err != nil {
		t.Fatal(err)
	}
	node, err := p.Node()
	if err != nil {
		t.Fatal(err)
	}
	for i := range node.GPUs {
		node.GPUs[i].MIGEnabled = true
		node.GPUs[i].MIGDevices = []inventory.MIGDevice{{UUID: "MIG-" + node.GPUs[i].UUID, Profile: "1g.10gb", GI: 1}}
	}
	return dra.Devices(inventory.NewStore(node).Snapshot(), dra.DeviceOptions{})
}

func draRBAC(t *testing.T, byKind map[string][]byte, role, binding string) (rbacv1.ClusterRole, rbacv1.ClusterRoleBinding) {
	t.Helper()
	var r rbacv1.ClusterRole
	var b rbacv1.ClusterRoleBinding
	strict(t, byKind[role], &r)
	strict(t, byKind[binding], &b)
	return r, b
}

func namedDocs(t *testing.T, name string) map[string][]byte {
	out := map[string][]byte{}
	for _, d := range docs(t, name) {
		var meta struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if err := yaml.Unmarshal(d, &meta); err != nil {
			t.Fatal(err)
		}
		out[meta.Kind+"/"+meta.Metadata.Name] = d
	}
	return out
}

// checkDRARBAC holds the role to what the driver does: slices of its node,
// claims it prepares, its Node; and binds it to gpulet's service account.
func checkDRARBAC(t *testing.T, r rbacv1.ClusterRole, b rbacv1.ClusterRoleBinding, sa, ns string) {
	t.Helper()
	want := map[string][]string{
		"resource.k8s.io/resourceslices": {"create", "delete", "get", "list", "update", "watch"},
		"resource.k8s.io/resourceclaims": {"get"},
		"/nodes":                         {"get"},
	}
	got := map[string][]string{}
	for _, rule := range r.Rules {
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				v := slices.Clone(rule.Verbs)
				slices.Sort(v)
				got[g+"/"+res] = v
			}
		}
	}
	if mustJSON(got) != mustJSON(want) {
		t.Errorf("DRA role grants %v, want %v", got, want)
	}
	if b.RoleRef.Name != r.Name || len(b.Subjects) != 1 || b.Subjects[0].Name != sa || b.Subjects[0].Namespace != ns {
		t.Errorf("binding %+v does not tie role %s to %s/%s", b, r.Name, ns, sa)
	}
}

func draMounts(t *testing.T, ds *appsv1.DaemonSet) map[string]string {
	t.Helper()
	hostPaths := map[string]string{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	out := map[string]string{}
	for _, m := range ds.Spec.Template.Spec.Containers[0].VolumeMounts {
		if hp, ok := hostPaths[m.Name]; ok {
			// /dev/shm is the MPS shm folder (checkMPSHost); the others are
			// the kubelet's and the runtime's folders.
			if hp != m.MountPath && m.MountPath != "/dev/shm" {
				t.Errorf("volume %s: host %s mounted at %s; the kubelet and runtime need the same path", m.Name, hp, m.MountPath)
			}
			out[m.MountPath] = m.Name
		}
	}
	return out
}

func TestDRAManifests(t *testing.T) {
	var sa struct {
		Metadata struct{ Name, Namespace string }
	}
	if err := yaml.Unmarshal(plainByKind(t, "gpulet-rbac.yaml")["ServiceAccount"], &sa); err != nil {
		t.Fatal(err)
	}
	r, b := draRBAC(t, namedDocs(t, "gpulet-dra-rbac.yaml"), "ClusterRole/gpulet-dra", "ClusterRoleBinding/gpulet-dra")
	checkDRARBAC(t, r, b, sa.Metadata.Name, sa.Metadata.Namespace)

	var patch, base appsv1.DaemonSet
	strict(t, docs(t, "gpulet-dra-daemonset-patch.yaml")[0], &patch)
	strict(t, plainByKind(t, "gpulet-daemonset.yaml")["DaemonSet"], &base)
	mounts := draMounts(t, &patch)
	// The per-claim CDI specs go into the host's CDI folder: the patch mounts
	// it (the plain DaemonSet does not, with its envvar strategy).
	for _, p := range []string{config.DefaultDRARegistrarDir, config.DefaultDRAPluginDir, config.DefaultCDISpecDir} {
		if _, ok := mounts[p]; !ok {
			t.Errorf("the DRA patch does not mount %s (has %v)", p, mounts)
		}
	}
	merged := patched(t, &base, "gpulet-dra-daemonset-patch.yaml")
	checkPodVolumes(t, "DaemonSet + DRA patch", merged)
	if e := env(patch.Spec.Template.Spec.Containers[0]); e["GPULET_DRA"] != "true" {
		t.Errorf("the DRA patch does not turn DRA on: %v", e)
	}
}

func TestHelmChartDRA(t *testing.T) {
	off := helmTemplate(t)
	for k := range off {
		if strings.HasPrefix(k, "DeviceClass") || strings.HasSuffix(k, "-dra") {
			t.Errorf("dra.enabled=false renders %s", k)
		}
	}
	objs := helmTemplate(t, "--set", "dra.enabled=true", "--set", "dra.devices=0\\,1")
	plain := deviceClasses(t)
	for name, want := range plain {
		var got resourcev1.DeviceClass
		strict(t, objs["DeviceClass/"+name], &got)
		if mustJSON(got.Spec) != mustJSON(want.Spec) {
			t.Errorf("chart's DeviceClass %s differs from deploy/dra-deviceclasses.yaml", name)
		}
	}
	r, b := draRBAC(t, objs, "ClusterRole/gpulet-dra", "ClusterRoleBinding/gpulet-dra")
	checkDRARBAC(t, r, b, "gpulet", "gpu-resources")

	var ds, patch appsv1.DaemonSet
	strict(t, objs["DaemonSet"], &ds)
	checkPodVolumes(t, "chart with dra.enabled", &ds)
	strict(t, docs(t, "gpulet-dra-daemonset-patch.yaml")[0], &patch)
	if got, want := draMounts(t, &ds), draMounts(t, &patch); !mapsContain(got, want) {
		t.Errorf("chart's DRA mounts %v lack the patch's %v", got, want)
	}
	if e := env(ds.Spec.Template.Spec.Containers[0]); e["GPULET_DRA"] != "true" || e["GPULET_DRA_DEVICES"] != "0,1" {
		t.Errorf("chart's DRA env %v", e)
	}
	noClasses := helmTemplate(t, "--set", "dra.enabled=true", "--set", "dra.deviceClasses=false")
	if _, ok := noClasses["DeviceClass"]; ok {
		t.Error("dra.deviceClasses=false still renders DeviceClasses")
	}
}

func mapsContain(got, want map[string]string) bool {
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// The examples the README shows and the e2e applies: valid objects that ask
// for gpulet's classes and constrain on attributes gpulet publishes.
func TestDRAExamples(t *testing.T) {
	classes := deviceClasses(t)
	attrs := map[resourcev1.FullyQualifiedName]bool{}
	for _, d := range published(t, "dgx-h100") {
		for name := range d.Attributes {
			fq := string(name)
			if !strings.Contains(fq, "/") {
				fq = dra.DriverName + "/" + fq
			}
			attrs[resourcev1.FullyQualifiedName(fq)] = true
		}
	}
	for _, file := range []string{"one-gpu.yaml", "h100-40gi.yaml", "two-gpus-nvlink.yaml", "two-gpus-same-numa.yaml"} {
		t.Run(file, func(t *testing.T) {
			d := docs(t, "examples/dra/"+file)
			if len(d) != 2 {
				t.Fatalf("%d documents, want a ResourceClaimTemplate and a Job", len(d))
			}
			var tmpl resourcev1.ResourceClaimTemplate
			var job batchv1.Job
			strict(t, d[0], &tmpl)
			strict(t, d[1], &job)
			for _, r := range tmpl.Spec.Spec.Devices.Requests {
				if r.Exactly == nil || classes[r.Exactly.DeviceClassName].Name == "" {
					t.Errorf("request %s asks for no gpulet DeviceClass", r.Name)
				}
			}
			for _, c := range tmpl.Spec.Spec.Devices.Constraints {
				if c.MatchAttribute == nil || !attrs[*c.MatchAttribute] {
					t.Errorf("constraint on %v, which gpulet does not publish", c.MatchAttribute)
				}
			}
			pod := job.Spec.Template.Spec
			if len(pod.ResourceClaims) != 1 || *pod.ResourceClaims[0].ResourceClaimTemplateName != tmpl.Name ||
				pod.Containers[0].Resources.Claims[0].Name != pod.ResourceClaims[0].Name {
				t.Errorf("the Job does not use the template %s", tmpl.Name)
			}
		})
	}
}

// checkPodVolumes fails on what the API server would refuse in a pod: two
// volumes of one name, two mounts at one path, a mount of no volume.
func checkPodVolumes(t *testing.T, what string, ds *appsv1.DaemonSet) {
	t.Helper()
	vols := map[string]bool{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if vols[v.Name] {
			t.Errorf("%s: volume %q is defined twice", what, v.Name)
		}
		vols[v.Name] = true
	}
	paths := map[string]string{}
	for _, m := range ds.Spec.Template.Spec.Containers[0].VolumeMounts {
		if other, ok := paths[m.MountPath]; ok {
			t.Errorf("%s: %s is mounted twice (volumes %s and %s)", what, m.MountPath, other, m.Name)
		}
		paths[m.MountPath] = m.Name
		if !vols[m.Name] {
			t.Errorf("%s: mount of undefined volume %q", what, m.Name)
		}
	}
}
