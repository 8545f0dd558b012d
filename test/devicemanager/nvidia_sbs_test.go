package devicemanager_test

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// differencesFile lists the intended differences between NVIDIA's plugin
// and gpulet in the side-by-side test, each with its reason.
const differencesFile = "testdata/nvidia-differences.yaml"

// difference is one entry of differencesFile: the field that differs in
// the cases whose names match Cases (path.Match patterns).
type difference struct {
	Field  string   `json:"field"`
	Cases  []string `json:"cases"`
	Reason string   `json:"reason"`
}

// sbsCase is one setting both plugins are started with, in NVIDIA's flags
// (gpulet takes the same names).
type sbsCase struct {
	name  string
	flags []string
	// config is a config file in NVIDIA's v1 format given to both.
	config string
	// request is the number of nvidia.com/gpu the pod asks for.
	request int
}

// timeSlicing is NVIDIA's documented time-slicing example: every GPU shared
// four ways.
const timeSlicing = `version: v1
sharing:
  timeSlicing:
    resources:
    - name: nvidia.com/gpu
      replicas: 4
`

func sbsCases() []sbsCase {
	var cs []sbsCase
	for _, list := range []string{"envvar", "volume-mounts", "cdi-annotations", "cdi-cri", "envvar,cdi-cri"} {
		for _, id := range []string{"uuid", "index"} {
			for _, pass := range []bool{false, true} {
				name := fmt.Sprintf("%s/%s", strings.ReplaceAll(list, ",", "+"), id)
				flags := []string{"--device-list-strategy=" + list, "--device-id-strategy=" + id}
				if pass {
					name += "/pass-device-specs"
					flags = append(flags, "--pass-device-specs")
				}
				cs = append(cs, sbsCase{name: name, flags: flags, request: 2})
			}
		}
	}
	cs = append(cs,
		sbsCase{name: "time-slicing/envvar/uuid", flags: []string{"--device-list-strategy=envvar"}, config: timeSlicing, request: 2},
		sbsCase{name: "time-slicing/cdi-cri/index/pass-device-specs", flags: []string{"--device-list-strategy=cdi-cri", "--device-id-strategy=index", "--pass-device-specs"}, config: timeSlicing, request: 1},
	)
	return cs
}

// sbsResult is what the kubelet's device manager got from one plugin: the
// resources it advertises, the device IDs, and what a container asking for
// request devices is given (the Allocate response as the kubelet passes it
// to the runtime), normalised only where a value is random by design.
type sbsResult struct {
	Resources   map[string]int64
	DeviceIDs   []string
	Allocated   []string
	Envs        []string
	Mounts      []string
	Devices     []string
	Annotations []string
	CDIDevices  []string
}

