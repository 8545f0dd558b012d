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
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

func (m *Manager) env(uuid string) []string { return m.daemonEnv(uuid, []string{uuid}) }

// daemonEnv is the environment of the daemon id serving the devices uuids.
func (m *Manager) daemonEnv(id string, uuids []string) []string {
	return []string{
		"CUDA_VISIBLE_DEVICES=" + strings.Join(uuids, ","),
		"CUDA_MPS_PIPE_DIRECTORY=" + m.PipeDir(id),
		"CUDA_MPS_LOG_DIRECTORY=" + m.LogDir(id),
		"PATH=" + os.Getenv("PATH"),
	}
}

func (m *Manager) send(ctx context.Context, uuid, command string) (string, error) {
	return m.sendEnv(ctx, m.env(uuid), command)
}

func (m *Manager) sendEnv(ctx context.Context, env []string, command string) (string, error) {
	t := m.Timeout
	if t == 0 {
		t = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	return m.Control.Send(ctx, env, command)
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
	// The daemon's defaults bind new MPS servers: each client gets its
	// replica's share unless it asks for less.
	pct := g.ThreadPercentage()
	d := Daemon{ID: g.UUID, UUIDs: []string{g.UUID}, ActiveThreadPercentage: &pct}
	if l := g.PinnedMemLimit(); l != "" {
		// Device 0: the daemon sees only this GPU (CUDA_VISIBLE_DEVICES).
		d.PinnedMemLimits = map[string]string{"0": l}
	}
	started, err := m.launch(ctx, d)
	if started || err == nil {
		m.mu.Lock()
		m.daemons[g.UUID] = &daemon{gpu: g, started: started}
		m.mu.Unlock()
	}
	if err != nil {
		return err
	}
	m.Log.Info("MPS defaults set", "gpu", g.UUID, "replicas", g.Replicas,
		"active_thread_percentage", g.ThreadPercentage(), "pinned_mem_limit", g.PinnedMemLimit())
	return nil
}

// launch starts the daemon d unless one answers already in its folders
// (a gpulet restart), then sets its defaults. started says whether this
// call started it, also when setting the defaults failed.
func (m *Manager) launch(ctx context.Context, d Daemon) (started bool, err error) {
	for _, dir := range []string{m.PipeDir(d.ID), m.LogDir(d.ID)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return false, fmt.Errorf("MPS folder for %s: %w; set --mps-root to a writable host folder", d.ID, err)
		}
	}
	env := m.daemonEnv(d.ID, d.UUIDs)
	if _, err := m.sendEnv(ctx, env, "get_default_active_thread_percentage"); err == nil {
		m.Log.Info("MPS control daemon already running; using it", "daemon", d.ID, "pipe", m.PipeDir(d.ID))
	} else {
		if err := m.Control.Start(ctx, env); err != nil {
			return false, fmt.Errorf("start the MPS control daemon for %s: %w (is --mps-control right?)", d.ID, err)
		}
		started = true
		m.Log.Info("MPS control daemon started", "daemon", d.ID, "devices", d.UUIDs, "pipe", m.PipeDir(d.ID), "log", m.LogDir(d.ID))
	}
	var cmds []string
	if p := d.ActiveThreadPercentage; p != nil {
		cmds = append(cmds, fmt.Sprintf("set_default_active_thread_percentage %d", *p))
	}
	for _, dev := range slices.Sorted(maps.Keys(d.PinnedMemLimits)) {
		cmds = append(cmds, fmt.Sprintf("set_default_device_pinned_mem_limit %s %s", dev, d.PinnedMemLimits[dev]))
	}
	for _, c := range cmds {
		if _, err := m.sendEnv(ctx, env, c); err != nil {
			return started, fmt.Errorf("configure the MPS control daemon for %s: %w", d.ID, err)
		}
	}
	return started, nil
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

// Daemon is a control daemon of its own for a set of devices, as NVIDIA's
// DRA driver starts one per claim: named by ID (its folders are
// <Root>/<ID>/{pipe,log}), seeing only UUIDs (CUDA_VISIBLE_DEVICES), with
// the defaults the claim asked for, if any.
type Daemon struct {
	ID    string   `json:"id"`
	UUIDs []string `json:"uuids"`
	// ActiveThreadPercentage, when set, is the daemon's default active
	// thread percentage (set_default_active_thread_percentage).
	ActiveThreadPercentage *int `json:"activeThreadPercentage,omitempty"`
	// PinnedMemLimits are default pinned device memory limits by device
	// (a UUID of UUIDs, or an index among them) in MPS's spelling ("1024M").
	PinnedMemLimits map[string]string `json:"pinnedMemLimits,omitempty"`
}

// ContainerPipeDir is where a container of a claim served by its own
// daemon finds that daemon's pipe folder (NVIDIA's DRA driver's path).
const ContainerPipeDir = "/tmp/nvidia-mps"

// StartDaemon starts d (or finds it answering, after a gpulet restart) and
// sets its defaults. The daemon runs until StopDaemon: it serves a claim,
// not this process, so gpulet's Stop leaves it.
func (m *Manager) StartDaemon(ctx context.Context, d Daemon) error {
	if err := os.MkdirAll(m.ShmDir(), 0o755); err != nil {
		return fmt.Errorf("MPS shm folder: %w; set --mps-root to a writable host folder", err)
	}
	_, err := m.launch(ctx, d)
	return err
}

// StopDaemon quits the daemon id (serving uuids) and removes its folders.
// A daemon that does not answer is taken as gone: stopping is idempotent,
// so an interrupted Unprepare can be repeated.
func (m *Manager) StopDaemon(ctx context.Context, id string, uuids []string) error {
	env := m.daemonEnv(id, uuids)
	if _, err := m.sendEnv(ctx, env, "get_default_active_thread_percentage"); err == nil {
		if _, err := m.sendEnv(ctx, env, "quit"); err != nil {
			return fmt.Errorf("quit the MPS control daemon %s: %w", id, err)
		}
		m.Log.Info("MPS control daemon stopped", "daemon", id)
	}
	if err := os.RemoveAll(filepath.Join(m.Root, id)); err != nil {
		return fmt.Errorf("remove the folders of MPS control daemon %s: %w", id, err)
	}
	return nil
}

// DaemonAccess is what a container served by the daemon id needs: its
// pipe folder at ContainerPipeDir with CUDA_MPS_PIPE_DIRECTORY naming it,
// and the shm folder as /dev/shm (what NVIDIA's DRA driver injects).
func (m *Manager) DaemonAccess(id string) Access {
	return Access{
		Env: map[string]string{"CUDA_MPS_PIPE_DIRECTORY": ContainerPipeDir},
		Mounts: []Mount{
			{Host: m.ShmDir(), Container: "/dev/shm"},
			{Host: m.PipeDir(id), Container: ContainerPipeDir},
		},
	}
}
