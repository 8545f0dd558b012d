package devicemanager_test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/checkpoint"
)

// mockNode is a GPU node made of NVIDIA's mock NVML ($GPULET_NVML_MOCK, built
// by hack/nvml-mock.sh) under a driver root of its own, on which gpulet's
// NVML backend and NVIDIA's own device plugin ($GPULET_NVIDIA_BIN) both run.
type mockNode struct {
	mock      string // the mock's cache folder: lib/, configs/, nvml-mock-ctl
	nvidiaBin string // folder with nvidia-device-plugin
	profile   string // e.g. "h100"
	// root is the driver root: the mock library as libnvidia-ml.so.1, a
	// stand-in libcuda.so.1 and dev/nvidia* character devices (never opened).
	root string
	gpus int
}

// requireMockNode skips tb unless both NVIDIA's mock NVML and NVIDIA's
// plugin are given (make test-kubelet and make unit pass them), then builds
// the driver root of the profile (a100, h100, ...).
func requireMockNode(tb testing.TB, profile string) *mockNode {
	tb.Helper()
	requireNode(tb)
	n := &mockNode{mock: os.Getenv("GPULET_NVML_MOCK"), nvidiaBin: os.Getenv("GPULET_NVIDIA_BIN"), profile: profile, gpus: 8}
	if n.mock == "" || n.nvidiaBin == "" {
		tb.Skip("GPULET_NVML_MOCK and GPULET_NVIDIA_BIN are not both set (make test-kubelet sets them: hack/nvml-mock.sh, test/e2e/lib/gobins.sh nvidia)")
	}
	for _, p := range []string{n.config(), filepath.Join(n.nvidiaBin, "nvidia-device-plugin")} {
		if _, err := os.Stat(p); err != nil {
			tb.Fatalf("the side-by-side tests need %s: %v", p, err)
		}
	}
	// Not t.TempDir's folder under /var/lib (a nodev tmpfs here): the
	// device nodes need a filesystem that allows them.
	n.root = tb.TempDir()
	if err := n.build(); err != nil {
		tb.Fatalf("build the mock driver root: %v", err)
	}
	return n
}

func (n *mockNode) config() string {
	return filepath.Join(n.mock, "configs", "mock-nvml-config-"+n.profile+".yaml")
}

func (n *mockNode) libDir() string {
	arch := "x86_64-linux-gnu"
	if runtime.GOARCH == "arm64" {
		arch = "aarch64-linux-gnu"
	}
	return filepath.Join(n.root, "usr", "lib", arch)
}

func (n *mockNode) devDir() string { return filepath.Join(n.root, "dev") }

// build lays out the driver root as a driver install has it: versioned
// libraries with soname links, and the device nodes.
func (n *mockNode) build() error {
	libs, err := filepath.Glob(filepath.Join(n.mock, "lib", "libnvidia-ml.so.*.*"))
	if err != nil || len(libs) == 0 {
		return fmt.Errorf("no libnvidia-ml.so.<version> in %s/lib", n.mock)
	}
	var real string
	for _, l := range libs {
		if !strings.HasSuffix(l, ".h") {
			real = l
		}
	}
	version := strings.TrimPrefix(filepath.Base(real), "libnvidia-ml.so.")
	if err := os.MkdirAll(n.libDir(), 0o755); err != nil {
		return err
	}
	if err := linkOrCopy(real, filepath.Join(n.libDir(), filepath.Base(real))); err != nil {
		return err
	}
	// NVIDIA's CDI generator and gpulet's both look for libcuda; nothing
	// loads it here.
	cuda := "libcuda.so." + version
	if err := os.WriteFile(filepath.Join(n.libDir(), cuda), nil, 0o644); err != nil {
		return err
	}
	for link, target := range map[string]string{"libnvidia-ml.so.1": filepath.Base(real), "libcuda.so.1": cuda} {
		if err := os.Symlink(target, filepath.Join(n.libDir(), link)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(n.devDir(), 0o755); err != nil {
		return err
	}
	nodes := map[string][2]uint32{"nvidiactl": {195, 255}, "nvidia-modeset": {195, 254}, "nvidia-uvm": {510, 0}, "nvidia-uvm-tools": {510, 1}}
	for i := 0; i < n.gpus; i++ {
		nodes[fmt.Sprintf("nvidia%d", i)] = [2]uint32{195, uint32(i)}
	}
	for name, mm := range nodes {
		dev := int(mm[0]<<8 | mm[1])
		if err := syscall.Mknod(filepath.Join(n.devDir(), name), syscall.S_IFCHR|0o666, dev); err != nil {
			return fmt.Errorf("mknod %s: %w", name, err)
		}
	}
	return nil
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// env is what both plugins are given: the mock's profile and where NVML is.
func (n *mockNode) env() []string {
	return []string{"MOCK_NVML_CONFIG=" + n.config(), "LD_LIBRARY_PATH=" + n.libDir()}
}

// startNVIDIA starts NVIDIA's nvidia-device-plugin on the node with its own
// flags (extra), serving /var/lib/kubelet/device-plugins/nvidia-gpu.sock.
func (n *mockNode) startNVIDIA(tb, owner testing.TB, extra ...string) *gpuletProc {
	tb.Helper()
	args := append([]string{
		"--driver-root=" + n.root,
		// Not in a container: the driver root is where it is on the host.
		"--container-driver-root=" + n.root,
		"--dev-root=" + n.root,
	}, extra...)
	return startProcess(tb, owner, filepath.Join(n.nvidiaBin, "nvidia-device-plugin"), args, n.env())
}

// startGpulet starts `gpulet run --backend nvml` on the node, with extra
// flags after the usual ones.
func (n *mockNode) startGpulet(tb, owner testing.TB, extra ...string) *gpuletProc {
	tb.Helper()
	args := append([]string{"run",
		"--backend=nvml",
		"--nvidia-driver-root=" + n.root,
		"--device-plugin-path=" + pluginapi.DevicePluginPath,
		"--cdi-spec-dir=" + filepath.Join(n.root, "cdi"),
		"--metrics-address=127.0.0.1:0",
	}, extra...)
	return startProcess(tb, owner, gpuletBin, args, n.env())
}

// readCheckpoint reads the kubelet's device-manager checkpoint: the
// registered devices per resource.
func readCheckpoint(tb testing.TB) map[string][]string {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(pluginapi.DevicePluginPath, "kubelet_internal_checkpoint"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	cp := checkpoint.New(nil, nil)
	if err := cp.UnmarshalCheckpoint(data); err != nil {
		tb.Fatalf("kubelet_internal_checkpoint: %v", err)
	}
	_, reg := cp.GetData()
	return reg
}
