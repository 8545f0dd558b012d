package resources

import (
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/gpulet/gpulet/internal/inventory"
)

// kubeletAccepts is the kubelet's check of a device plugin's resource name
// (RegisterRequest in pkg/kubelet/cm/devicemanager calls
// v1helper.IsExtendedResourceName), rebuilt from apimachinery: not in a
// kubernetes.io domain, not "requests."-prefixed, and "requests.<name>" a
// qualified name.
func kubeletAccepts(name string) []string {
	if !strings.Contains(name, "/") || strings.Contains(name, "kubernetes.io/") || strings.HasPrefix(name, "requests.") {
		return []string{"not an extended resource name"}
	}
	return validation.IsQualifiedName("requests." + name)
}

// migProfiles lists the GPU-instance profiles NVML reports, per GPU (NVIDIA's
// MIG user guide), and NVIDIA's resource name for each.
var migProfiles = []struct{ gpu, profile, want string }{
	{"A100-40GB", "1g.5gb", "nvidia.com/mig-1g.5gb"},
	{"A100-40GB", "1g.5gb+me", "nvidia.com/mig-1g.5gb.me"},
	{"A100-40GB", "1g.10gb", "nvidia.com/mig-1g.10gb"},
	{"A100-40GB", "2g.10gb", "nvidia.com/mig-2g.10gb"},
	{"A100-40GB", "3g.20gb", "nvidia.com/mig-3g.20gb"},
	{"A100-40GB", "4g.20gb", "nvidia.com/mig-4g.20gb"},
	{"A100-40GB", "7g.40gb", "nvidia.com/mig-7g.40gb"},
	{"A100/H100-80GB", "1g.10gb+me", "nvidia.com/mig-1g.10gb.me"},
	{"A100/H100-80GB", "1g.20gb", "nvidia.com/mig-1g.20gb"},
	{"A100/H100-80GB", "2g.20gb", "nvidia.com/mig-2g.20gb"},
	{"A100/H100-80GB", "3g.40gb", "nvidia.com/mig-3g.40gb"},
	{"A100/H100-80GB", "4g.40gb", "nvidia.com/mig-4g.40gb"},
	{"A100/H100-80GB", "7g.80gb", "nvidia.com/mig-7g.80gb"},
	{"H100-94GB", "1g.12gb", "nvidia.com/mig-1g.12gb"},
	{"H100-94GB", "1g.12gb+me", "nvidia.com/mig-1g.12gb.me"},
	{"H100-94GB", "1g.24gb", "nvidia.com/mig-1g.24gb"},
	{"H100-94GB", "2g.24gb", "nvidia.com/mig-2g.24gb"},
	{"H100-94GB", "3g.47gb", "nvidia.com/mig-3g.47gb"},
	{"H100-94GB", "4g.47gb", "nvidia.com/mig-4g.47gb"},
	{"H100-94GB", "7g.94gb", "nvidia.com/mig-7g.94gb"},
	{"H200", "1g.18gb", "nvidia.com/mig-1g.18gb"},
	{"H200", "1g.18gb+me", "nvidia.com/mig-1g.18gb.me"},
	{"H200", "1g.35gb", "nvidia.com/mig-1g.35gb"},
	{"H200", "2g.35gb", "nvidia.com/mig-2g.35gb"},
	{"H200", "3g.71gb", "nvidia.com/mig-3g.71gb"},
	{"H200", "4g.71gb", "nvidia.com/mig-4g.71gb"},
	{"H200", "7g.141gb", "nvidia.com/mig-7g.141gb"},
	// Blackwell's attribute forms: all media engines, none, graphics.
	{"B200", "1g.23gb+me.all", "nvidia.com/mig-1g.23gb.me.all"},
	{"B200", "1g.23gb-me", "nvidia.com/mig-1g.23gb-me"},
	{"B200", "2g.45gb-me", "nvidia.com/mig-2g.45gb-me"},
	{"B200", "7g.180gb", "nvidia.com/mig-7g.180gb"},
	{"RTX PRO 6000", "1g.24gb+gfx", "nvidia.com/mig-1g.24gb.gfx"},
	{"RTX PRO 6000", "4g.96gb+gfx", "nvidia.com/mig-4g.96gb.gfx"},
}

