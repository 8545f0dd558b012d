package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
)

// gpuletBin is the real binary, built once for every test here; none
// with -short (the inner loop builds no binaries), see binary.
var gpuletBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "gpulet-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gpuletBin = filepath.Join(dir, "gpulet")
	build := exec.Command("go", "build", "-o", gpuletBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build gpulet:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// binary is the gpulet binary; a test that runs it is skipped with -short.
func binary(t testing.TB) string {
	t.Helper()
	if gpuletBin == "" {
		t.Skip("-short: runs the gpulet binary, which -short does not build")
	}
	return gpuletBin
}

func gpulet(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(binary(t), args...).CombinedOutput()
	return string(out), err
}

// runningDaemon is a running `gpulet run`.
type runningDaemon struct {
	cmd     *exec.Cmd
	log     *strings.Builder
	simRoot string
	dir     string
	kubelet *plugintest.Kubelet
}

func startDaemon(t testing.TB, profile string, extra ...string) *runningDaemon {
	t.Helper()
	return startGpulet(t, []string{binary(t)}, nil, func(d *runningDaemon) []string {
		return append([]string{"--backend=sim", "--sim-profile=" + profile, "--sim-root=" + d.simRoot}, extra...)
	})
}

// startGpulet starts `gpulet run` as argv (the binary, or qemu-user and the binary) in env (nil:
// the test's), serving a plugintest kubelet in a folder of its own; args gives the backend's flags.
func startGpulet(t testing.TB, argv, env []string, args func(*runningDaemon) []string) *runningDaemon {
	t.Helper()
	k := plugintest.StartKubeletT(t)
	dir := k.Dir
	d := &runningDaemon{dir: dir, kubelet: k, simRoot: filepath.Join(dir, "sim"), log: &strings.Builder{}}
	full := append(append(argv[1:len(argv):len(argv)], "run", "--device-plugin-path="+dir, "--metrics-address=127.0.0.1:0"), args(d)...)
	d.cmd = exec.Command(argv[0], full...)
	d.cmd.Env = env
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			d.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("gpulet log:\n%s", d.log)
		}
	})
	return d
}

// health reads ListAndWatch messages until want reports true.
func waitList(t *testing.T, stream pluginapi.DevicePlugin_ListAndWatchClient, want func(map[string]string) bool) map[string]string {
	t.Helper()
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("ListAndWatch: %v", err)
		}
		m := map[string]string{}
		for _, d := range resp.Devices {
			m[d.ID] = d.Health
		}
		if want(m) {
			return m
		}
	}
}

func healthy(m map[string]string) int {
	n := 0
	for _, h := range m {
		if h == pluginapi.Healthy {
			n++
		}
	}
	return n
}

type nodeFile struct {
	GPUs []struct {
		UUID  string `json:"uuid"`
		Minor int    `json:"minor"`
	} `json:"gpus"`
}

