package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/cudadriver"
	"github.com/gpulet/gpulet/internal/daemon"
	"github.com/gpulet/gpulet/internal/hardware/backends"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/validate"
	"github.com/gpulet/gpulet/internal/waittest"
)

// syncBuffer is a bytes.Buffer several goroutines write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// shortDir is a temporary folder with a path short enough for unix sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ks-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// startGpulet runs `gpulet run --backend=sim --sim-profile=profile` in
// process against dir; cancel stops it and returns its error.
func startGpulet(t *testing.T, profile, dir string) (cancel func() error) {
	t.Helper()
	cfg := &config.Config{
		Backend: "sim", SimProfile: profile, SimRoot: shortDir(t), DevicePluginPath: dir,
		DeviceListStrategy: []string{"envvar"}, DeviceIDStrategy: "uuid", FailOnInitError: true,
		MIGStrategy: "none", ResourceName: "nvidia.com/gpu", HealthQuietPeriod: time.Second,
		LogFormat: "text", LogLevel: "info",
	}
	if err := daemon.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, cfg, backends.Opener(cfg, slog.New(slog.DiscardHandler)), slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	var once sync.Once
	var err error
	cancel = func() error {
		once.Do(func() {
			stop()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Error("gpulet did not stop within 10s")
			}
		})
		return err
	}
	t.Cleanup(func() { cancel() })
	return cancel
}

func simUUIDs(t *testing.T, profile string) []string {
	t.Helper()
	p, err := sim.LoadProfile(profile)
	if err != nil {
		t.Fatal(err)
	}
	n, err := p.Node()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, g := range n.GPUs {
		ids = append(ids, g.UUID)
	}
	return ids
}

func TestAllocateAgainstGpulet(t *testing.T) {
	tests := []struct {
		profile string
		count   int
		code    int
		stderr  string
	}{
		{profile: "h200", count: 1},
		{profile: "dgx-h100", count: 2},
		{profile: "pcie-4x-l4", count: 4},
		{profile: "pcie-4x-l4", count: 5, code: 1, stderr: "the plugin lists 4 healthy of 4 nvidia.com/gpu devices; 5 wanted"},
	}
	for _, tt := range tests {
		t.Run(tt.profile+"/"+strconv.Itoa(tt.count), func(t *testing.T) {
			dir := shortDir(t)
			startGpulet(t, tt.profile, dir)
			out := t.TempDir()
			envOut, jsonOut := filepath.Join(out, "alloc.env"), filepath.Join(out, "alloc.json")
			var stdout, stderr syncBuffer
			code := run(context.Background(), []string{"allocate", "--dir", dir, "--count", strconv.Itoa(tt.count),
				"--timeout", "20s", "--env-out", envOut, "--json-out", jsonOut}, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("exit %d, want %d; stderr:\n%s\nwant it to contain %q", code, tt.code, stderr.String(), tt.stderr)
			}
			if tt.code != 0 {
				return
			}
			var a allocation
			b, err := os.ReadFile(jsonOut)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &a); err != nil {
				t.Fatal(err)
			}
			all := simUUIDs(t, tt.profile)
			if a.Resource != "nvidia.com/gpu" || a.Endpoint != "gpulet-nvidia-com-gpu.sock" || a.Version != "v1beta1" || len(a.Devices) != len(all) {
				t.Errorf("registration %s %s %s with %d devices, want nvidia.com/gpu gpulet-nvidia-com-gpu.sock v1beta1 with %d", a.Resource, a.Endpoint, a.Version, len(a.Devices), len(all))
			}
			if !a.PreferredAvailable || len(a.Preferred) != tt.count || strings.Join(a.Preferred, ",") != strings.Join(a.Allocated, ",") {
				t.Errorf("preferred %v (available %v), allocated %v: the stub must allocate what the plugin prefers", a.Preferred, a.PreferredAvailable, a.Allocated)
			}
			want := "NVIDIA_VISIBLE_DEVICES=" + strings.Join(a.Allocated, ",") + "\n"
			if stdout.String() != want {
				t.Errorf("stdout %q, want %q", stdout.String(), want)
			}
			if env, _ := os.ReadFile(envOut); string(env) != want {
				t.Errorf("env file %q, want %q", env, want)
			}
			known := map[string]bool{}
			for _, id := range all {
				known[id] = true
			}
			for _, id := range a.Allocated {
				if !known[id] {
					t.Errorf("allocated %s, not a GPU of %s", id, tt.profile)
				}
			}
			if a.Response.Envs["NVIDIA_VISIBLE_DEVICES"] != strings.Join(a.Allocated, ",") {
				t.Errorf("response envs %v", a.Response.Envs)
			}
		})
	}
}

// TestHoldSeesThePluginStop is what the GPU check relies on: the stub keeps
// the stream open, sees gpulet stop, and exits 0 on SIGTERM (here: ctx).
func TestHoldSeesThePluginStop(t *testing.T) {
	dir := shortDir(t)
	stopGpulet := startGpulet(t, "h200", dir)
	jsonOut := filepath.Join(t.TempDir(), "alloc.json")
	ctx, term := context.WithCancel(context.Background())
	defer term()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"allocate", "--dir", dir, "--hold", "--json-out", jsonOut, "--timeout", "20s"}, &stdout, &stderr)
	}()
	waittest.Until(t, 15*time.Second, "the allocation file", func() bool { _, err := os.Stat(jsonOut); return err == nil })
	if err := stopGpulet(); err != nil {
		t.Fatalf("gpulet run returned %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "gpulet-nvidia-com-gpu.sock")); !os.IsNotExist(err) {
		t.Errorf("plugin socket still there after gpulet stopped: %v", err)
	}
	waittest.Until(t, 15*time.Second, "the stream to end", func() bool { return strings.Contains(stderr.String(), "ListAndWatch stream ended") })
	term()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after SIGTERM; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stub did not stop")
	}
	if _, err := os.Stat(filepath.Join(dir, "kubelet.sock")); !os.IsNotExist(err) {
		t.Errorf("kubelet.sock left behind: %v", err)
	}
}

