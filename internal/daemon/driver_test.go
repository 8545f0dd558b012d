package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware/backends"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
	"github.com/gpulet/gpulet/internal/version"
	"github.com/gpulet/gpulet/internal/waittest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(addr, path string) (int, string) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestDriverDownAndUp: gpulet starts while the simulated driver is down
// (fail-on-init-error=false), serves /healthz, is not ready, finds the GPUs
// when the driver comes up, loses them all (unhealthy, not ready) when it
// goes down at run time, and recovers when it is back.
func TestDriverDownAndUp(t *testing.T) {
	driverRetryFirst, driverRetryMax = 20*time.Millisecond, 100*time.Millisecond
	root, dpDir := t.TempDir(), t.TempDir()
	kubelet, err := plugintest.StartKubelet(dpDir)
	if err != nil {
		t.Fatal(err)
	}
	defer kubelet.Stop()
	setDriver := func(down bool) {
		t.Helper()
		if err := sim.UpdateFaults(root, func(f *sim.Faults) error { f.DriverDown = down; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	setDriver(true)
	addr := freeAddr(t)
	cfg := &config.Config{
		Backend: "sim", SimProfile: "pcie-4x-l4", SimRoot: root, DevicePluginPath: dpDir,
		DeviceListStrategy: []string{"envvar"}, DeviceIDStrategy: "uuid", ResourceName: "nvidia.com/gpu",
		MIGStrategy: "none", HealthQuietPeriod: time.Hour, MetricsAddress: addr,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunWithVersion(ctx, cfg, backends.Opener(cfg, slog.New(slog.DiscardHandler)), slog.New(slog.DiscardHandler), version.Info{Version: "test"})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	waittest.UntilSays(t, 15*time.Second, "healthz while waiting", func() (bool, string) { c, b := get(addr, "/healthz"); return c == 200, b })
	// No driver since start: idle, serving nothing, and ready so that a
	// node without GPUs does not hold up a DaemonSet rollout.
	waittest.UntilSays(t, 15*time.Second, "ready while idle without a driver", func() (bool, string) { c, b := get(addr, "/readyz"); return c == 200, b })
	if _, err := kubelet.WaitRegistration(100 * time.Millisecond); err == nil {
		t.Fatal("gpulet registered a resource with the kubelet before any driver answered")
	}
	setDriver(false)
	waittest.UntilSays(t, 15*time.Second, "ready once the driver is up", func() (bool, string) { c, b := get(addr, "/readyz"); return c == 200, b })
	scrape := func() string { _, b := get(addr, "/metrics"); return b }
	waittest.UntilSays(t, 15*time.Second, "4 healthy GPUs", func() (bool, string) {
		s := scrape()
		return strings.Count(s, "gpulet_device_healthy{") == 4 && !strings.Contains(s, "} 0\ngpulet_device_healthy") && strings.Contains(s, "gpulet_driver_up 1"), s
	})

	setDriver(true)
	waittest.UntilSays(t, 15*time.Second, "not ready after the driver went", func() (bool, string) { c, b := get(addr, "/readyz"); return c == 503, b })
	waittest.UntilSays(t, 15*time.Second, "every GPU unhealthy", func() (bool, string) {
		s := scrape()
		return strings.Count(s, `reason="GPU driver not available"`) == 4 && strings.Contains(s, "gpulet_driver_up 0"), s
	})
	setDriver(false)
	waittest.UntilSays(t, 15*time.Second, "ready again", func() (bool, string) { c, b := get(addr, "/readyz"); return c == 200, b })
	waittest.UntilSays(t, 15*time.Second, "healthy again", func() (bool, string) {
		s := scrape()
		return !strings.Contains(s, "gpulet_device_unhealthy_info{") && strings.Contains(s, "gpulet_driver_up 1"), s
	})
}
