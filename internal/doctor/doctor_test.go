package doctor

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
)

func find(t *testing.T, fs []Finding, check string) Finding {
	t.Helper()
	for _, f := range fs {
		if f.Check == check {
			return f
		}
	}
	t.Fatalf("no %q finding in %+v", check, fs)
	return Finding{}
}

func TestNoDriver(t *testing.T) {
	fs := Run(context.Background(), Input{
		Open:      func() (hardware.Backend, error) { return nil, errors.New("libnvidia-ml.so.1 not found") },
		PluginDir: filepath.Join(t.TempDir(), "missing"),
	})
	if f := find(t, fs, "driver"); f.Status != Fail || !strings.Contains(f.Detail, "libnvidia-ml") {
		t.Errorf("driver finding %+v", f)
	}
	if f := find(t, fs, "device-plugin folder"); f.Status != Fail || !strings.Contains(f.Fix, "hostPath") {
		t.Errorf("folder finding %+v", f)
	}
	var buf bytes.Buffer
	if !Print(&buf, fs) || !strings.Contains(buf.String(), "→ mount the kubelet") {
		t.Errorf("table:\n%s", buf.String())
	}
}

// A simulated node with a faulted GPU, served by gpulet to a kubelet.
func TestServingNodeWithAFault(t *testing.T) {
	root := t.TempDir()
	p, _ := sim.LoadProfile("pcie-4x-l4")
	b, err := sim.New(p, root)
	if err != nil {
		t.Fatal(err)
	}
	node, _ := b.Discover(context.Background())
	bad := node.GPUs[1].UUID
	sim.UpdateFaults(root, func(f *sim.Faults) error { f.GPUs[bad] = sim.Fault{XID: 48}; return nil })

	dir, _ := os.MkdirTemp("", "gpulet-doc-")
	defer os.RemoveAll(dir)
	k, err := plugintest.StartKubelet(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	store := inventory.NewStore(node)
	store.SetHealth(bad, inventory.Health{Reason: "XID 48"})
	mgr := &plugin.Manager{Store: store, Opts: &plugin.Options{PluginDir: dir, DeviceListStrategies: []string{"envvar"},
		DeviceIDStrategy: "uuid", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- mgr.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if _, err := k.WaitRegistration(5 * time.Second); err != nil {
		t.Fatal(err)
	}

	fs := Run(context.Background(), Input{Open: func() (hardware.Backend, error) { return b, nil }, PluginDir: dir})
	want := map[string]Status{"driver": OK, "discovery": OK, "device nodes": OK, "GPU 1 health": Fail, "kubelet": OK, "gpulet plugin": Warn}
	for check, st := range want {
		if f := find(t, fs, check); f.Status != st {
			t.Errorf("%s: %s (%s), want %s", check, f.Status, f.Detail, st)
		}
	}
	if f := find(t, fs, "gpulet plugin"); !strings.Contains(f.Detail, "4 devices, 3 healthy") || !strings.Contains(f.Detail, bad) {
		t.Errorf("plugin finding %+v", f)
	}

	// Fault cleared, device node gone: the node check names what is missing.
	sim.UpdateFaults(root, func(f *sim.Faults) error { delete(f.GPUs, bad); return nil })
	os.Remove(filepath.Join(node.DevRoot, "nvidia3"))
	fs = Run(context.Background(), Input{Open: func() (hardware.Backend, error) { return b, nil }, PluginDir: dir})
	if f := find(t, fs, "device nodes"); f.Status != Fail || !strings.Contains(f.Detail, "nvidia3") {
		t.Errorf("device nodes finding %+v", f)
	}
	if f := find(t, fs, "GPU health"); f.Status != OK {
		t.Errorf("health finding %+v", f)
	}
}

func TestStaleSocket(t *testing.T) {
	dir, _ := os.MkdirTemp("", "gpulet-doc-")
	defer os.RemoveAll(dir)
	os.WriteFile(filepath.Join(dir, "kubelet.sock"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, plugin.SocketName("nvidia.com/gpu")), nil, 0o600)
	root := t.TempDir()
	p, _ := sim.LoadProfile("h200")
	b, _ := sim.New(p, root)
	fs := Run(context.Background(), Input{Open: func() (hardware.Backend, error) { return b, nil }, PluginDir: dir})
	if f := find(t, fs, "gpulet plugin"); f.Status != Fail || !strings.Contains(f.Fix, "stale socket") {
		t.Errorf("stale socket finding %+v", f)
	}
}

// peer serves GetDevicePluginOptions on dir/name, as NVIDIA's plugin does.
type peer struct {
	pluginapi.UnimplementedDevicePluginServer
}

func (peer) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func servePeer(t *testing.T, dir, name string) {
	t.Helper()
	lis, err := net.Listen("unix", filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, peer{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
}

// Every socket in the folder is listed with its resource; NVIDIA's plugin
// serving gpulet's resource is a conflict, a left-behind socket is not.
func TestListsPluginSocketsAndFlagsAConflict(t *testing.T) {
	dir, _ := os.MkdirTemp("", "gpulet-doc-")
	defer os.RemoveAll(dir)
	k, err := plugintest.StartKubelet(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	root := t.TempDir()
	p, _ := sim.LoadProfile("h200")
	b, _ := sim.New(p, root)
	run := func() []Finding {
		return Run(context.Background(), Input{Open: func() (hardware.Backend, error) { return b, nil }, PluginDir: dir})
	}
	servePeer(t, dir, "vendor-fpga.sock")
	servePeer(t, dir, "nvidia-mig-1g.10gb.sock")
	fs := run()
	f := find(t, fs, "device-plugin sockets")
	for _, want := range []string{"vendor-fpga.sock (an unknown resource; answers)", "nvidia-mig-1g.10gb.sock (nvidia.com/mig-1g.10gb; answers)"} {
		if !strings.Contains(f.Detail, want) {
			t.Errorf("sockets finding %q lacks %q", f.Detail, want)
		}
	}
	for _, f := range fs {
		if f.Check == "device-plugin conflict" {
			t.Errorf("conflict flagged with no other plugin serving nvidia.com/gpu: %+v", f)
		}
	}
	servePeer(t, dir, "nvidia-gpu.sock")
	f = find(t, run(), "device-plugin conflict")
	if f.Status != Fail || !strings.Contains(f.Detail, "nvidia.com/gpu is served by nvidia-gpu.sock") || !strings.Contains(f.Fix, "take-over") {
		t.Errorf("conflict finding %+v", f)
	}
}
