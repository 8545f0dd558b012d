//go:build nokube

package daemon

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware/backends"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
	"github.com/gpulet/gpulet/internal/version"
)

// TestNoKubeBuild: gpulet built without the Kubernetes API (make
// build-lean) refuses --dra and --node-labels=on with what to do, and with
// labels on auto in a pod it serves the device plugin and labels nothing.
func TestNoKubeBuild(t *testing.T) {
	for _, tc := range []struct {
		name       string
		nodeLabels string
		dra        bool
		wantErr    bool
	}{
		{"dra", "off", true, true},
		{"labels on", "on", false, true},
		{"labels auto", "auto", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dpDir := t.TempDir()
			kubelet, err := plugintest.StartKubelet(dpDir)
			if err != nil {
				t.Fatal(err)
			}
			defer kubelet.Stop()
			cfg := &config.Config{
				Backend: "sim", SimProfile: "pcie-4x-l4", SimRoot: t.TempDir(), DevicePluginPath: dpDir,
				DeviceListStrategy: []string{"envvar"}, DeviceIDStrategy: "uuid", ResourceName: "nvidia.com/gpu",
				MIGStrategy: "none", HealthQuietPeriod: time.Hour,
				Labels: config.LabelConfig{NodeLabels: tc.nodeLabels, NodeName: "n1", NoTimestamp: true},
				DRA:    config.DRAConfig{Enabled: tc.dra, Devices: "all", PluginDir: t.TempDir(), RegistrarDir: t.TempDir()},
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			log := slog.New(slog.DiscardHandler)
			go func() { done <- RunWithVersion(ctx, cfg, backends.Opener(cfg, log), log, version.Info{Version: "test"}) }()
			if tc.wantErr {
				select {
				case err := <-done:
					if !errors.Is(err, errNoKube) {
						t.Errorf("Run: %v, want the no-Kubernetes-API error", err)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("Run did not refuse within 30s")
				}
				return
			}
			if _, err := kubelet.WaitRegistration(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}
