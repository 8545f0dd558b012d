// Package mps runs CUDA MPS control daemons for GPUs shared through MPS:
// one `nvidia-cuda-mps-control -d` per GPU, its pipe and log folders under
// a root on the host, its default active-thread percentage and pinned
// memory limit set from the number of replicas, and what a container needs
// to reach it (Access). The daemon is reached through Control, so the
// simulator can stand in for the real binary.
package mps

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// DefaultControl is the control binary gpulet runs unless told otherwise.
const DefaultControl = "nvidia-cuda-mps-control"

// ContainerRoot is where a container finds the pipe folders (NVIDIA's /mps).
const ContainerRoot = "/mps"

// Control starts and talks to MPS control daemons.
type Control interface {
	// Start starts a control daemon in the background (`-d`) with env,
	// returning once it is started.
	Start(ctx context.Context, env []string) error
	// Send writes one command to the daemon env's CUDA_MPS_PIPE_DIRECTORY
	// leads to, and returns its answer.
	Send(ctx context.Context, env []string, command string) (string, error)
}

// Exec is the real Control: it runs the control binary.
type Exec struct {
	Path string // default DefaultControl, looked up in $PATH
}

func (e Exec) path() string {
	if e.Path == "" {
		return DefaultControl
	}
	return e.Path
}

