package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/hardware/nvml/nvmlmocktest"
	"github.com/gpulet/gpulet/internal/plugin"
)

// arm64Gpulet is the command line that runs the linux/arm64 release binary (GPULET_ARM64_BIN,
// cross-built by `make unit`) under qemu-user, on the arm64 C library of Debian's
// libc6-arm64-cross (the one the arm64 image carries). It skips without GPULET_ARM64_BIN (plain
// go test) and fails in CI.
func arm64Gpulet(t *testing.T) []string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: qemu-user runs take tens of seconds")
	}
	bin := os.Getenv("GPULET_ARM64_BIN")
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("GPULET_ARM64_BIN is not set: run make unit, which cross-builds the arm64 binary")
		}
		t.Skip("GPULET_ARM64_BIN not set (make unit sets it)")
	}
	qemu, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		t.Fatal("qemu-aarch64-static is not installed: make cross-deps installs Debian's qemu-user-static")
	}
	const sysroot = "/usr/aarch64-linux-gnu"
	if _, err := os.Stat(filepath.Join(sysroot, "lib/ld-linux-aarch64.so.1")); err != nil {
		t.Fatalf("no arm64 C library (make cross-deps installs libc6-dev-arm64-cross): %v", err)
	}
	return []string{qemu, "-L", sysroot, bin}
}

// runArgv runs argv with args in env (nil: this process's) and returns its stdout.
func runArgv(t *testing.T, argv, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], append(argv[1:len(argv):len(argv)], args...)...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", filepath.Base(argv[len(argv)-1]), strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// The arm64 binary on the simulator says what the native one says.
func TestArm64BinaryOnTheSimulator(t *testing.T) {
	arm := arm64Gpulet(t)
	if out := runArgv(t, arm, nil, "version"); !strings.Contains(out, "\nplatform: linux/arm64\n") {
		t.Errorf("gpulet version under qemu-aarch64:\n%s", out)
	}
	root := t.TempDir()
	for _, args := range [][]string{
		{"list", "-o", "json", "--backend=sim", "--sim-profile=dgx-h100", "--sim-root=" + root},
		{"list", "--backend=sim", "--sim-profile=dgx-h100", "--sim-root=" + root},
		{"labels", "--no-timestamp", "--backend=sim", "--sim-profile=dgx-h100", "--sim-root=" + root},
		{"labels", "--no-timestamp", "--backend=sim", "--sim-profile=dgx-h100-mig-mixed", "--sim-root=" + root, "--mig-strategy=mixed"},
	} {
		native := runArgv(t, []string{binary(t)}, nil, args...)
		got := runArgv(t, arm, nil, args...)
		if got != native {
			t.Errorf("gpulet %s: arm64 and native differ\narm64:\n%s\nnative:\n%s", strings.Join(args, " "), got, native)
		}
		if len(native) < 200 {
			t.Errorf("gpulet %s printed too little to compare:\n%s", strings.Join(args, " "), native)
		}
	}
}

// The arm64 binary on NVIDIA's mock NVML cross-built for arm64 (hack/nvml-mock.sh arm64), with
// the GB200 profile: it discovers the 8 GPUs, and an XID injected with nvml-mock-ctl marks the
// GPU unhealthy at the device plugin.
func TestArm64BinaryOnTheMockNVML(t *testing.T) {
	arm := arm64Gpulet(t)
	mock := nvmlmocktest.DirArm64(t)
	config := nvmlmocktest.Config(mock, "gb200")
	overrides := filepath.Join(t.TempDir(), "overrides.yaml")
	env := append(nvmlmocktest.Env(mock, "gb200"), "MOCK_NVML_OVERRIDES="+overrides)

	var l listing
	out := runArgv(t, arm, env, "list", "--backend=nvml", "-o", "json")
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &l); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if l.Node.Backend != "nvml" || len(l.Node.GPUs) != 8 {
		t.Fatalf("discovered %d GPUs on backend %q, want 8 on nvml:\n%s", len(l.Node.GPUs), l.Node.Backend, out)
	}
	for _, g := range l.Node.GPUs {
		if g.Name != "NVIDIA GB200" || g.ComputeCapability != "10.0" {
			t.Errorf("GPU %d: %q compute %s, want NVIDIA GB200 10.0", g.Index, g.Name, g.ComputeCapability)
		}
	}
	sick := l.Node.GPUs[3].UUID

	d := startGpulet(t, arm, env, func(*runningDaemon) []string { return []string{"--backend=nvml"} })
	reg, err := d.kubelet.WaitRegistration(60 * time.Second) // qemu-user: slower than native
	if err != nil {
		t.Fatal(err)
	}
	client, closeFn, err := plugin.Dial(d.dir, reg.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	waitList(t, stream, func(m map[string]string) bool { return len(m) == 8 && healthy(m) == 8 })
	ctl := exec.Command(filepath.Join(mock, "nvml-mock-ctl"), "--file", overrides, "--config", config,
		"fail", "--gpu", "3", "--mode", "ecc_uncorrectable", "--xid", "48")
	if out, err := ctl.CombinedOutput(); err != nil {
		t.Fatalf("nvml-mock-ctl: %v\n%s", err, out)
	}
	m := waitList(t, stream, func(m map[string]string) bool { return len(m) == 8 && healthy(m) == 7 })
	if m[sick] != pluginapi.Unhealthy {
		t.Errorf("after XID 48 on GPU 3 (%s): %v", sick, m)
	}
}
