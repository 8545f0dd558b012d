//go:build !nokube

package daemon

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware/backends"
	"github.com/gpulet/gpulet/internal/hardware/sim"
)

// TestDRASharing: on the simulator, DRA claims' sharing uses its compute
// policy and MPS stand-in, with the daemons' folders in the DRA plugin
// folder; on a real node without the MPS binary an MPS Prepare is refused
// with what is missing, and the compute policy is the backend's.
func TestDRASharing(t *testing.T) {
	cfg := &config.Config{Backend: "sim", SimProfile: "pcie-4x-l4", SimRoot: t.TempDir(),
		MPSControl: "gpulet-test-no-such-mps-control"}
	cfg.DRA.PluginDir = t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	backend, err := backends.Open(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	s := DRASharing(cfg, backend, log)
	if s.Policy == nil || s.MPS == nil || s.MPSReady != nil || s.MPS.Root != cfg.DRA.PluginDir+"/mps" {
		t.Fatalf("simulator: %+v", s)
	}
	if _, ok := s.MPS.Control.(*sim.MPSControl); !ok {
		t.Fatalf("MPS control %T, want the simulator's", s.MPS.Control)
	}
	real := DRASharing(cfg, onlyBackend{backend}, log)
	if real.Policy != nil || real.MPSReady == nil {
		t.Fatalf("real node: %+v", real)
	}
	if err := real.MPSReady(); err == nil || !strings.Contains(err.Error(), "gpulet-test-no-such-mps-control") ||
		!strings.Contains(err.Error(), "MPS control daemons for claims") {
		t.Fatalf("MPSReady: %v", err)
	}
}