// squeeze collapses runs of blanks, so tests do not depend on column widths.
func squeeze(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args   []string
		code   int
		stderr string
	}{
		{nil, 2, "usage:"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"allocate"}, 1, "allocate needs --dir"},
		{[]string{"allocate", "--dir", "/tmp/x", "--count", "0"}, 1, "a positive --count"},
		{[]string{"compare", "--list", "x.json"}, 1, "compare needs --list and --smi-xml"},
		{[]string{"allocate", "--dir", "DIR", "--timeout", "200ms"}, 1, "no device plugin registered nvidia.com/gpu with DIR/kubelet.sock within 200ms: is `gpulet run --device-plugin-path=DIR` running"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			args := tt.args
			want := tt.stderr
			if len(args) > 2 && args[2] == "DIR" {
				dir := shortDir(t)
				args = append([]string(nil), args...)
				args[2] = dir
				want = strings.ReplaceAll(want, "DIR", dir)
			}
			var stdout, stderr syncBuffer
			if code := run(context.Background(), args, &stdout, &stderr); code != tt.code || !strings.Contains(stderr.String(), want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tt.code, want)
			}
		})
	}
}

func TestCompare(t *testing.T) {
	const fixture = "smi/testdata/nvidia-h200/"
	p, err := sim.LoadProfile("h200")
	if err != nil {
		t.Fatal(err)
	}
	node, err := p.Node()
	if err != nil {
		t.Fatal(err)
	}
	g := node.GPUs[0]
	cudaOK := validate.Report{DriverVersion: "13.0", Devices: []validate.DeviceResult{{DeviceInfo: cudadriver.DeviceInfo{
		UUID: g.UUID, Name: "NVIDIA H200", ComputeCapability: "9.0", MemoryBytes: 143771 << 20, PCIBusID: "0000:00:06.0"}}}}
	cudaNone := validate.Report{Error: "no libcuda", Devices: []validate.DeviceResult{}}
	renamed := *node
	renamed.GPUs = append(renamed.GPUs[:0:0], node.GPUs...)
	renamed.GPUs[0].Name = "NVIDIA H100"

	tests := []struct {
		name   string
		list   any
		cuda   *validate.Report
		csv    bool
		code   int
		out    []string
		stderr string
	}{
		{
			name: "sim h200, nvidia-smi and CUDA agree", list: map[string]any{"node": node}, cuda: &cudaOK, csv: true,
			out: []string{"GPU FIELD nvidia-smi gpulet list (sim) CUDA (validate) STATUS",
				"node gpu count 1 1 1 ok",
				"gpu0 uuid GPU-ac44f0a6-789f-45de-f092-9a23e7c04123 GPU-ac44f0a6-789f-45de-f092-9a23e7c04123 GPU-ac44f0a6-789f-45de-f092-9a23e7c04123 ok",
				"gpu0 compute capability 9.0 9.0 9.0 ok",
				"gpu0 pci bus id 00000000:00:06.0 00000000:00:06.0 0000:00:06.0 ok"},
		},
		{
			name: "without the CSV compute capability is gpulet's and CUDA's alone", list: map[string]any{"node": node}, cuda: &cudaOK,
			out: []string{"gpu0 compute capability - 9.0 9.0 ok"},
		},
		{
			name: "a renamed GPU", list: map[string]any{"node": &renamed}, csv: true,
			code: 1, out: []string{"gpu0 name NVIDIA H200 NVIDIA H100 MISMATCH"}, stderr: "1 fields disagree",
		},
		{
			name: "CUDA saw nothing", list: map[string]any{"node": node}, cuda: &cudaNone, csv: true,
			code: 1, out: []string{"(absent)"}, stderr: "2 fields disagree",
		},
		{name: "not a listing", list: []int{1}, code: 1, stderr: "not `gpulet list -o json` output"},
		{name: "no node", list: map[string]any{}, code: 1, stderr: "no node in `gpulet list -o json` output"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write := func(name string, v any) string {
				b, err := json.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				path := filepath.Join(dir, name)
				if err := os.WriteFile(path, b, 0o644); err != nil {
					t.Fatal(err)
				}
				return path
			}
			args := []string{"compare", "--list", write("list.json", tt.list), "--smi-xml", fixture + "nvidia-smi-q.xml"}
			if tt.csv {
				args = append(args, "--smi-csv", fixture+"query-gpu.csv")
			}
			if tt.cuda != nil {
				args = append(args, "--cuda", write("validate.json", tt.cuda))
			}
			var stdout, stderr syncBuffer
			code := run(context.Background(), args, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("exit %d stderr %q, want %d and %q\n%s", code, stderr.String(), tt.code, tt.stderr, stdout.String())
			}
			for _, o := range tt.out {
				if !strings.Contains(squeeze(stdout.String()), squeeze(o)) {
					t.Errorf("output lacks %q:\n%s", o, stdout.String())
				}
			}
			if tt.code == 0 && strings.Contains(stdout.String(), "MISMATCH") {
				t.Errorf("passing comparison shows a mismatch:\n%s", stdout.String())
			}
		})
	}
}
