package sim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

func TestBuiltinProfiles(t *testing.T) {
	uuidRE := regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	cases := []struct {
		profile string
		gpus    int
		name    string
		numa    []int
	}{
		{"h200", 1, "NVIDIA H200", []int{-1}},
		{"dgx-h100", 8, "NVIDIA H100 80GB HBM3", []int{0, 0, 0, 0, 1, 1, 1, 1}},
		{"dgx1-v100", 8, "Tesla V100-SXM2-16GB", []int{0, 0, 0, 0, 1, 1, 1, 1}},
		{"pcie-4x-l4", 4, "NVIDIA L4", []int{0, 0, 1, 1}},
		{"dgx-h100-mig-mixed", 8, "NVIDIA H100 80GB HBM3", []int{0, 0, 0, 0, 1, 1, 1, 1}},
		{"h200-mig-single", 1, "NVIDIA H200", []int{-1}},
	}
	for _, tc := range cases {
		t.Run(tc.profile, func(t *testing.T) {
			p, err := LoadProfile(tc.profile)
			if err != nil {
				t.Fatal(err)
			}
			n, err := p.Node()
			if err != nil {
				t.Fatal(err)
			}
			if len(n.GPUs) != tc.gpus {
				t.Fatalf("%d GPUs, want %d", len(n.GPUs), tc.gpus)
			}
			again, _ := p.Node()
			for i, g := range n.GPUs {
				if g.Name != tc.name || g.NUMANode != tc.numa[i] || g.Minor != i || g.Index != i {
					t.Errorf("GPU %d = %+v", i, g)
				}
				if !uuidRE.MatchString(g.UUID) {
					t.Errorf("GPU %d UUID %q is not NVML-shaped", i, g.UUID)
				}
				if again.GPUs[i].UUID != g.UUID {
					t.Errorf("UUID of GPU %d changes between builds", i)
				}
			}
		})
	}
}

func TestDGX1TopologyIsTheHybridCubeMesh(t *testing.T) {
	p, _ := LoadProfile("dgx1-v100")
	n, err := p.Node()
	if err != nil {
		t.Fatal(err)
	}
	nv2 := map[[2]int]bool{{0, 3}: true, {0, 4}: true, {1, 2}: true, {1, 5}: true, {2, 3}: true, {4, 7}: true, {5, 6}: true, {6, 7}: true}
	pix := map[[2]int]bool{{0, 1}: true, {2, 3}: true, {4, 5}: true, {6, 7}: true}
	for i := 0; i < 8; i++ {
		total := 0
		for j := 0; j < 8; j++ {
			if i == j {
				continue
			}
			l := n.Link(i, j)
			total += l.NVLinks
			a, b := min(i, j), max(i, j)
			if nv2[[2]int{a, b}] != (l.NVLinks == 2) {
				t.Errorf("GPU%d-GPU%d has NV%d", i, j, l.NVLinks)
			}
			want := inventory.LevelSYS
			switch {
			case pix[[2]int{a, b}]:
				want = inventory.LevelPIX
			case (i < 4) == (j < 4):
				want = inventory.LevelPHB
			}
			if l.PCIe != want {
				t.Errorf("GPU%d-GPU%d PCIe %v, want %v", i, j, l.PCIe, want)
			}
		}
		if total != 6 {
			t.Errorf("GPU%d has %d NVLinks, a V100 has 6", i, total)
		}
	}
}

func TestProfileErrors(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"no gpus", "name: x\n", "has no GPUs"},
		{"both forms", "name: x\ngpus: [{name: a, memoryMiB: 1, computeCapability: '8.0'}]\ntemplate: {name: a, memoryMiB: 1, computeCapability: '8.0'}\ncount: 1\n", "either gpus or template"},
		{"bad level", "name: x\ntemplate: {name: a, memoryMiB: 1, computeCapability: '8.0'}\ncount: 2\npcie: [[X, FOO], [FOO, X]]\n", "unknown PCIe level"},
		{"asymmetric", "name: x\ntemplate: {name: a, memoryMiB: 1, computeCapability: '8.0'}\ncount: 2\nnvlinks: [[0, 1], [2, 0]]\n", "not symmetric"},
		{"short matrix", "name: x\ntemplate: {name: a, memoryMiB: 1, computeCapability: '8.0'}\ncount: 3\nnvlinks: [[0, 1], [1, 0]]\n", "nvlinks has 2 rows for 3 GPUs"},
		{"typo", "name: x\ntemplate: {name: a, memoryMB: 1}\ncount: 1\n", "unknown field"},
		{"numa list", "name: x\ntemplate: {name: a, memoryMiB: 1, computeCapability: '8.0'}\ncount: 2\nnumaNodes: [0]\n", "numaNodes has 1 entries for 2 GPUs"},
		{"dup uuid", "name: x\ngpus: [{uuid: GPU-1, name: a, memoryMiB: 1, computeCapability: '8.0'}, {uuid: GPU-1, name: a, memoryMiB: 1, computeCapability: '8.0'}]\n", "appears twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseProfile([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
	if _, err := LoadProfile("no-such-profile"); err == nil || !strings.Contains(err.Error(), "dgx-h100") {
		t.Errorf("unknown profile error %v should list the built-in profiles", err)
	}
}

