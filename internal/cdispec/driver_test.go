package cdispec_test

import (
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/cdispec"
)

const standInVersion = "580.159.04"

// mountsOf are the node-wide mounts of a spec built for the h200 profile
// with driver d and options o.
func mountsOf(t *testing.T, d *cdispec.Driver, o cdispec.Options) []*specs.Mount {
	t.Helper()
	return specOf(t, d, o).ContainerEdits.Mounts
}

func specOf(t *testing.T, d *cdispec.Driver, o cdispec.Options) *specs.Spec {
	t.Helper()
	node, _ := simNode(t, builtin(t, "h200"))
	o.Kind, o.Driver = cdispec.ToolkitKind, d
	s, err := cdispec.Build(node, o)
	if err != nil {
		t.Fatal(err)
	}
	assertLoads(t, s)
	return s
}

func standIn(t *testing.T) *cdispec.Driver {
	t.Helper()
	root := t.TempDir()
	if _, err := cdispec.WriteStandInDriver(root, standInVersion, nil); err != nil {
		t.Fatal(err)
	}
	d, err := cdispec.FindDriver(root, standInVersion)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func basenames(ms []*specs.Mount) []string {
	var out []string
	for _, m := range ms {
		out = append(out, path.Base(m.ContainerPath))
	}
	return out
}

func TestParseCapabilities(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{"", "compute,utility", ""}, // NVIDIA's default
		{"all", "all", ""},
		{"compute, utility ,all", "all", ""},
		{"video", "compute,video", ""},      // video brings the compute libraries
		{"display", "graphics,display", ""}, // display brings graphics
		{"utility,GRAPHICS", "utility,graphics", ""},
		{"compute,cuda", "", `"cuda"`},
	} {
		c, err := cdispec.ParseCapabilities(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want one naming %s", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || c.String() != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.in, c.String(), err, tc.want)
		}
	}
}

// Each capability mounts its files and not another's; the firmware comes
// with every one, files no list names only with all.
func TestCapabilitiesSelectDriverFiles(t *testing.T) {
	d := standIn(t)
	for _, tc := range []struct {
		caps     string
		has, not []string
	}{
		{"utility", []string{"libnvidia-ml.so." + standInVersion, "nvidia-smi", "gsp_ga10x.bin"},
			[]string{"libcuda.so." + standInVersion, "libnvcuvid.so." + standInVersion, "nvidia-cuda-mps-control"}},
		{"compute", []string{"libcuda.so." + standInVersion, "libnvidia-ptxjitcompiler.so." + standInVersion, "nvidia-cuda-mps-control", "nvidia.icd", "gsp_tu10x.bin"},
			[]string{"libnvidia-ml.so." + standInVersion, "libnvcuvid.so." + standInVersion, "libGLX_nvidia.so." + standInVersion}},
		{"compute,utility,video", []string{"libnvcuvid.so." + standInVersion, "libnvidia-encode.so." + standInVersion,
			"libnvidia-opticalflow.so." + standInVersion, "libvdpau_nvidia.so." + standInVersion, "libcuda.so." + standInVersion},
			[]string{"libnvidia-glcore.so." + standInVersion, "libnvidia-gtk3.so." + standInVersion}},
		{"graphics", []string{"libnvidia-glcore.so." + standInVersion, "libEGL_nvidia.so." + standInVersion, "nvidia_icd.json",
			"10_nvidia.json", "libnvidia-egl-gbm.so.1.1.1"},
			[]string{"libcuda.so." + standInVersion, "nvidia_drv.so", "nvidia-xconfig"}},
		{"display", []string{"nvidia_drv.so", "libglxserver_nvidia.so." + standInVersion, "nvidia-xconfig", "libnvidia-glcore.so." + standInVersion}, nil},
		{"ngx", []string{"libnvidia-ngx.so." + standInVersion}, []string{"libcuda.so." + standInVersion}},
		{"all", []string{"libnvidia-gtk3.so." + standInVersion, "libnvidia-nvvm70.so.4", "libcuda.so." + standInVersion,
			"libnvidia-ngx.so." + standInVersion, "nvidia_drv.so"}, nil},
	} {
		c, err := cdispec.ParseCapabilities(tc.caps)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range d.Select(c) {
			got = append(got, path.Base(f.ContainerPath))
		}
		for _, h := range tc.has {
			if !slices.Contains(got, h) {
				t.Errorf("%s: no %s in %v", tc.caps, h, got)
			}
		}
		for _, n := range tc.not {
			if slices.Contains(got, n) {
				t.Errorf("%s: %s mounted", tc.caps, n)
			}
		}
	}
}