func TestRunServesSimulatedNodeAndFollowsTheSimCLI(t *testing.T) {
	d := startDaemon(t, "dgx-h100", "--pass-device-specs")
	reg, err := d.kubelet.WaitRegistration(20 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if reg.ResourceName != "nvidia.com/gpu" {
		t.Fatalf("registered %q", reg.ResourceName)
	}
	client, closeFn, err := plugin.Dial(d.dir, reg.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	waitList(t, stream, func(m map[string]string) bool { return len(m) == 8 && healthy(m) == 8 })

	var node nodeFile
	data, err := os.ReadFile(filepath.Join(d.simRoot, "node.json"))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(data, &node)
	g2, g3 := node.GPUs[2].UUID, node.GPUs[3].UUID

	sim := func(args ...string) {
		t.Helper()
		if out, err := gpulet(t, append(append([]string{"sim"}, args...), "--sim-root="+d.simRoot)...); err != nil {
			t.Fatalf("gpulet sim %v: %v\n%s", args, err, out)
		}
	}
	// An application XID first, then a real fault: only the real one counts.
	sim("fault", "--gpu=2", "--xid=13")
	sim("fault", "--gpu=3", "--xid=48")
	m := waitList(t, stream, func(m map[string]string) bool {
		if m[g2] != pluginapi.Healthy {
			t.Fatalf("XID 13 (an application error) made GPU 2 unhealthy")
		}
		return m[g3] == pluginapi.Unhealthy
	})
	if healthy(m) != 7 || len(m) != 8 {
		t.Fatalf("after XID 48: %d healthy of %d", healthy(m), len(m))
	}
	// Allocate refuses the broken GPU and serves a healthy one with its device node.
	if _, err := client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{g3}}}}); err == nil {
		t.Error("Allocate accepted an unhealthy GPU")
	}
	resp, err := client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{g2}}}})
	if err != nil {
		t.Fatal(err)
	}
	c := resp.ContainerResponses[0]
	if c.Envs["NVIDIA_VISIBLE_DEVICES"] != g2 {
		t.Errorf("env %v", c.Envs)
	}
	last := c.Devices[len(c.Devices)-1]
	if last.ContainerPath != fmt.Sprintf("/dev/nvidia%d", node.GPUs[2].Minor) || last.HostPath != filepath.Join(d.simRoot, "dev", "nvidia2") {
		t.Errorf("device spec %+v", last)
	}
	if _, err := os.Stat(last.HostPath); err != nil {
		t.Errorf("advertised device node missing: %v", err)
	}

	sim("clear", "--gpu=3")
	waitList(t, stream, func(m map[string]string) bool { return healthy(m) == 8 })
	sim("remove", "--gpu=7")
	waitList(t, stream, func(m map[string]string) bool { return len(m) == 7 })
	sim("restore", "--all")
	waitList(t, stream, func(m map[string]string) bool { return len(m) == 8 && healthy(m) == 8 })

	// SIGTERM: a clean exit that leaves no socket behind.
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.cmd.Wait(); err != nil {
		t.Fatalf("gpulet exited with %v after SIGTERM", err)
	}
	if _, err := os.Stat(filepath.Join(d.dir, reg.Endpoint)); !os.IsNotExist(err) {
		t.Errorf("socket left after SIGTERM: %v", err)
	}
}

func TestFaultsSurviveADaemonRestart(t *testing.T) {
	d := startDaemon(t, "pcie-4x-l4")
	if _, err := d.kubelet.WaitRegistration(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	if out, err := gpulet(t, "sim", "fault", "--gpu=1", "--reason=fan failure", "--sim-root="+d.simRoot); err != nil {
		t.Fatal(err, out)
	}
	d.cmd.Process.Kill()
	d.cmd.Wait()
	// A new daemon on the same sim root sees the GPU as broken as it was.
	d2 := exec.Command(binary(t), "run", "--backend=sim", "--sim-profile=pcie-4x-l4", "--sim-root="+d.simRoot, "--device-plugin-path="+d.dir)
	var log strings.Builder
	d2.Stderr = &log
	if err := d2.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { d2.Process.Kill(); d2.Wait() }()
	reg, err := d.kubelet.WaitRegistration(20 * time.Second)
	if err != nil {
		t.Fatal(err, log.String())
	}
	client, closeFn, _ := plugin.Dial(d.dir, reg.Endpoint)
	defer closeFn()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	waitList(t, stream, func(m map[string]string) bool { return len(m) == 4 && healthy(m) == 3 })
}

func TestListOutputs(t *testing.T) {
	root := t.TempDir()
	out, err := gpulet(t, "list", "--backend=sim", "--sim-profile=dgx1-v100", "--sim-root="+root, "-o", "json")
	if err != nil {
		t.Fatal(err, out)
	}
	var l listing
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &l); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(l.Node.GPUs) != 8 || l.Node.Link(0, 3).NVLinks != 2 || len(l.Resources) != 1 || l.Resources[0].Count != 8 || l.Resources[0].Healthy != 8 {
		t.Errorf("json listing: %d GPUs, resources %+v", len(l.Node.GPUs), l.Resources)
	}
	out, err = gpulet(t, "list", "--backend=sim", "--sim-profile=h200", "--sim-root="+root, "-o", "yaml")
	if err != nil {
		t.Fatal(err, out)
	}
	var y listing
	if err := yaml.Unmarshal([]byte(out), &y); err != nil || y.Node.GPUs[0].UUID != "GPU-ac44f0a6-789f-45de-f092-9a23e7c04123" {
		t.Errorf("yaml listing: %v %+v", err, y.Node)
	}
	out, err = gpulet(t, "list", "--backend=sim", "--sim-profile=dgx1-v100", "--sim-root="+root)
	if err != nil {
		t.Fatal(err, out)
	}
	for _, want := range []string{"Tesla V100-SXM2-16GB", "NV2", "SYS", "nvidia.com/gpu  8         8"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "node.json")); !os.IsNotExist(err) {
		t.Error("list published a node into the sim root; only the daemon may")
	}
}

