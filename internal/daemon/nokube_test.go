//go:build nokube

package daemon

import (
	"errors"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
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
			cfg := simConfig(t, dpDir)
			cfg.Labels = config.LabelConfig{NodeLabels: tc.nodeLabels, NodeName: "n1", NoTimestamp: true}
			cfg.DRA = config.DRAConfig{Enabled: tc.dra, Devices: "all", PluginDir: t.TempDir(), RegistrarDir: t.TempDir()}
			run := startRun(cfg)
			if tc.wantErr {
				select {
				case err := <-run.done:
					if !errors.Is(err, errNoKube) {
						t.Errorf("Run: %v, want the no-Kubernetes-API error", err)
					}
				case <-time.After(30 * time.Second):
					run.stop()
					t.Fatal("Run did not refuse within 30s")
				}
				return
			}
			if _, err := kubelet.WaitRegistration(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			if err := run.stop(); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}