func TestMIGResourceNameKubeletValid(t *testing.T) {
	seen := map[string]string{}
	for _, tc := range migProfiles {
		t.Run(tc.gpu+"/"+tc.profile, func(t *testing.T) {
			got := MIGResourceName("nvidia.com", tc.profile)
			if got != tc.want {
				t.Errorf("MIGResourceName(%s) = %s, want NVIDIA's %s", tc.profile, got, tc.want)
			}
			if errs := kubeletAccepts(got); len(errs) != 0 {
				t.Errorf("the kubelet refuses %s: %v", got, errs)
			}
			if p, dup := seen[got]; dup && p != tc.profile {
				t.Errorf("%s and %s share the resource name %s", p, tc.profile, got)
			}
			seen[got] = tc.profile
		})
	}
	// The check itself refuses what the kubelet refuses.
	for _, bad := range []string{"nvidia.com/mig-1g.18gb+me", "gpu", "kubernetes.io/mig", "nvidia.com/-x"} {
		if len(kubeletAccepts(bad)) == 0 {
			t.Errorf("kubeletAccepts(%q) passed; the kubelet refuses it", bad)
		}
	}
}

// layout is a node of GPUs given as MIG profiles per GPU ("" is MIG
// disabled, "-" MIG enabled without instances).
func layout(gpus ...string) *inventory.Node {
	n := &inventory.Node{DevRoot: "/nonexistent"}
	for i, spec := range gpus {
		g := inventory.GPU{UUID: fmt.Sprintf("GPU-%d", i), Index: i, Minor: i}
		if spec != "" {
			g.MIGEnabled = true
		}
		if spec != "" && spec != "-" {
			for j, p := range strings.Split(spec, ",") {
				g.MIGDevices = append(g.MIGDevices, inventory.MIGDevice{
					UUID: fmt.Sprintf("MIG-%d-%d", i, j), Index: j, Profile: p, GI: j + 1, MemoryBytes: 10 << 30,
				})
			}
		}
		n.GPUs = append(n.GPUs, g)
	}
	return n
}

func TestCheckMIG(t *testing.T) {
	for _, tc := range []struct {
		name, strategy string
		node           *inventory.Node
		err, warn      string // substrings; "" expects none
	}{
		{"none takes anything", MIGNone, layout("", "1g.10gb,3g.40gb", "-", "1c.2g.20gb"), "", ""},
		{"single uniform", MIGSingle, layout("1g.10gb,1g.10gb", "1g.10gb"), "", ""},
		{"single no MIG at all", MIGSingle, layout("", ""), "", ""},
		{"single two profiles", MIGSingle, layout("1g.10gb,1g.10gb", "1g.10gb+me"), "one MIG device type", ""},
		{"single mixed MIG modes", MIGSingle, layout("1g.10gb", ""), "same MIG mode", ""},
		{"single enabled without instances", MIGSingle, layout("1g.10gb", "-"), "no MIG devices", ""},
		{"mixed", MIGMixed, layout("", "1g.10gb,1g.10gb+me,3g.40gb"), "", ""},
		{"mixed enabled without instances warns", MIGMixed, layout("1g.10gb", "-"), "", "no MIG devices"},
		{"mixed compute-instance profile", MIGMixed, layout("1c.2g.20gb,1c.2g.20gb"), "1c.2g.20gb", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			warns, err := CheckMIG(tc.node, tc.strategy)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("err = %v, want one saying %q", err, tc.err)
			}
			w := strings.Join(warns, "; ")
			if tc.warn == "" && w != "" || tc.warn != "" && !strings.Contains(w, tc.warn) {
				t.Errorf("warnings = %q, want %q", w, tc.warn)
			}
		})
	}
	// single compares memory too, as NVIDIA compares device attributes.
	n := layout("1g.10gb", "1g.10gb")
	n.GPUs[1].MIGDevices[0].MemoryBytes = 20 << 30
	if _, err := CheckMIG(n, MIGSingle); err == nil {
		t.Error("single accepted two 1g.10gb devices of different memory")
	}
}

func TestBuildMIGIndexKeepsGaps(t *testing.T) {
	n := layout("", "1g.10gb,1g.10gb+me,3g.40gb")
	// NVML handle indexes 0, 2 and 5: slots 1, 3 and 4 are empty.
	for i, idx := range []int{0, 2, 5} {
		n.GPUs[1].MIGDevices[i].Index = idx
	}
	got := summary(Build(inventory.Snapshot{Node: n}, Config{MIGStrategy: MIGMixed}))
	want := "nvidia.com/gpu=GPU-0@0 nvidia.com/mig-1g.10gb=MIG-1-0@1:0 nvidia.com/mig-1g.10gb.me=MIG-1-1@1:2 nvidia.com/mig-3g.40gb=MIG-1-2@1:5"
	if got != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
	for _, r := range Build(inventory.Snapshot{Node: n}, Config{MIGStrategy: MIGMixed}) {
		for _, d := range r.Devices {
			if d.MIG != (d.GPU == 1) || d.MIG && d.GI == 0 {
				t.Errorf("%s: MIG=%v GI=%d CI=%d, want the instance's IDs on MIG devices only", d.ID, d.MIG, d.GI, d.CI)
			}
		}
	}
}