// Hook mode carries NVIDIA's hooks and mounts each file once; hook-free
// mounts every name instead and has no hooks.
func TestHookModes(t *testing.T) {
	d := standIn(t)
	libDir := "/" + cdispec.StandInLibDir
	hooked := specOf(t, d, cdispec.Options{Hooks: &cdispec.Hooks{Path: "/usr/bin/nvidia-cdi-hook"}})
	var hookArgs []string
	for _, h := range hooked.ContainerEdits.Hooks {
		if h.Path != "/usr/bin/nvidia-cdi-hook" || h.HookName != "createContainer" {
			t.Errorf("hook %+v", h)
		}
		hookArgs = append(hookArgs, strings.Join(h.Args, " "))
	}
	all := strings.Join(hookArgs, "\n")
	for _, want := range []string{
		"nvidia-cdi-hook create-symlinks",
		"--link libcuda.so." + standInVersion + "::" + libDir + "/libcuda.so.1",
		"--link libcuda.so.1::" + libDir + "/libcuda.so",
		"--link ../libnvidia-allocator.so.1::" + libDir + "/gbm/nvidia-drm_gbm.so",
		"nvidia-cdi-hook enable-cuda-compat --host-driver-version=" + standInVersion,
		"nvidia-cdi-hook update-ldcache --folder " + libDir + " --folder " + libDir + "/vdpau",
		"nvidia-cdi-hook disable-device-node-modification",
		"nvidia-cdi-hook update-application-profile",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("hooks lack %q:\n%s", want, all)
		}
	}
	if !slices.Contains(hooked.ContainerEdits.Env, "NVIDIA_CTK_LIBCUDA_DIR="+libDir) {
		t.Errorf("env %v", hooked.ContainerEdits.Env)
	}
	dev := hooked.Devices[0].ContainerEdits.Hooks
	if len(dev) != 1 || dev[0].HookName != "createRuntime" || !slices.Contains(dev[0].Args, "apply-cuda-memory-limits") {
		t.Errorf("device %s hooks %+v", hooked.Devices[0].Name, dev)
	}
	if slices.Contains(basenames(hooked.ContainerEdits.Mounts), "libcuda.so.1") {
		t.Error("hook mode mounts the soname; the hook links it")
	}

	free := specOf(t, d, cdispec.Options{})
	if len(free.ContainerEdits.Hooks) != 0 || len(free.Devices[0].ContainerEdits.Hooks) != 0 {
		t.Errorf("hook-free spec has hooks %+v", free.ContainerEdits.Hooks)
	}
	names := basenames(free.ContainerEdits.Mounts)
	for _, want := range []string{"libcuda.so.1", "libcuda.so", "libnvcuvid.so.1", "libnvidia-egl-gbm.so.1", "libGLX_indirect.so.0",
		"nvidia-drm_gbm.so", "libcuda.so." + standInVersion} {
		if !slices.Contains(names, want) {
			t.Errorf("hook-free mounts lack %s: %v", want, names)
		}
	}
	// Both modes mount the same host files.
	hosts := func(s *specs.Spec) []string {
		var out []string
		for _, m := range s.ContainerEdits.Mounts {
			if !slices.Contains(out, m.HostPath) {
				out = append(out, m.HostPath)
			}
		}
		slices.Sort(out)
		return out
	}
	if h, f := hosts(hooked), hosts(free); !slices.Equal(h, f) {
		t.Errorf("hook mode mounts %d host files, hook-free %d", len(h), len(f))
	}

	// nvidia-ctk as the hook binary takes the hook subcommand.
	ctk := specOf(t, d, cdispec.Options{Hooks: &cdispec.Hooks{Path: "/usr/bin/nvidia-ctk"}})
	if a := ctk.ContainerEdits.Hooks[0].Args; len(a) < 3 || a[0] != "nvidia-ctk" || a[1] != "hook" {
		t.Errorf("nvidia-ctk hook args %v", a)
	}
}

func TestResolveHooks(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "nvidia-cdi-hook")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "nvidia-ctk")
	for _, tc := range []struct {
		mode, path, want string
		err              bool
	}{
		{"auto", bin, bin, false},
		{"", bin, bin, false},
		{"auto", missing, "", false}, // not on the node: hook-free
		{"on", missing, missing, false},
		{"on", "", cdispec.DefaultHookPath, false},
		{"off", bin, "", false},
		{"sometimes", "", "", true},
	} {
		h, err := cdispec.ResolveHooks(tc.mode, tc.path)
		got := ""
		if h != nil {
			got = h.Path
		}
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ResolveHooks(%q, %q) = %q, %v; want %q", tc.mode, tc.path, got, err, tc.want)
		}
	}
}

// A DRA claim's spec carries the driver files of the writer's capabilities.
func TestClaimSpecCarriesDriverFiles(t *testing.T) {
	root := t.TempDir()
	if _, err := cdispec.WriteStandInDriver(root, standInVersion, nil); err != nil {
		t.Fatal(err)
	}
	node, _ := simNode(t, builtin(t, "h200"))
	node.DriverVersion = standInVersion
	dir := t.TempDir()
	w := &cdispec.Writer{Dir: dir, Options: cdispec.Options{Kind: cdispec.ClaimKind}, DriverRoot: root,
		Capabilities: "compute,utility,video", HookMode: cdispec.HookModeOff}
	p, err := w.WriteClaim(node, "1234", []cdispec.ClaimDevice{{Name: "gpu-0", UUID: node.GPUs[0].UUID}})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"/usr/lib/x86_64-linux-gnu/libnvcuvid.so.1"`, `"/usr/lib/x86_64-linux-gnu/libnvidia-encode.so.1"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("claim spec lacks %s", want)
		}
	}
	if strings.Contains(string(data), "libnvidia-glcore") {
		t.Error("claim spec mounts graphics libraries without the graphics capability")
	}
}
