package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/cdispec"
)

// differencesFile lists every intended difference between gpulet's spec and
// nvidia-ctk's on the same node, one per line with its reason.
const differencesFile = "testdata/cdi-nvidia-differences.txt"

// fakeNVIDIANode lays out a driver root with NVIDIA's mock NVML as its
// libnvidia-ml, the rest of the driver's files as ELF objects with their
// sonames (built with cc), and the device nodes of the mock's GPUs. It
// returns the root and the mock's config file.
func fakeNVIDIANode(t *testing.T) (root, config, version string) {
	t.Helper()
	mock := os.Getenv("GPULET_NVML_MOCK")
	if mock == "" || os.Getenv("GPULET_NVIDIA_CTK_BIN") == "" {
		t.Skip("GPULET_NVML_MOCK and GPULET_NVIDIA_CTK_BIN unset (make unit sets them)")
	}
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler to build the stand-in driver libraries")
	}
	config = filepath.Join(mock, "configs", "mock-nvml-config-h100.yaml")
	data, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*driver_version:\s*"?([0-9.]+)"?`).FindSubmatch(data)
	if m == nil {
		t.Fatalf("%s names no driver_version", config)
	}
	version = string(m[1])
	root = t.TempDir()
	src := filepath.Join(t.TempDir(), "empty.c")
	if err := os.WriteFile(src, []byte("int gpulet_stand_in;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mockLib, err := filepath.EvalSymlinks(filepath.Join(mock, "lib", "libnvidia-ml.so.1"))
	if err != nil {
		t.Fatal(err)
	}
	writeLib := func(p, soname string) error {
		if soname == "libnvidia-ml.so.1" {
			return copyFile(mockLib, p)
		}
		if out, err := exec.Command(cc, "-shared", "-Wl,-soname,"+soname, "-o", p, src).CombinedOutput(); err != nil {
			return fmt.Errorf("cc: %v: %s", err, out)
		}
		return nil
	}
	if _, err := cdispec.WriteStandInDriver(root, version, writeLib); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	nodes := map[string]uint32{"nvidiactl": 255, "nvidia-modeset": 254}
	for i := range 8 {
		nodes[fmt.Sprintf("nvidia%d", i)] = uint32(i)
	}
	for n, minor := range nodes {
		if err := unix.Mknod(filepath.Join(dev, n), unix.S_IFCHR|0o666, int(unix.Mkdev(195, minor))); err != nil {
			t.Skipf("mknod %s: %v (NVIDIA's generator takes only character devices)", n, err)
		}
	}
	for n, minor := range map[string]uint32{"nvidia-uvm": 0, "nvidia-uvm-tools": 1} {
		if err := unix.Mknod(filepath.Join(dev, n), unix.S_IFCHR|0o666, int(unix.Mkdev(510, minor))); err != nil {
			t.Fatal(err)
		}
	}
	return root, config, version
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

const hookPath = "/usr/bin/nvidia-cdi-hook"

func nvidiaSpec(t *testing.T, root, config string) *specs.Spec {
	t.Helper()
	out := filepath.Join(t.TempDir(), "nvidia.json")
	cmd := exec.Command(filepath.Join(os.Getenv("GPULET_NVIDIA_CTK_BIN"), "nvidia-ctk"), "cdi", "generate",
		"--driver-root="+root, "--dev-root="+root, "--nvidia-cdi-hook-path="+hookPath, "--format=json", "--output="+out)
	cmd.Env = append(os.Environ(), "MOCK_NVML_CONFIG="+config)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nvidia-ctk cdi generate: %v\n%s", err, b)
	}
	return readSpec(t, out)
}

func gpuletSpec(t *testing.T, root, config string, args ...string) *specs.Spec {
	t.Helper()
	out := filepath.Join(t.TempDir(), "gpulet.json")
	cmd := exec.Command(gpuletBin, append([]string{"cdi", "generate", "--backend=nvml", "--nvidia-driver-root=" + root,
		"--dev-root=" + root, "--output=" + out}, args...)...)
	cmd.Env = append(os.Environ(), "MOCK_NVML_CONFIG="+config)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gpulet cdi generate %v: %v\n%s", args, err, b)
	}
	return readSpec(t, out)
}

func readSpec(t *testing.T, p string) *specs.Spec {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return &s
}

// hookKey is a hook as a comparable line: when, binary, args (the links of
// create-symlinks sorted: their order is not meaningful), env.
func hookKey(h *specs.Hook) string {
	args := slices.Clone(h.Args)
	if len(args) > 1 && args[1] == cdispec.HookCreateSymlinks {
		var links []string
		for i := 2; i+1 < len(args); i += 2 {
			links = append(links, args[i+1])
		}
		slices.Sort(links)
		args = append(args[:2], links...)
	}
	return fmt.Sprintf("%s %s %s %s", h.HookName, h.Path, strings.Join(args, " "), strings.Join(h.Env, ","))
}

// diffSets appends "<what>-only-nvidia x" and "<what>-only-gpulet x" for the
// items of one set and not the other.
func diffSets(out *[]string, what string, nvidia, gpulet []string) {
	for _, n := range nvidia {
		if !slices.Contains(gpulet, n) {
			*out = append(*out, what+"-only-nvidia "+n)
		}
	}
	for _, g := range gpulet {
		if !slices.Contains(nvidia, g) {
			*out = append(*out, what+"-only-gpulet "+g)
		}
	}
}

func mountKeys(ms []*specs.Mount) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ContainerPath+" <- "+m.HostPath+" ("+strings.Join(m.Options, ",")+")")
	}
	return out
}

func hostFiles(ms []*specs.Mount) []string {
	var out []string
	for _, m := range ms {
		if m.HostPath != "/dev/null" && !slices.Contains(out, m.HostPath) {
			out = append(out, m.HostPath)
		}
	}
	slices.Sort(out)
	return out
}

// compareSpecs lists how two specs differ in devices, device nodes, mounts,
// env and hooks; root is replaced by ROOT so the lines are stable.
func compareSpecs(nv, gp *specs.Spec, root string) []string {
	var out []string
	devs := func(s *specs.Spec) map[string]string {
		m := map[string]string{}
		for _, d := range s.Devices {
			var parts []string
			for _, n := range d.ContainerEdits.DeviceNodes {
				parts = append(parts, n.Path+"<-"+n.HostPath)
			}
			for _, h := range d.ContainerEdits.Hooks {
				parts = append(parts, hookKey(h))
			}
			slices.Sort(parts)
			m[d.Name] = strings.Join(parts, "; ")
		}
		return m
	}
	nd, gd := devs(nv), devs(gp)
	var nNames, gNames []string
	for n := range nd {
		nNames = append(nNames, n)
	}
	for n := range gd {
		gNames = append(gNames, n)
	}
	diffSets(&out, "device", nNames, gNames)
	for n, v := range nd {
		if g, ok := gd[n]; ok && g != v {
			out = append(out, "device-edits "+n+": nvidia ["+v+"] gpulet ["+g+"]")
		}
	}
	nodes := func(s *specs.Spec) []string {
		var o []string
		for _, n := range s.ContainerEdits.DeviceNodes {
			o = append(o, n.Path+"<-"+n.HostPath)
		}
		return o
	}
	diffSets(&out, "node", nodes(nv), nodes(gp))
	diffSets(&out, "mount", mountKeys(nv.ContainerEdits.Mounts), mountKeys(gp.ContainerEdits.Mounts))
	diffSets(&out, "env", nv.ContainerEdits.Env, gp.ContainerEdits.Env)
	var nh, gh []string
	for _, h := range nv.ContainerEdits.Hooks {
		nh = append(nh, hookKey(h))
	}
	for _, h := range gp.ContainerEdits.Hooks {
		gh = append(gh, hookKey(h))
	}
	diffSets(&out, "hook", nh, gh)
	for i := range out {
		out[i] = strings.ReplaceAll(out[i], root, "ROOT")
	}
	sort.Strings(out)
	return out
}

// readDifferences reads the intended differences: "<difference> | <reason>"
// per line, # comments; a line without a reason is an error.
func readDifferences(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open(differencesFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		diff, reason, ok := strings.Cut(line, " | ")
		if !ok || strings.TrimSpace(reason) == "" {
			t.Fatalf("%s: %q has no reason (\"<difference> | <reason>\")", differencesFile, line)
		}
		out[strings.TrimSpace(diff)] = reason
	}
	return out
}

// TestCDISpecMatchesNVIDIA builds gpulet's and nvidia-ctk's spec of the same
// node (NVIDIA's mock NVML, a driver root with the driver's files) and
// fails on every difference not listed, with its reason, in
// testdata/cdi-nvidia-differences.txt, and on every listed one that no
// longer occurs. Then it checks gpulet's per-capability specs mount only
// files NVIDIA's spec mounts, and the files of that capability.
func TestCDISpecMatchesNVIDIA(t *testing.T) {
	root, config, version := fakeNVIDIANode(t)
	nv := nvidiaSpec(t, root, config)
	hooked := gpuletSpec(t, root, config, "--cdi-hooks=on", "--nvidia-cdi-hook-path="+hookPath)

	intended := readDifferences(t)
	got := compareSpecs(nv, hooked, root)
	for _, d := range got {
		if _, ok := intended[d]; !ok {
			t.Errorf("unlisted difference (fix it or list it with its reason in %s):\n%s", differencesFile, d)
		}
	}
	for d := range intended {
		if !slices.Contains(got, d) {
			t.Errorf("listed difference no longer occurs; remove it from %s: %s", differencesFile, d)
		}
	}
	t.Logf("nvidia-ctk: %d devices, %d mounts (%d files), %d hooks; gpulet (hooks): %d devices, %d mounts (%d files), %d hooks; %d listed differences",
		len(nv.Devices), len(nv.ContainerEdits.Mounts), len(hostFiles(nv.ContainerEdits.Mounts)), len(nv.ContainerEdits.Hooks),
		len(hooked.Devices), len(hooked.ContainerEdits.Mounts), len(hostFiles(hooked.ContainerEdits.Mounts)), len(hooked.ContainerEdits.Hooks), len(got))

	// Hook-free: the same files, every name a mount, no hooks.
	free := gpuletSpec(t, root, config, "--cdi-hooks=off")
	if h, f := hostFiles(hooked.ContainerEdits.Mounts), hostFiles(free.ContainerEdits.Mounts); !slices.Equal(h, f) {
		t.Errorf("hook-free mounts %d files, hook mode %d", len(f), len(h))
	}
	if len(free.ContainerEdits.Hooks) != 0 {
		t.Errorf("hook-free spec has %d hooks", len(free.ContainerEdits.Hooks))
	}
	// The comparison sees what hook-free leaves out (so it would see a
	// hook mode that did).
	freeDiff := compareSpecs(nv, free, root)
	for _, want := range []string{"hook-only-nvidia createContainer " + hookPath + " nvidia-cdi-hook enable-cuda-compat",
		"env-only-nvidia NVIDIA_CTK_LIBCUDA_DIR=", "mount-only-gpulet /usr/lib/x86_64-linux-gnu/libcuda.so.1 <- ROOT"} {
		if !slices.ContainsFunc(freeDiff, func(d string) bool { return strings.HasPrefix(d, want) }) {
			t.Errorf("comparing NVIDIA's spec with the hook-free one misses %q:\n%s", want, strings.Join(freeDiff, "\n"))
		}
	}
	t.Logf("gpulet (hook-free): %d mounts of %d files", len(free.ContainerEdits.Mounts), len(hostFiles(free.ContainerEdits.Mounts)))

	// Per capability: a subset of NVIDIA's files, with that capability's.
	nvFiles := hostFiles(nv.ContainerEdits.Mounts)
	lib := func(name string) string { return filepath.Join(root, cdispec.StandInLibDir, name+".so."+version) }
	for _, tc := range []struct {
		caps       string
		want, not  []string
		wantCounts bool
	}{
		{"utility", []string{lib("libnvidia-ml"), lib("libnvidia-cfg"), filepath.Join(root, "usr/bin/nvidia-smi")}, []string{lib("libcuda")}, true},
		{"compute", []string{lib("libcuda"), lib("libnvidia-ptxjitcompiler"), lib("libnvidia-nvvm")}, []string{lib("libnvidia-ml"), lib("libnvcuvid")}, true},
		{"video", []string{lib("libnvcuvid"), lib("libnvidia-encode"), lib("libnvidia-opticalflow"), lib("libcuda")}, []string{lib("libnvidia-glcore")}, true},
		{"graphics", []string{lib("libnvidia-glcore"), lib("libEGL_nvidia"), lib("libGLX_nvidia"), lib("libnvidia-rtcore")}, []string{lib("libcuda")}, true},
		{"display", []string{filepath.Join(root, "usr/lib/xorg/modules/drivers/nvidia_drv.so")}, nil, true},
		{"ngx", []string{lib("libnvidia-ngx")}, []string{lib("libcuda")}, true},
		{"compute,utility,video", []string{lib("libnvcuvid"), lib("libnvidia-ml"), lib("libcuda")}, []string{lib("libnvidia-glcore")}, true},
		{"all", nvFiles, nil, true},
	} {
		s := gpuletSpec(t, root, config, "--cdi-hooks=on", "--nvidia-cdi-hook-path="+hookPath, "--cdi-driver-capabilities="+tc.caps)
		files := hostFiles(s.ContainerEdits.Mounts)
		for _, f := range files {
			if !slices.Contains(nvFiles, f) {
				t.Errorf("%s: gpulet mounts %s, NVIDIA's spec does not", tc.caps, f)
			}
		}
		for _, w := range tc.want {
			if !slices.Contains(files, w) {
				t.Errorf("%s: no %s", tc.caps, w)
			}
		}
		for _, n := range tc.not {
			if slices.Contains(files, n) {
				t.Errorf("%s: mounts %s", tc.caps, n)
			}
		}
		t.Logf("capability %-22s gpulet %2d files (NVIDIA's spec, every capability: %d)", tc.caps, len(files), len(nvFiles))
		if tc.caps == "compute,utility,video" {
			var names []string
			for _, f := range files {
				names = append(names, path.Base(f))
			}
			t.Logf("compute,utility,video: %s", strings.Join(names, " "))
		}
	}
}
