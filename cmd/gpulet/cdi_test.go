package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/waittest"
)

// injected resolves names with the CDI library as a runtime does and
// returns the GPU device nodes the container gets (control nodes left out).
func injected(t *testing.T, dir string, names ...string) []string {
	t.Helper()
	cache, _ := cdi.NewCache(cdi.WithSpecDirs(dir), cdi.WithAutoRefresh(false))
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("CDI library cannot load the spec: %v", errs)
	}
	o := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	if unresolved, err := cache.InjectDevices(o, names...); err != nil {
		if strings.Contains(err.Error(), "not a device node") {
			t.Skip("simulated device nodes are plain files here (no mknod); runtimes need character devices")
		}
		t.Fatalf("inject %v: unresolved %v: %v", names, unresolved, err)
	}
	var out []string
	for _, d := range o.Linux.Devices {
		if strings.HasPrefix(d.Path, "/dev/nvidia") && strings.TrimLeft(strings.TrimPrefix(d.Path, "/dev/nvidia"), "0123456789") == "" {
			out = append(out, d.Path)
		}
	}
	slices.Sort(out)
	return out
}

func TestCDIGenerateResolvesIndexUUIDAndAll(t *testing.T) {
	root := t.TempDir()
	simRoot := filepath.Join(root, "sim")
	if out, err := gpulet(t, "sim", "devices", "--sim-profile=dgx-h100", "--sim-root="+simRoot); err != nil {
		t.Fatalf("gpulet sim devices: %v\n%s", err, out)
	}
	var node nodeFile
	data, err := os.ReadFile(filepath.Join(simRoot, "node.json"))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(data, &node)

	dir := filepath.Join(root, "cdi")
	if out, err := gpulet(t, "cdi", "generate", "--backend=sim", "--sim-profile=dgx-h100", "--sim-root="+simRoot,
		"--output="+filepath.Join(dir, "nvidia.yaml")); err != nil {
		t.Fatalf("gpulet cdi generate: %v\n%s", err, out)
	}
	if got := injected(t, dir, "nvidia.com/gpu=0"); !slices.Equal(got, []string{"/dev/nvidia0"}) {
		t.Errorf("nvidia.com/gpu=0 injects %v", got)
	}
	if got := injected(t, dir, "nvidia.com/gpu="+node.GPUs[3].UUID); !slices.Equal(got, []string{"/dev/nvidia3"}) {
		t.Errorf("nvidia.com/gpu=<GPU 3's UUID> injects %v", got)
	}
	if got := injected(t, dir, "nvidia.com/gpu=all"); len(got) != 8 {
		t.Errorf("nvidia.com/gpu=all injects %v, want 8 GPUs", got)
	}

	// JSON on stdout parses back as the same devices.
	out, err := exec.Command(binary(t), "cdi", "generate", "--backend=sim", "--sim-profile=dgx-h100", "--sim-root="+simRoot, "--format=json").Output()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := cdi.ParseSpec(out)
	if err != nil {
		t.Fatalf("stdout is not a CDI spec: %v\n%s", err, out)
	}
	if raw.Kind != "nvidia.com/gpu" || len(raw.Devices) != 17 {
		t.Errorf("kind %q with %d devices, want nvidia.com/gpu with 8 by index, 8 by UUID and all", raw.Kind, len(raw.Devices))
	}
	// The simulator's stand-in driver root is mounted as a real node's.
	var video bool
	for _, m := range raw.ContainerEdits.Mounts {
		if !strings.HasPrefix(m.HostPath, filepath.Join(simRoot, "driver")+"/") && m.HostPath != "/dev/null" {
			t.Errorf("mount %s <- %s is not from the simulated driver root", m.ContainerPath, m.HostPath)
		}
		video = video || m.ContainerPath == "/usr/lib/x86_64-linux-gnu/libnvcuvid.so.1"
	}
	if !video {
		t.Errorf("the simulated node's spec does not mount libnvcuvid.so.1 (%d mounts)", len(raw.ContainerEdits.Mounts))
	}

	list, err := gpulet(t, "cdi", "list", "--spec-dirs="+dir)
	if err != nil {
		t.Fatalf("gpulet cdi list: %v\n%s", err, list)
	}
	for _, want := range []string{"nvidia.com/gpu=0\n", "nvidia.com/gpu=" + node.GPUs[7].UUID + "\n", "nvidia.com/gpu=all\n"} {
		if !strings.Contains(list, want) {
			t.Errorf("cdi list lacks %q:\n%s", want, list)
		}
	}
}