// Start runs `<control> -d`, which forks the daemon and exits.
func (e Exec) Start(ctx context.Context, env []string) error {
	cmd := exec.CommandContext(ctx, e.path(), "-d")
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s -d: %w: %s", e.path(), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Send pipes command into `<control>`, the control daemon's client mode.
func (e Exec) Send(ctx context.Context, env []string, command string) (string, error) {
	cmd := exec.CommandContext(ctx, e.path())
	cmd.Env = env
	cmd.Stdin = strings.NewReader(command + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s <<< %q: %w: %s", e.path(), command, err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// GPU is a GPU to share through MPS.
type GPU struct {
	UUID        string
	MemoryBytes uint64
	Replicas    int
}

// ThreadPercentage is each replica's share of the GPU's SMs.
func (g GPU) ThreadPercentage() int { return 100 / max(g.Replicas, 1) }

// PinnedMemLimit is each replica's share of device memory, as MPS spells
// a limit ("<MiB>M"); "" when the memory is unknown.
func (g GPU) PinnedMemLimit() string {
	if g.MemoryBytes == 0 {
		return ""
	}
	return fmt.Sprintf("%dM", g.MemoryBytes/uint64(max(g.Replicas, 1))/(1<<20))
}

// Mount is a host folder bind-mounted into a container.
type Mount struct {
	Host, Container string
}

// Access is what a container needs to use its GPU's MPS daemon.
type Access struct {
	Env    map[string]string
	Mounts []Mount
}

// Manager owns the control daemons of one gpulet.
type Manager struct {
	Root    string // host folder: <Root>/<uuid>/{pipe,log}, <Root>/shm
	Control Control
	Log     *slog.Logger
	// Timeout bounds each command to a daemon (default 10s).
	Timeout time.Duration

	mu      sync.Mutex
	daemons map[string]*daemon
}

type daemon struct {
	gpu     GPU
	started bool // by this gpulet (so it quits it), not found running
}

// PipeDir is the host pipe folder of a GPU's daemon.
func (m *Manager) PipeDir(uuid string) string { return filepath.Join(m.Root, uuid, "pipe") }

// LogDir is the host log folder of a GPU's daemon (control.log is there).
func (m *Manager) LogDir(uuid string) string { return filepath.Join(m.Root, uuid, "log") }

// ShmDir is the host folder containers get as /dev/shm; MPS clients and the
// server meet there, so gpulet's own /dev/shm must be this folder.
func (m *Manager) ShmDir() string { return filepath.Join(m.Root, "shm") }

func (m *Manager) env(uuid string) []string {
	return []string{
		"CUDA_VISIBLE_DEVICES=" + uuid,
		"CUDA_MPS_PIPE_DIRECTORY=" + m.PipeDir(uuid),
		"CUDA_MPS_LOG_DIRECTORY=" + m.LogDir(uuid),
		"PATH=" + os.Getenv("PATH"),
	}
}

func (m *Manager) send(ctx context.Context, uuid, command string) (string, error) {
	t := m.Timeout
	if t == 0 {
		t = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	return m.Control.Send(ctx, m.env(uuid), command)
}

// Start connects to or starts a daemon per GPU and sets its defaults. On
// error the daemons it started are stopped again.
func (m *Manager) Start(ctx context.Context, gpus []GPU) error {
	m.mu.Lock()
	if m.daemons == nil {
		m.daemons = map[string]*daemon{}
	}
	m.mu.Unlock()
	if err := os.MkdirAll(m.ShmDir(), 0o755); err != nil {
		return fmt.Errorf("MPS shm folder: %w; set --mps-root to a writable host folder", err)
	}
	for _, g := range gpus {
		if err := m.start(ctx, g); err != nil {
			return errors.Join(err, m.Stop(context.WithoutCancel(ctx)))
		}
	}
	return nil
}

func (m *Manager) start(ctx context.Context, g GPU) error {
	for _, dir := range []string{m.PipeDir(g.UUID), m.LogDir(g.UUID)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("MPS folder for %s: %w; set --mps-root to a writable host folder", g.UUID, err)
		}
	}
	d := &daemon{gpu: g}
	if _, err := m.send(ctx, g.UUID, "get_default_active_thread_percentage"); err == nil {
		m.Log.Info("MPS control daemon already running; using it", "gpu", g.UUID, "pipe", m.PipeDir(g.UUID))
	} else {
		if err := m.Control.Start(ctx, m.env(g.UUID)); err != nil {
			return fmt.Errorf("start the MPS control daemon for %s: %w (is --mps-control right?)", g.UUID, err)
		}
		d.started = true
		m.Log.Info("MPS control daemon started", "gpu", g.UUID, "pipe", m.PipeDir(g.UUID), "log", m.LogDir(g.UUID))
	}
	m.mu.Lock()
	m.daemons[g.UUID] = d
	m.mu.Unlock()
	// The daemon's defaults bind new MPS servers: each client gets its
	// replica's share unless it asks for less.
	cmds := []string{fmt.Sprintf("set_default_active_thread_percentage %d", g.ThreadPercentage())}
	if l := g.PinnedMemLimit(); l != "" {
		// Device 0: the daemon sees only this GPU (CUDA_VISIBLE_DEVICES).
		cmds = append(cmds, "set_default_device_pinned_mem_limit 0 "+l)
	}
	for _, c := range cmds {
		if _, err := m.send(ctx, g.UUID, c); err != nil {
			return fmt.Errorf("configure the MPS control daemon for %s: %w", g.UUID, err)
		}
	}
	m.Log.Info("MPS defaults set", "gpu", g.UUID, "replicas", g.Replicas,
		"active_thread_percentage", g.ThreadPercentage(), "pinned_mem_limit", g.PinnedMemLimit())
	return nil
}

// Check reports whether a GPU's daemon answers.
func (m *Manager) Check(ctx context.Context, uuid string) error {
	if _, err := m.send(ctx, uuid, "get_default_active_thread_percentage"); err != nil {
		return fmt.Errorf("MPS control daemon for %s does not answer: %w", uuid, err)
	}
	return nil
}

// Access is what a container sharing uuid needs. It checks the daemon
// first and restarts one that died, so a container is never handed a dead
// pipe.
func (m *Manager) Access(ctx context.Context, uuid string) (Access, error) {
	m.mu.Lock()
	d, ok := m.daemons[uuid]
	m.mu.Unlock()
	if !ok {
		return Access{}, fmt.Errorf("GPU %s is not shared through MPS", uuid)
	}
	if err := m.Check(ctx, uuid); err != nil {
		m.Log.Warn("MPS control daemon not answering; restarting it", "gpu", uuid, "err", err)
		if err := m.start(ctx, d.gpu); err != nil {
			return Access{}, fmt.Errorf("MPS control daemon for %s is down and did not restart: %w; see %s", uuid, err, m.LogDir(uuid))
		}
	}
	g := d.gpu
	pipe := filepath.Join(ContainerRoot, uuid, "pipe")
	a := Access{
		Env: map[string]string{
			"CUDA_MPS_PIPE_DIRECTORY":           pipe,
			"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": fmt.Sprint(g.ThreadPercentage()),
		},
		Mounts: []Mount{
			{Host: m.PipeDir(uuid), Container: pipe},
			{Host: m.ShmDir(), Container: "/dev/shm"},
		},
	}
	if l := g.PinnedMemLimit(); l != "" {
		// The container sees its one GPU as device 0.
		a.Env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = "0=" + l
	}
	return a, nil
}

// Stop quits the daemons this gpulet started; ones it found running are
// left to whoever started them.
func (m *Manager) Stop(ctx context.Context) error {
	m.mu.Lock()
	ds := m.daemons
	m.daemons = map[string]*daemon{}
	m.mu.Unlock()
	var errs []error
	for uuid, d := range ds {
		if !d.started {
			continue
		}
		if _, err := m.send(ctx, uuid, "quit"); err != nil {
			errs = append(errs, fmt.Errorf("quit the MPS control daemon for %s: %w", uuid, err))
			continue
		}
		m.Log.Info("MPS control daemon stopped", "gpu", uuid)
	}
	return errors.Join(errs...)
}