func TestClearErrors(t *testing.T) {
	cases := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"run", "--backend=nvml", "--device-plugin-path=" + t.TempDir()}, nil, "libnvidia-ml.so.1 not found"},
		{[]string{"run", "--device-list-strategy=envvar,magic"}, nil, `"magic" is not one of`},
		{[]string{"run"}, []string{"DEVICE_ID_STRATEGY=serial"}, `device-id-strategy "serial"`},
		{[]string{"list", "--backend=sim", "--sim-profile=dgx-h200"}, nil, "neither a built-in profile"},
		{[]string{"list", "-o", "xml"}, nil, `output "xml"`},
		{[]string{"sim", "fault", "--sim-root=" + t.TempDir(), "--sim-profile=h200", "--gpu=4"}, nil, "no GPU with index 4"},
		{[]string{"sim", "fault", "--sim-root=" + t.TempDir()}, nil, "--gpu is required"},
		{[]string{"sim", "clear", "--sim-root=" + t.TempDir(), "--gpu=0"}, nil, "gpulet run --backend=sim"},
	}
	for _, tc := range cases {
		cmd := exec.Command(binary(t), tc.args...)
		cmd.Env = append(os.Environ(), tc.env...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("gpulet %v: err=%v, output should say %q:\n%s", tc.args, err, tc.want, out)
		}
	}
}

func TestStaysUpWithoutGPUsWhenAsked(t *testing.T) {
	cmd := exec.Command(binary(t), "run", "--backend=nvml", "--device-plugin-path="+t.TempDir(), "--metrics-address=127.0.0.1:0")
	cmd.Env = append(os.Environ(), "FAIL_ON_INIT_ERROR=false")
	var log strings.Builder
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("exited (%v) although fail-on-init-error is false:\n%s", err, log.String())
	case <-time.After(500 * time.Millisecond):
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := <-done; err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	if !strings.Contains(log.String(), "waiting for the driver") {
		t.Errorf("log does not say why it idles:\n%s", log.String())
	}
}

// TestExitsWithoutGPUs: with fail-on-init-error (the default) and no NVML
// library, gpulet run exits and says what to do.
func TestExitsWithoutGPUs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), "run", "--backend=nvml", "--nvidia-driver-root="+t.TempDir(),
		"--device-plugin-path="+t.TempDir(), "--metrics-address=127.0.0.1:0")
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH=")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Skipf("gpulet run kept running: this machine has an NVML library\n%s", out)
	}
	if err == nil {
		t.Fatalf("gpulet run exited 0 without a driver:\n%s", out)
	}
	for _, want := range []string{"libnvidia-ml.so.1 not found", "--backend=sim"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output does not say %q:\n%s", want, out)
		}
	}
}

func TestVersion(t *testing.T) {
	out, err := gpulet(t, "version")
	if err != nil || !strings.HasPrefix(out, "gpulet ") {
		t.Errorf("%q %v", out, err)
	}
	for _, want := range []string{"\ncommit: ", "\ngo: go1.", "\nplatform: linux/"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
}