func (r *sbsResult) fields() map[string]string {
	j := func(s []string) string { return strings.Join(s, " ") }
	res := make([]string, 0, len(r.Resources))
	for k, v := range r.Resources {
		res = append(res, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(res)
	return map[string]string{
		"resources": j(res), "deviceIDs": j(r.DeviceIDs), "allocated": j(r.Allocated), "envs": j(r.Envs),
		"mounts": j(r.Mounts), "devices": j(r.Devices), "annotations": j(r.Annotations), "cdiDevices": j(r.CDIDevices),
	}
}

// TestNVIDIASideBySide runs NVIDIA's nvidia-device-plugin (v0.19.3) and then
// gpulet's NVML backend on the same mock H100 node, one after the other,
// against one kubelet device manager per setting: both must advertise the
// same resources and device IDs, and a pod asking for the same number of
// GPUs must get the same devices and the same container options. Every
// difference must be listed, with its reason, in testdata/nvidia-differences.yaml;
// an entry that no longer matches anything fails too.
func TestNVIDIASideBySide(t *testing.T) {
	n := requireMockNode(t, "h100")
	kubeletLogsOnFailure(t)
	allowed := readDifferences(t)
	used := map[int]bool{}
	for _, tc := range sbsCases() {
		t.Run(tc.name, func(t *testing.T) {
			var extra []string
			if tc.config != "" {
				p := filepath.Join(t.TempDir(), "config.yaml")
				if err := os.WriteFile(p, []byte(tc.config), 0o644); err != nil {
					t.Fatal(err)
				}
				extra = append(extra, "--config-file="+p)
			}
			freshNode(t)
			k := startKubelet(t, t, nil)
			nv := n.startNVIDIA(t, t, append(slices.Clone(tc.flags), extra...)...)
			want, err := observe(k, nv, tc.request, nil)
			if err != nil {
				t.Fatalf("NVIDIA's plugin: %v", err)
			}
			nv.stop()
			g := n.startGpulet(t, t, append(slices.Clone(tc.flags), extra...)...)
			got, err := observe(k, g, tc.request, want.DeviceIDs)
			if err != nil {
				t.Fatalf("gpulet: %v", err)
			}
			nf, gf := want.fields(), got.fields()
			keys := make([]string, 0, len(nf))
			for f := range nf {
				keys = append(keys, f)
			}
			sort.Strings(keys)
			for _, f := range keys {
				if nf[f] == gf[f] {
					continue
				}
				i := allowedDifference(allowed, tc.name, f)
				if i < 0 {
					t.Errorf("%s differs, and %s does not list it for this case:\nNVIDIA: %s\ngpulet: %s", f, differencesFile, nf[f], gf[f])
					continue
				}
				used[i] = true
				t.Logf("%s differs as listed (%s):\nNVIDIA: %s\ngpulet: %s", f, allowed[i].Reason, nf[f], gf[f])
			}
		})
	}
	if !t.Failed() {
		for i, d := range allowed {
			if !used[i] {
				t.Errorf("%s lists a difference in %s for %v that no case shows any more: remove it", differencesFile, d.Field, d.Cases)
			}
		}
	}
}

func readDifferences(t *testing.T) []difference {
	t.Helper()
	data, err := os.ReadFile(differencesFile)
	if err != nil {
		t.Fatal(err)
	}
	var ds []difference
	if err := yaml.UnmarshalStrict(data, &ds); err != nil {
		t.Fatalf("%s: %v", differencesFile, err)
	}
	for _, d := range ds {
		if d.Field == "" || len(d.Cases) == 0 || strings.TrimSpace(d.Reason) == "" {
			t.Fatalf("%s: every entry needs a field, cases and a reason: %+v", differencesFile, d)
		}
		if _, ok := (&sbsResult{}).fields()[d.Field]; !ok {
			t.Fatalf("%s: field %q is not one the test compares", differencesFile, d.Field)
		}
	}
	return ds
}

func allowedDifference(ds []difference, name, field string) int {
	for i, d := range ds {
		if d.Field != field {
			continue
		}
		for _, c := range d.Cases {
			if ok, _ := path.Match(c, name); ok {
				return i
			}
		}
	}
	return -1
}

// observe waits until the kubelet serves p's devices (all healthy; when
// wantIDs is given, exactly those), then admits a pod asking for request
// devices of the resource and returns what the kubelet saw and gave.
func observe(k *kubelet, p *gpuletProc, request int, wantIDs []string) (*sbsResult, error) {
	var ids []string
	var last string
	deadline := time.Now().Add(20 * time.Second)
	for {
		if !p.running() {
			return nil, fmt.Errorf("%s exited: %v", p.name, p.waitErr)
		}
		c, a := k.capacity()
		ids = k.allocatableIDs()
		last = fmt.Sprintf("capacity/allocatable %d/%d, allocatable IDs %v", c, a, ids)
		if c > 0 && c == a && len(ids) == int(a) && (wantIDs == nil || slices.Equal(ids, wantIDs)) && registeredBy(p) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the kubelet does not serve %s's devices after 20s: %s", p.name, last)
		}
		time.Sleep(5 * time.Millisecond)
	}
	r := &sbsResult{Resources: map[string]int64{}, DeviceIDs: ids}
	c, _, _ := k.m.GetCapacity(k.logger)
	for name, q := range c {
		if strings.HasPrefix(string(name), "nvidia.com/") && q.Value() > 0 {
			r.Resources[string(name)] = q.Value()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := k.admit(ctx, gpuPod(request))
	if err != nil {
		return nil, fmt.Errorf("a pod asking for %d %s: %w", request, resGPU, err)
	}
	defer k.release(a)
	r.Allocated = a.devices
	for _, e := range a.opts.Envs {
		r.Envs = append(r.Envs, e.Name+"="+e.Value)
	}
	for _, m := range a.opts.Mounts {
		r.Mounts = append(r.Mounts, fmt.Sprintf("%s:%s:ro=%v", m.HostPath, m.ContainerPath, m.ReadOnly))
	}
	for _, d := range a.opts.Devices {
		r.Devices = append(r.Devices, fmt.Sprintf("%s:%s:%s", d.PathOnHost, d.PathInContainer, d.Permissions))
	}
	for _, an := range a.opts.Annotations {
		// The key names the plugin and a per-response ID (NVIDIA's is a
		// random UUID): only the prefix is compared.
		key := an.Name
		if i := strings.LastIndex(key, "/"); i >= 0 {
			key = key[:i+1] + "*"
		}
		r.Annotations = append(r.Annotations, key+"="+an.Value)
	}
	for _, d := range a.opts.CDIDevices {
		r.CDIDevices = append(r.CDIDevices, d.Name)
	}
	r.normalize()
	return r, nil
}

var (
	uuidRE  = regexp.MustCompile(`GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	minorRE = regexp.MustCompile(`/dev/nvidia([0-9]+)\b`)
	delimRE = regexp.MustCompile(`[=,/:]`)
)

// normalize names the allocated GPUs <gpu0>, <gpu1>, ... in the order of
// their indexes, wherever their UUID, index or /dev/nvidiaN appears, and
// sorts comma-separated lists. Both plugins break ties between equally
// connected GPUs their own way (NVIDIA's at random on the mock's all-NVLink
// H100), and the kubelet passes the IDs in no set order, so the GPUs chosen
// are not compared; what each response says about its own GPUs is. A
// response naming a GPU it was not allocated keeps that GPU's real name and
// so still differs.
func (r *sbsResult) normalize() {
	idx := map[string]int{} // UUID -> index, from the mock's UUID scheme
	var gpus []int
	for _, id := range r.Allocated {
		u, _, _ := strings.Cut(id, "::")
		if m := uuidRE.FindString(u); m != "" {
			i, err := strconv.ParseInt(m[len(m)-12:], 16, 32)
			if err == nil && !slices.Contains(gpus, int(i)) {
				idx[m] = int(i)
				gpus = append(gpus, int(i))
			}
		}
	}
	sort.Ints(gpus)
	rank := map[int]string{}
	for k, g := range gpus {
		rank[g] = fmt.Sprintf("<gpu%d>", k)
	}
	byUUID := func(u string) string {
		if i, ok := idx[u]; ok {
			return rank[i]
		}
		return u
	}
	fix := func(v string) string {
		v = uuidRE.ReplaceAllStringFunc(v, byUUID)
		v = minorRE.ReplaceAllStringFunc(v, func(m string) string {
			i, _ := strconv.Atoi(minorRE.FindStringSubmatch(m)[1])
			if name, ok := rank[i]; ok {
				return "/dev/nvidia" + name
			}
			return m
		})
		// Indexes (index strategy): whole tokens between delimiters.
		var b strings.Builder
		last := 0
		for _, loc := range append(delimRE.FindAllStringIndex(v, -1), []int{len(v), len(v)}) {
			tok := v[last:loc[0]]
			if i, err := strconv.Atoi(tok); err == nil && strconv.Itoa(i) == tok && last > 0 {
				if name, ok := rank[i]; ok {
					tok = name
				}
			}
			b.WriteString(tok)
			b.WriteString(v[loc[0]:loc[1]])
			last = loc[1]
		}
		v = b.String()
		if k, list, ok := strings.Cut(v, "="); ok && strings.Contains(list, ",") {
			items := strings.Split(list, ",")
			sort.Strings(items)
			v = k + "=" + strings.Join(items, ",")
		}
		return v
	}
	for _, list := range []*[]string{&r.Allocated, &r.Envs, &r.Mounts, &r.Devices, &r.Annotations, &r.CDIDevices} {
		for i, v := range *list {
			if list == &r.Allocated {
				u, replica, isReplica := strings.Cut(v, "::")
				v = byUUID(u)
				if isReplica && replica != "" {
					v += "::<replica>"
				}
			} else {
				v = fix(v)
			}
			(*list)[i] = v
		}
		sort.Strings(*list)
	}
}

// registeredBy reports whether p's log says it registered (both plugins log
// it), so a kubelet still showing the previous plugin's devices is not
// mistaken for p's.
func registeredBy(p *gpuletProc) bool {
	for _, e := range p.logs.since(0) {
		if strings.Contains(e.msg, "egistered") && strings.Contains(strings.ToLower(e.msg), "kubelet") {
			return true
		}
	}
	return false
}
