package sim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/gpulet/gpulet/internal/hardware"
)

// MPSControl stands in for nvidia-cuda-mps-control on a simulated node:
// Start "runs" a daemon by creating its control file in the pipe folder,
// Send answers while that file exists, and every call is appended to
// MPSLog so tests and people can see what gpulet asked of MPS. State lives
// in files, so it behaves across gpulet restarts like the real daemon.
type MPSControl struct {
	Root string // the simulator's root
	mu   sync.Mutex
}

// MPSLogPath is the command log of the simulated MPS control daemons.
func MPSLogPath(root string) string { return filepath.Join(root, "mps-control.log") }

func envValue(env []string, key string) string {
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, key+"="); ok {
			return v
		}
	}
	return ""
}

func (c *MPSControl) record(env []string, line string) error {
	f, err := os.OpenFile(MPSLogPath(c.Root), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s %s\n", envValue(env, "CUDA_VISIBLE_DEVICES"), line)
	return errors.Join(err, f.Close())
}

func control(env []string) (string, error) {
	pipe := envValue(env, "CUDA_MPS_PIPE_DIRECTORY")
	if pipe == "" {
		return "", errors.New("CUDA_MPS_PIPE_DIRECTORY is not set")
	}
	return filepath.Join(pipe, "control"), nil
}

// Start creates the daemon's control file (the real one is a FIFO).
func (c *MPSControl) Start(_ context.Context, env []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := control(env)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, []byte("100"), 0o644); err != nil {
		return err
	}
	return c.record(env, "-d")
}

// Send answers a command, failing as the real client does when no daemon
// listens.
func (c *MPSControl) Send(_ context.Context, env []string, command string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := control(env)
	if err != nil {
		return "", err
	}
	state, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("cannot find MPS control daemon process (simulated): %w", err)
	}
	if err := c.record(env, command); err != nil {
		return "", err
	}
	f := strings.Fields(command)
	switch {
	case len(f) == 1 && f[0] == "quit":
		return "", os.Remove(p)
	case len(f) == 2 && f[0] == "set_default_active_thread_percentage":
		return f[1], os.WriteFile(p, []byte(f[1]), 0o644)
	case len(f) == 1 && f[0] == "get_default_active_thread_percentage":
		return string(state), nil
	}
	return "", nil
}

// MPSControl is the simulator's stand-in for nvidia-cuda-mps-control,
// logging to MPSLogPath(b.Root()).
func (b *Backend) MPSControl() hardware.MPSControl { return &MPSControl{Root: b.root} }