func TestProfileFileWithMIG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mig.yaml")
	os.WriteFile(path, []byte("name: mig\ntemplate: {name: NVIDIA A100-SXM4-40GB, memoryMiB: 40960, computeCapability: '8.0', mig: {profile: 1g.5gb, count: 7, memoryMiB: 4864}}\ncount: 2\n"), 0o644)
	p, err := LoadProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := p.Node()
	if err != nil {
		t.Fatal(err)
	}
	if len(n.GPUs) != 2 || !n.GPUs[0].MIGEnabled || len(n.GPUs[1].MIGDevices) != 7 || n.GPUs[1].MIGDevices[6].Profile != "1g.5gb" {
		t.Fatalf("MIG node = %+v", n.GPUs)
	}
	if n.GPUs[0].MIGDevices[0].UUID == n.GPUs[1].MIGDevices[0].UUID {
		t.Error("MIG UUIDs repeat across GPUs")
	}
}

func TestDeviceNodes(t *testing.T) {
	root := t.TempDir()
	p, _ := LoadProfile("pcie-4x-l4")
	b, err := New(p, root)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := b.Discover(context.Background())
	if n.DevRoot != filepath.Join(root, "dev") {
		t.Fatalf("dev root %s", n.DevRoot)
	}
	canMknod := os.Geteuid() == 0
	for _, name := range []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia3"} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(n.DevRoot, name), &st); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		isChar := st.Mode&unix.S_IFMT == unix.S_IFCHR
		if canMknod && !isChar {
			// Some sandboxes refuse mknod even to root; then files are right.
			t.Logf("%s is not a character device (mknod refused here)", name)
		}
		if isChar && name == "nvidia3" && (unix.Major(st.Rdev) != 195 || unix.Minor(st.Rdev) != 3) {
			t.Errorf("nvidia3 is %d:%d, want 195:3", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
	}
	if _, err := os.Stat(filepath.Join(n.DevRoot, "nvidia4")); !os.IsNotExist(err) {
		t.Error("a device node for a GPU the profile does not have")
	}
}

// events collects what Watch reports.
func watch(t *testing.T, b *Backend) (<-chan hardware.Event, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan hardware.Event, 16)
	go b.Watch(ctx, ch)
	t.Cleanup(cancel)
	return ch, cancel
}

func next(t *testing.T, ch <-chan hardware.Event) hardware.Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
		return hardware.Event{}
	}
}

func TestFaultsBecomeEvents(t *testing.T) {
	root := t.TempDir()
	p, _ := LoadProfile("dgx-h100")
	b, err := New(p, root)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(); err != nil {
		t.Fatal(err)
	}
	node, err := ReadNode(root)
	if err != nil {
		t.Fatal(err)
	}
	u3, err := ResolveGPU(node, "3")
	if err != nil {
		t.Fatal(err)
	}
	// A fault present before the watch starts is reported first.
	UpdateFaults(root, func(f *Faults) error { f.GPUs[u3] = Fault{XID: 48}; return nil })
	ch, _ := watch(t, b)
	if ev := next(t, ch); ev.Kind != hardware.EventXID || ev.UUID != u3 || ev.XID != 48 {
		t.Fatalf("event %+v", ev)
	}
	if err := b.Probe(context.Background(), u3); err == nil {
		t.Error("probe passes on a faulted GPU")
	}

	u5 := node.GPUs[5].UUID
	UpdateFaults(root, func(f *Faults) error { f.GPUs[u5] = Fault{Reason: "fan"}; return nil })
	if ev := next(t, ch); ev.Kind != hardware.EventUnhealthy || ev.UUID != u5 || ev.Reason != "fan" {
		t.Fatalf("event %+v", ev)
	}
	UpdateFaults(root, func(f *Faults) error { delete(f.GPUs, u3); return nil })
	if ev := next(t, ch); ev.Kind != hardware.EventHealthy || ev.UUID != u3 {
		t.Fatalf("event %+v", ev)
	}
	if err := b.Probe(context.Background(), u3); err != nil {
		t.Errorf("probe fails on a healed GPU: %v", err)
	}

	UpdateFaults(root, func(f *Faults) error { f.Removed = append(f.Removed, u5); return nil })
	if ev := next(t, ch); ev.Kind != hardware.EventChanged {
		t.Fatalf("event %+v", ev)
	}
	n, _ := b.Discover(context.Background())
	if len(n.GPUs) != 7 || len(n.Links) != 7 || len(n.Links[6]) != 7 {
		t.Fatalf("after removal: %d GPUs, %d link rows", len(n.GPUs), len(n.Links))
	}
	if _, _, ok := n.GPUByUUID(u5); ok {
		t.Error("removed GPU still discovered")
	}
	if err := n.Validate(); err != nil {
		t.Error(err)
	}
}

