package cdispec_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/waittest"
)

// simNode discovers a simulated node; its device nodes, mig-minors and
// nvidia-caps live under a temporary root.
func simNode(t *testing.T, p *sim.Profile) (*inventory.Node, *sim.Backend) {
	t.Helper()
	b, n := simtest.BackendOf(t, p)
	return n, b
}

func builtin(t *testing.T, name string) *sim.Profile {
	t.Helper()
	p, err := sim.LoadProfile(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// migProfile: two A100s, each cut into seven 1g.5gb instances (GI 1..7, CI 0).
func migProfile(t *testing.T) *sim.Profile {
	t.Helper()
	p, err := sim.ParseProfile([]byte("name: mig\ntemplate: {name: NVIDIA A100-SXM4-40GB, memoryMiB: 40960, computeCapability: '8.0', mig: {profile: 1g.5gb, count: 7, memoryMiB: 4864}}\ncount: 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func nodesOf(d *specs.Device) []string {
	var out []string
	for _, n := range d.ContainerEdits.DeviceNodes {
		out = append(out, n.Path+"<-"+n.HostPath)
	}
	return out
}

func device(t *testing.T, s *specs.Spec, name string) *specs.Device {
	t.Helper()
	for i := range s.Devices {
		if s.Devices[i].Name == name {
			return &s.Devices[i]
		}
	}
	t.Fatalf("spec has no device %q", name)
	return nil
}

func names(s *specs.Spec) []string {
	var out []string
	for _, d := range s.Devices {
		out = append(out, d.Name)
	}
	return out
}

func TestBuildDGXH100(t *testing.T) {
	node, _ := simNode(t, builtin(t, "dgx-h100"))
	dev := node.DevRoot
	for _, naming := range []string{cdispec.NameByUUID, cdispec.NameByIndex} {
		t.Run(naming, func(t *testing.T) {
			s, err := cdispec.Build(node, cdispec.Options{Kind: cdispec.PluginKind, Naming: []string{naming}})
			if err != nil {
				t.Fatal(err)
			}
			if s.Kind != "k8s.device-plugin.nvidia.com/gpu" {
				t.Errorf("kind %q", s.Kind)
			}
			var want []string
			for _, g := range node.GPUs {
				name := g.UUID
				if naming == cdispec.NameByIndex {
					name = fmt.Sprint(g.Index)
				}
				want = append(want, name)
				got := nodesOf(device(t, s, name))
				if w := []string{fmt.Sprintf("/dev/nvidia%d<-%s/nvidia%d", g.Minor, dev, g.Minor)}; !slices.Equal(got, w) {
					t.Errorf("%s: device nodes %v, want %v", name, got, w)
				}
			}
			want = append(want, "all")
			if got := names(s); !slices.Equal(got, want) {
				t.Errorf("names %v, want %v", got, want)
			}
			if got := nodesOf(device(t, s, "all")); len(got) != 8 {
				t.Errorf("all has %d device nodes, want the 8 GPUs", len(got))
			}
			// The sim node has no nvidia-modeset: only present ones are listed.
			ctl := nodesOf(&specs.Device{ContainerEdits: s.ContainerEdits})
			wantCtl := []string{"/dev/nvidiactl<-" + dev + "/nvidiactl", "/dev/nvidia-uvm<-" + dev + "/nvidia-uvm", "/dev/nvidia-uvm-tools<-" + dev + "/nvidia-uvm-tools"}
			if !slices.Equal(ctl, wantCtl) {
				t.Errorf("control devices %v, want %v", ctl, wantCtl)
			}
			if !slices.Equal(s.ContainerEdits.Env, []string{"NVIDIA_VISIBLE_DEVICES=void"}) {
				t.Errorf("env %v", s.ContainerEdits.Env)
			}
			if len(s.ContainerEdits.Mounts) != 0 {
				t.Errorf("mounts %v without a driver", s.ContainerEdits.Mounts)
			}
			assertLoads(t, s)
		})
	}
}

// assertLoads writes the spec and loads it with the CDI library as a
// runtime would: no errors, and exactly the spec's names.
func assertLoads(t *testing.T, s *specs.Spec) *cdi.Cache {
	t.Helper()
	dir := t.TempDir()
	if _, err := cdispec.Write(dir, s); err != nil {
		t.Fatal(err)
	}
	cache, _ := cdi.NewCache(cdi.WithSpecDirs(dir), cdi.WithAutoRefresh(false))
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("CDI library: %v", errs)
	}
	got := cache.ListDevices()
	want := cdispec.QualifiedNames(s)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("library resolves %v, want %v", got, want)
	}
	return cache
}

func TestBuildMIG(t *testing.T) {
	node, b := simNode(t, migProfile(t))
	minors, err := cdispec.ReadMIGMinors(b.MIGMinorsPath())
	if err != nil {
		t.Fatal(err)
	}
	dev := node.DevRoot
	s, err := cdispec.Build(node, cdispec.Options{Kind: cdispec.ToolkitKind, Naming: []string{cdispec.NameByIndex, cdispec.NameByUUID}, MIGMinors: minors})
	if err != nil {
		t.Fatal(err)
	}
	// GPU 0's first instance is GI 1 CI 0: caps 12 and 13 as the driver numbers them.
	m00 := node.GPUs[0].MIGDevices[0]
	want := []string{"/dev/nvidia0<-" + dev + "/nvidia0",
		"/dev/nvidia-caps/nvidia-cap12<-" + dev + "/nvidia-caps/nvidia-cap12",
		"/dev/nvidia-caps/nvidia-cap13<-" + dev + "/nvidia-caps/nvidia-cap13"}
	for _, name := range []string{"0:0", m00.UUID} {
		if got := nodesOf(device(t, s, name)); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	// GPU 1, instance 3 is GI 4: 3 + 135 + 4*9 = 174, CI 0 → 175.
	want = []string{"/dev/nvidia1<-" + dev + "/nvidia1",
		"/dev/nvidia-caps/nvidia-cap174<-" + dev + "/nvidia-caps/nvidia-cap174",
		"/dev/nvidia-caps/nvidia-cap175<-" + dev + "/nvidia-caps/nvidia-cap175"}
	if got := nodesOf(device(t, s, "1:3")); !slices.Equal(got, want) {
		t.Errorf("1:3: %v, want %v", got, want)
	}
	// 2 GPUs + 14 instances, by index and by UUID, and all.
	if len(s.Devices) != 2*16+1 {
		t.Errorf("%d devices, want 33", len(s.Devices))
	}
	cache := assertLoads(t, s)
	assertInjects(t, cache, []string{"nvidia.com/gpu=1:3"}, []string{"/dev/nvidia1", "/dev/nvidia-caps/nvidia-cap174", "/dev/nvidia-caps/nvidia-cap175"})

	if _, err := cdispec.Build(node, cdispec.Options{Kind: cdispec.ToolkitKind}); err == nil || !strings.Contains(err.Error(), "mig-minors") {
		t.Errorf("MIG without caps: err %v, want one naming mig-minors", err)
	}
}

// assertInjects injects names into an OCI spec with the CDI library and
// checks the container gets exactly these device nodes beside the control ones.
func assertInjects(t *testing.T, cache *cdi.Cache, names, want []string) {
	t.Helper()
	o := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	if unresolved, err := cache.InjectDevices(o, names...); err != nil {
		if strings.Contains(err.Error(), "not a device node") {
			t.Skip("simulated device nodes are plain files here (no mknod); runtimes need character devices")
		}
		t.Fatalf("inject %v: unresolved %v: %v", names, unresolved, err)
	}
	var got []string
	for _, d := range o.Linux.Devices {
		switch d.Path {
		case "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset":
			continue
		}
		got = append(got, d.Path)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("injected %v, want %v", got, want)
	}
}

func TestDriverMounts(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// The H200 node's layout: real files in /usr/local/nvidia/lib64,
	// sonames as links, /usr/local/nvidia/lib -> lib64.
	lib := filepath.Join(root, "usr/local/nvidia/lib64")
	must(os.MkdirAll(lib, 0o755))
	must(os.MkdirAll(filepath.Join(root, "usr/local/nvidia/bin"), 0o755))
	for _, f := range []string{"libcuda.so.580.159.04", "libnvidia-ml.so.580.159.04", "libnvidia-gpucomp.so.580.159.04"} {
		must(os.WriteFile(filepath.Join(lib, f), nil, 0o644))
	}
	must(os.Symlink("libcuda.so.580.159.04", filepath.Join(lib, "libcuda.so.1")))
	// An absolute link resolves inside the driver root, not the host's /.
	must(os.Symlink("/usr/local/nvidia/lib64/libnvidia-ml.so.580.159.04", filepath.Join(lib, "libnvidia-ml.so.1")))
	must(os.WriteFile(filepath.Join(root, "usr/local/nvidia/bin/nvidia-smi"), nil, 0o755))

	d, err := cdispec.FindDriver(root, "580.159.04")
	if err != nil {
		t.Fatal(err)
	}
	// Hook-free: the files at their own paths, the sonames the node has
	// and libcuda.so (which NVIDIA's hook would link) as mounts of the file.
	var got []string
	for _, m := range mountsOf(t, d, cdispec.Options{}) {
		got = append(got, m.ContainerPath+"<-"+strings.TrimPrefix(m.HostPath, root))
		if !slices.Contains(m.Options, "ro") {
			t.Errorf("%s is mounted writable", m.ContainerPath)
		}
	}
	want := []string{
		"/usr/local/nvidia/lib64/libcuda.so.580.159.04<-/usr/local/nvidia/lib64/libcuda.so.580.159.04",
		"/usr/local/nvidia/lib64/libcuda.so.1<-/usr/local/nvidia/lib64/libcuda.so.580.159.04",
		"/usr/local/nvidia/lib64/libcuda.so<-/usr/local/nvidia/lib64/libcuda.so.580.159.04",
		"/usr/local/nvidia/lib64/libnvidia-gpucomp.so.580.159.04<-/usr/local/nvidia/lib64/libnvidia-gpucomp.so.580.159.04",
		"/usr/local/nvidia/lib64/libnvidia-ml.so.580.159.04<-/usr/local/nvidia/lib64/libnvidia-ml.so.580.159.04",
		"/usr/local/nvidia/lib64/libnvidia-ml.so.1<-/usr/local/nvidia/lib64/libnvidia-ml.so.580.159.04",
		"/usr/local/nvidia/bin/nvidia-smi<-/usr/local/nvidia/bin/nvidia-smi",
		"/var/run/nvidia-container-devices/void<-/dev/null",
	}
	if !slices.Equal(got, want) {
		t.Errorf("mounts\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	node, _ := simNode(t, builtin(t, "h200"))
	s, err := cdispec.Build(node, cdispec.Options{Kind: cdispec.ToolkitKind, Driver: d})
	if err != nil {
		t.Fatal(err)
	}
	assertLoads(t, s)

	if _, err := cdispec.FindDriver(t.TempDir(), "580.159.04"); err == nil || !strings.Contains(err.Error(), "libcuda.so.580.159.04") {
		t.Errorf("empty driver root: err %v, want one naming libcuda.so.580.159.04", err)
	}
}

// Follow rewrites the spec when the node changes: the removed GPU's names
// are gone, the new one's present, and a reader never sees a partial file.
func TestWriterFollowsInventory(t *testing.T) {
	node, _ := simNode(t, builtin(t, "dgx-h100"))
	dir := t.TempDir()
	w := &cdispec.Writer{Dir: dir, Options: cdispec.Options{Kind: cdispec.PluginKind, Naming: []string{cdispec.NameByUUID}}}
	if err := w.Write(node); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "k8s.device-plugin.nvidia.com-gpu.json")
	store := inventory.NewStore(node)
	done := make(chan struct{})
	go func() { defer close(done); w.Follow(t.Context(), store) }()
	t.Cleanup(func() { <-done }) // t.Context ends before cleanups run

	// A reader loading the file throughout: every read is a whole spec.
	var stop atomic.Bool
	var torn atomic.Value
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			data, err := os.ReadFile(path)
			if err != nil {
				torn.Store(err.Error())
				return
			}
			var s specs.Spec
			if err := json.Unmarshal(data, &s); err != nil || len(s.Devices) == 0 {
				torn.Store(fmt.Sprintf("partial spec (%d bytes): %v", len(data), err))
				return
			}
		}
	}()

	removed := node.GPUs[7]
	next := *node
	next.GPUs = slices.Clone(node.GPUs[:7])
	next.Links = nil
	added := node.GPUs[7]
	added.UUID = "GPU-00000000-0000-0000-0000-00000000beef"
	for i := 0; i < 20; i++ { // many rewrites while the reader runs
		n := next
		if i%2 == 1 {
			n.GPUs = append(slices.Clone(next.GPUs), added)
		}
		store.SetNode(&n)
		time.Sleep(5 * time.Millisecond)
	}
	store.SetNode(&inventory.Node{DevRoot: node.DevRoot, GPUs: append(slices.Clone(next.GPUs), added)})
	var got []string
	waittest.UntilSays(t, 10*time.Second, "the spec rewritten", func() (bool, string) {
		got, _ = cdispec.Resolve(dir)
		return slices.Contains(got, cdispec.PluginKind+"="+added.UUID) && !slices.Contains(got, cdispec.PluginKind+"="+removed.UUID), fmt.Sprint(got)
	})
	if len(got) != 9 {
		t.Errorf("resolves %d names, want 8 GPUs and all", len(got))
	}
	stop.Store(true)
	wg.Wait()
	if v := torn.Load(); v != nil {
		t.Errorf("a reader saw %v", v)
	}
	// A last rewrite may still be between its temporary file and the rename.
	waittest.UntilSays(t, 5*time.Second, "only the spec in its folder (no temporary files left)", func() (bool, string) {
		entries, _ := os.ReadDir(dir)
		return len(entries) == 1, fmt.Sprintf("%d files", len(entries))
	})
}
