package daemon

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware/backends"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
	"github.com/gpulet/gpulet/internal/version"
	"github.com/gpulet/gpulet/internal/waittest"
)

// TestRunLeavesNoGoroutine starts gpulet on the simulator with every
// component that needs no Kubernetes API (metrics server and sampler,
// health monitor, CDI writer, MPS, device plugin), waits until it serves
// the kubelet, cancels it, and checks that Run returned nil, that the
// simulated MPS daemons were quit (MPS stopped after the servers) and that
// no goroutine of gpulet's is left.
func TestRunLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	root, dpDir := t.TempDir(), t.TempDir()
	kubelet, err := plugintest.StartKubelet(dpDir)
	if err != nil {
		t.Fatal(err)
	}
	defer kubelet.Stop()
	addr := freeAddr(t)
	cfg := &config.Config{
		Backend: "sim", SimProfile: "pcie-4x-l4", SimRoot: root, DevicePluginPath: dpDir,
		DeviceListStrategy: []string{"envvar", "cdi-annotations"}, DeviceIDStrategy: "uuid", ResourceName: "nvidia.com/gpu",
		MIGStrategy: "none", HealthQuietPeriod: time.Hour, MetricsAddress: addr,
		CDISpecDir: t.TempDir(), MPSRoot: t.TempDir(),
		Sharing: config.Sharing{Strategy: config.SharingMPS, Resources: []config.SharedResource{
			{Name: "nvidia.com/gpu", Replicas: 2, Devices: config.SharedDevices{Count: 2}}}},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunWithVersion(ctx, cfg, backends.Opener(cfg, slog.New(slog.DiscardHandler)), slog.New(slog.DiscardHandler), version.Info{Version: "test"})
	}()

	if _, err := kubelet.WaitRegistration(15 * time.Second); err != nil {
		cancel()
		<-done
		t.Fatal(err)
	}
	waittest.UntilSays(t, 15*time.Second, "ready", func() (bool, string) { c, b := get(addr, "/readyz"); return c == 200, b })
	http.DefaultClient.CloseIdleConnections()
	if specs, _ := filepath.Glob(filepath.Join(cfg.CDISpecDir, "*")); len(specs) == 0 {
		t.Error("no CDI spec written")
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of its context ending")
	}
	b, _ := os.ReadFile(sim.MPSLogPath(root))
	if strings.Count(string(b), " -d\n") != 2 || strings.Count(string(b), " quit\n") != 2 {
		t.Errorf("MPS daemons not started and quit, one per shared GPU:\n%s", b)
	}
	if _, err := os.Stat(filepath.Join(dpDir, "nvidia-gpu.sock")); err == nil {
		t.Error("the device plugin's socket is left behind")
	}
}
