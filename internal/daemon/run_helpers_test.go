package daemon

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware/backends"
	"github.com/gpulet/gpulet/internal/version"
)

// simConfig is `gpulet run` on a simulated pcie-4x-l4 node (4 GPUs) whose
// device plugin registers in dpDir, envvar/uuid, health re-probes off for
// the test's length; callers add what they test.
func simConfig(t *testing.T, dpDir string) *config.Config {
	return &config.Config{
		Backend: "sim", SimProfile: "pcie-4x-l4", SimRoot: t.TempDir(), DevicePluginPath: dpDir,
		DeviceListStrategy: []string{"envvar"}, DeviceIDStrategy: "uuid", ResourceName: "nvidia.com/gpu",
		MIGStrategy: "none", HealthQuietPeriod: time.Hour,
	}
}

// testRun is one RunWithVersion in the background.
type testRun struct {
	cancel context.CancelFunc
	done   chan error // what Run returned
}

// startRun runs gpulet with cfg on the backend it names until stop.
func startRun(cfg *config.Config) *testRun {
	ctx, cancel := context.WithCancel(context.Background())
	r := &testRun{cancel: cancel, done: make(chan error, 1)}
	log := slog.New(slog.DiscardHandler)
	go func() {
		r.done <- RunWithVersion(ctx, cfg, backends.Opener(cfg, log), log, version.Info{Version: "test"})
	}()
	return r
}

// stop cancels the run and returns what Run returned.
func (r *testRun) stop() error {
	r.cancel()
	return <-r.done
}