// gpulet run with cdi-cri writes the spec before it registers; the names
// Allocate hands out resolve to exactly the allocated GPUs; a removed GPU
// leaves the spec; SIGTERM leaves the spec in place.
func TestRunWritesTheCDISpecAllocateNames(t *testing.T) {
	cdiDir := filepath.Join(t.TempDir(), "cdi")
	d := startDaemon(t, "dgx-h100", "--device-list-strategy=cdi-cri", "--cdi-spec-dir="+cdiDir)
	reg, err := d.kubelet.WaitRegistration(20 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(cdiDir, "k8s.device-plugin.nvidia.com-gpu.json")
	if _, err := os.Stat(specPath); err != nil {
		t.Fatalf("registered without a spec: %v", err)
	}
	var node nodeFile
	data, err := os.ReadFile(filepath.Join(d.simRoot, "node.json"))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(data, &node)

	client, closeFn, err := plugin.Dial(d.dir, reg.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := []string{node.GPUs[5].UUID, node.GPUs[2].UUID}
	resp, err := client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range resp.ContainerResponses[0].CdiDevices {
		names = append(names, c.Name)
	}
	if want := []string{"k8s.device-plugin.nvidia.com/gpu=" + ids[0], "k8s.device-plugin.nvidia.com/gpu=" + ids[1]}; !slices.Equal(names, want) {
		t.Fatalf("CDI names %v, want %v", names, want)
	}
	want := []string{fmt.Sprintf("/dev/nvidia%d", node.GPUs[2].Minor), fmt.Sprintf("/dev/nvidia%d", node.GPUs[5].Minor)}
	if got := injected(t, cdiDir, names...); !slices.Equal(got, want) {
		t.Errorf("the allocated names inject %v, want exactly the allocated GPUs %v", got, want)
	}

	doctor, err := gpulet(t, "doctor", "--backend=sim", "--sim-profile=dgx-h100", "--sim-root="+d.simRoot, "--device-plugin-path="+d.dir,
		"--device-list-strategy=cdi-cri", "--cdi-spec-dir="+cdiDir, "-o", "json")
	if !strings.Contains(doctor, `"check": "CDI spec",
    "status": "OK"`) {
		t.Errorf("doctor (err %v) does not pass the CDI check:\n%s", err, doctor)
	}

	// A removed GPU's name stops resolving; the others stay.
	if out, err := gpulet(t, "sim", "remove", "--gpu=7", "--sim-root="+d.simRoot); err != nil {
		t.Fatalf("gpulet sim remove: %v\n%s", err, out)
	}
	gone := "k8s.device-plugin.nvidia.com/gpu=" + node.GPUs[7].UUID
	waittest.UntilSays(t, 20*time.Second, "the spec stops resolving the removed GPU", func() (bool, string) {
		list, _ := gpulet(t, "cdi", "list", "--spec-dirs="+cdiDir)
		return !strings.Contains(list, gone) && strings.Contains(list, names[0]), list
	})

	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.cmd.Wait(); err != nil {
		t.Fatalf("gpulet exited with %v after SIGTERM", err)
	}
	if got := injected(t, cdiDir, names...); !slices.Equal(got, want) {
		t.Errorf("after shutdown the names inject %v, want %v: the spec must outlive gpulet", got, want)
	}
}

func TestDoctorSkipsCDIWithoutACDIStrategy(t *testing.T) {
	out, _ := gpulet(t, "doctor", "--backend=sim", "--sim-root="+filepath.Join(t.TempDir(), "sim"), "--device-plugin-path="+t.TempDir())
	if !strings.Contains(out, "CDI spec") || !strings.Contains(out, "SKIP") || !strings.Contains(out, "envvar hands out no CDI names") {
		t.Errorf("doctor does not say the CDI check is skipped and why:\n%s", out)
	}
}