func TestResolveGPU(t *testing.T) {
	p, _ := LoadProfile("pcie-4x-l4")
	n, _ := p.Node()
	if u, err := ResolveGPU(n, "2"); err != nil || u != n.GPUs[2].UUID {
		t.Errorf("index 2: %s %v", u, err)
	}
	if u, err := ResolveGPU(n, n.GPUs[1].UUID); err != nil || u != n.GPUs[1].UUID {
		t.Errorf("uuid: %s %v", u, err)
	}
	if _, err := ResolveGPU(n, "4"); err == nil || !strings.Contains(err.Error(), "0-3") {
		t.Errorf("out of range: %v", err)
	}
	if _, err := ResolveGPU(n, "GPU-x"); err == nil {
		t.Error("unknown UUID accepted")
	}
}

func TestMalformedFaultFileIsReported(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, faultsFile), []byte("{not json"), 0o644)
	if _, err := ReadFaults(root); err == nil || !strings.Contains(err.Error(), "not valid JSON") {
		t.Fatalf("error %v", err)
	}
}

func FuzzParseProfile(f *testing.F) {
	for _, name := range BuiltinProfiles() {
		data, _ := builtin.ReadFile("profiles/" + name + ".yaml")
		f.Add(data)
	}
	f.Add([]byte("name: x\ntemplate: {name: a, memoryMiB: 1, computeCapability: '8.0'}\ncount: 2\npcie: [[X]]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseProfile(data)
		if err != nil {
			return
		}
		n, err := p.Node()
		if err != nil {
			t.Fatalf("profile parsed but does not build: %v", err)
		}
		if err := n.Validate(); err != nil {
			t.Fatalf("profile parsed into an invalid node: %v", err)
		}
	})
}

func TestMIGProfiles(t *testing.T) {
	for _, tc := range []struct {
		profile string
		want    []string // per GPU: its instances as profile/gi/ci@index, "" when MIG is disabled
	}{
		{"dgx-h100-mig-mixed", []string{"", "", "", "",
			"3g.40gb/2/0@0 2g.20gb/3/0@1 1g.10gb+me/9/0@2 1g.10gb/13/0@3",
			"3g.40gb/2/0@0 2g.20gb/3/0@1 1g.10gb+me/9/0@2 1g.10gb/13/0@3",
			"3g.40gb/2/0@0 2g.20gb/3/0@1 1g.10gb+me/9/0@2 1g.10gb/13/0@3",
			"3g.40gb/2/0@0 2g.20gb/3/0@1 1g.10gb+me/9/0@2 1g.10gb/13/0@3"}},
		{"h200-mig-single", []string{"1g.18gb/7/0@0 1g.18gb/8/0@1 1g.18gb/9/0@2 1g.18gb/10/0@3 1g.18gb/11/0@4 1g.18gb/12/0@5 1g.18gb/13/0@6"}},
	} {
		t.Run(tc.profile, func(t *testing.T) {
			p, err := LoadProfile(tc.profile)
			if err != nil {
				t.Fatal(err)
			}
			n, err := p.Node()
			if err != nil {
				t.Fatal(err)
			}
			for i, g := range n.GPUs {
				var got []string
				for _, m := range g.MIGDevices {
					got = append(got, fmt.Sprintf("%s/%d/%d@%d", m.Profile, m.GI, m.CI, m.Index))
				}
				if strings.Join(got, " ") != tc.want[i] || g.MIGEnabled != (tc.want[i] != "") {
					t.Errorf("GPU %d: MIG %v %v, want %q", i, g.MIGEnabled, got, tc.want[i])
				}
			}
		})
	}
}

func TestMIGProfileErrors(t *testing.T) {
	base := "name: x\ngpus:\n- {name: NVIDIA H200, memoryMiB: 143771, computeCapability: '9.0', mig: %s}\n"
	for _, tc := range []struct{ mig, err string }{
		{"{profile: 1g.18gb, count: 2, memoryMiB: 16896, instances: [{profile: 1g.18gb, memoryMiB: 16896, gi: 7}]}", "not both"},
		{"{instances: [{profile: 1g.10gb, memoryMiB: 16896, gi: 7}]}", "is a 18gb profile, not 1g.10gb"},
		{"{instances: [{profile: 1g.18gb, memoryMiB: 16896, gi: 7, index: 3}, {profile: 1g.18gb, memoryMiB: 16896, gi: 8, index: 3}]}", "repeated index 3"},
		{"{instances: [{profile: 1g.18gb, memoryMiB: 16896, gi: -1}]}", "non-negative"},
		{"{count: 2}", "needs a profile"},
	} {
		_, err := ParseProfile([]byte(fmt.Sprintf(base, tc.mig)))
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("mig %s: err %v, want %q", tc.mig, err, tc.err)
		}
	}
}
