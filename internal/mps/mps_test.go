package mps_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/mps"
)

// TestManagerLifecycle runs the whole path against the simulator's
// stand-in daemon: start with limits, access, restart of a dead daemon,
// connect to a running one, and quit only what it started.
func TestManagerLifecycle(t *testing.T) {
	simRoot, root := t.TempDir(), t.TempDir()
	ctl := &sim.MPSControl{Root: simRoot}
	m := &mps.Manager{Root: root, Control: ctl, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx := context.Background()
	gpus := []mps.GPU{{UUID: "GPU-a", MemoryBytes: 80 << 30, Replicas: 4}, {UUID: "GPU-b", Replicas: 3}}
	if err := m.Start(ctx, gpus); err != nil {
		t.Fatal(err)
	}
	log := func() string { b, _ := os.ReadFile(sim.MPSLogPath(simRoot)); return string(b) }
	for _, want := range []string{
		"GPU-a -d", "GPU-a set_default_active_thread_percentage 25", "GPU-a set_default_device_pinned_mem_limit 0 20480M",
		"GPU-b -d", "GPU-b set_default_active_thread_percentage 33",
	} {
		if !strings.Contains(log(), want+"\n") {
			t.Errorf("daemon never got %q:\n%s", want, log())
		}
	}
	if strings.Contains(log(), "GPU-b set_default_device_pinned_mem_limit") {
		t.Error("a limit was set for a GPU of unknown memory")
	}

	a, err := m.Access(ctx, "GPU-a")
	if err != nil {
		t.Fatal(err)
	}
	if a.Env["CUDA_MPS_PIPE_DIRECTORY"] != "/mps/GPU-a/pipe" || a.Env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] != "25" ||
		a.Env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] != "0=20480M" {
		t.Errorf("env %v", a.Env)
	}
	wantMounts := []mps.Mount{{Host: filepath.Join(root, "GPU-a", "pipe"), Container: "/mps/GPU-a/pipe"}, {Host: filepath.Join(root, "shm"), Container: "/dev/shm"}}
	if len(a.Mounts) != 2 || a.Mounts[0] != wantMounts[0] || a.Mounts[1] != wantMounts[1] {
		t.Errorf("mounts %v, want %v", a.Mounts, wantMounts)
	}
	if _, err := m.Access(ctx, "GPU-z"); err == nil {
		t.Error("access to a GPU not shared through MPS")
	}

	// The daemon dies: Access restarts it rather than hand out a dead pipe.
	os.Remove(filepath.Join(root, "GPU-a", "pipe", "control"))
	if _, err := m.Access(ctx, "GPU-a"); err != nil {
		t.Fatalf("no restart: %v", err)
	}
	if strings.Count(log(), "GPU-a -d\n") != 2 {
		t.Errorf("daemon not restarted:\n%s", log())
	}

	// A second gpulet finds the daemons running, uses them, and on Stop
	// leaves them to the one that started them.
	m2 := &mps.Manager{Root: root, Control: ctl, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := m2.Start(ctx, gpus); err != nil {
		t.Fatal(err)
	}
	if strings.Count(log(), "GPU-b -d\n") != 1 {
		t.Errorf("a running daemon was started again:\n%s", log())
	}
	if err := m2.Stop(ctx); err != nil || strings.Contains(log(), "quit") {
		t.Errorf("stop of found daemons: %v\n%s", err, log())
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if strings.Count(log(), "quit\n") != 2 {
		t.Errorf("want one quit per started daemon:\n%s", log())
	}
	if err := m.Check(ctx, "GPU-a"); err == nil {
		t.Error("daemon answers after quit")
	}
}

func TestStartFailsClearly(t *testing.T) {
	m := &mps.Manager{Root: t.TempDir(), Control: mps.Exec{Path: filepath.Join(t.TempDir(), "no-such-control")},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	err := m.Start(context.Background(), []mps.GPU{{UUID: "GPU-a", Replicas: 2}})
	if err == nil || !strings.Contains(err.Error(), "--mps-control") {
		t.Errorf("error %v does not point at --mps-control", err)
	}
}

// TestExecTalksToTheBinary: the real Control runs the binary with -d and
// pipes commands to its stdin, with the daemon's environment.
func TestExecTalksToTheBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "fake-control")
	script := "#!/bin/sh\nif [ \"$1\" = -d ]; then echo \"start $CUDA_VISIBLE_DEVICES\" >> " + dir + "/log; exit 0; fi\n" +
		"read cmd; echo \"$CUDA_MPS_PIPE_DIRECTORY $cmd\" >> " + dir + "/log; echo 42\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	e := mps.Exec{Path: bin}
	ctx := context.Background()
	env := []string{"CUDA_VISIBLE_DEVICES=GPU-a", "CUDA_MPS_PIPE_DIRECTORY=/p"}
	if err := e.Start(ctx, env); err != nil {
		t.Fatal(err)
	}
	out, err := e.Send(ctx, env, "get_default_active_thread_percentage")
	if err != nil || out != "42" {
		t.Fatalf("%q %v", out, err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "log"))
	if string(b) != "start GPU-a\n/p get_default_active_thread_percentage\n" {
		t.Errorf("binary saw %q", b)
	}
}
