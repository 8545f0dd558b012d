package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/backends"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/mps"
)

// TestStartMPSOnSimulatedNode: an mps config starts one (simulated) daemon
// per shared GPU, hands Allocate the manager, and quits them at the end;
// a devices count over the node's GPUs stops start-up.
func TestStartMPSOnSimulatedNode(t *testing.T) {
	simRoot := t.TempDir()
	cfg := &config.Config{Backend: "sim", SimProfile: "pcie-4x-l4", SimRoot: simRoot, MPSRoot: t.TempDir(),
		ResourceName: "nvidia.com/gpu", MIGStrategy: "none",
		Sharing: config.Sharing{Strategy: config.SharingMPS, Resources: []config.SharedResource{
			{Name: "nvidia.com/gpu", Replicas: 4, Devices: config.SharedDevices{Count: 2}}}}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	backend, err := backends.Open(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	node, err := backend.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	snap := inventory.NewStore(node).Snapshot()
	m, err := startMPS(context.Background(), cfg, backend, snap, log)
	if err != nil {
		t.Fatal(err)
	}
	if m == nil {
		t.Fatal("Allocate got no MPS manager")
	}
	a, err := m.Access(context.Background(), node.GPUs[1].UUID)
	if err != nil || a.Env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] != "25" {
		t.Errorf("access %+v %v", a, err)
	}
	if _, err := m.Access(context.Background(), node.GPUs[2].UUID); err == nil {
		t.Error("a GPU outside devices: 2 got MPS")
	}
	if err := m.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(sim.MPSLogPath(simRoot))
	if strings.Count(string(b), " -d\n") != 2 || strings.Count(string(b), " quit\n") != 2 {
		t.Errorf("daemon log:\n%s", b)
	}

	cfg.Sharing.Resources[0].Devices.Count = 9
	if err := checkShares(cfg, snap, log); err == nil ||
		!strings.Contains(err.Error(), "more devices than") {
		t.Errorf("count over the node: %v", err)
	}
}

// onlyBackend hides the simulator's fault injector: startMPS takes it for a
// real node and the real control binary.
type onlyBackend struct{ hardware.Backend }

// TestStartMPSRefusesWithoutTheHostSetup: on a real node, MPS sharing in a
// container without the control binary (or the host's MPS folders) is
// refused before any daemon starts, with a *mps.HostError (`gpulet run`
// then waits with the reason instead of crash-looping).
func TestStartMPSRefusesWithoutTheHostSetup(t *testing.T) {
	cfg := &config.Config{Backend: "sim", SimProfile: "pcie-4x-l4", SimRoot: t.TempDir(), MPSRoot: t.TempDir(),
		MPSControl: "gpulet-test-no-such-mps-control", ResourceName: "nvidia.com/gpu", MIGStrategy: "none",
		Sharing: config.Sharing{Strategy: config.SharingMPS, Resources: []config.SharedResource{
			{Name: "nvidia.com/gpu", Replicas: 4}}}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	backend, err := backends.Open(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	node, err := backend.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m, err := startMPS(context.Background(), cfg, onlyBackend{backend}, inventory.NewStore(node).Snapshot(), log)
	var he *mps.HostError
	if m != nil || !errors.As(err, &he) || !strings.Contains(err.Error(), "gpulet-test-no-such-mps-control") {
		t.Fatalf("manager %v, err %v; want a HostError naming the missing binary", m, err)
	}
	if entries, _ := os.ReadDir(cfg.MPSRoot); len(entries) != 0 {
		t.Errorf("a refused start wrote %d entries into the MPS root", len(entries))
	}
}
