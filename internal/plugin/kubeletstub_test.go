package plugin

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
	"github.com/gpulet/gpulet/internal/resources"
)

// stubKubelet wraps plugintest.Kubelet for tests.
type stubKubelet struct{ *plugintest.Kubelet }

func startKubelet(t testing.TB, dir string) *stubKubelet {
	t.Helper()
	k, err := plugintest.StartKubelet(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	return &stubKubelet{k}
}

func (k *stubKubelet) stop() { k.Stop() }

func (k *stubKubelet) waitRegistration(t testing.TB, within time.Duration) *pluginapi.RegisterRequest {
	t.Helper()
	r, err := k.WaitRegistration(within)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// dial connects to a plugin's socket the way the kubelet does.
func dial(t testing.TB, dir, endpoint string) pluginapi.DevicePluginClient {
	t.Helper()
	c, closeFn, err := Dial(dir, endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFn() })
	return c
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// harness runs a Manager over a store against a stub kubelet.
type harness struct {
	dir     string
	store   *inventory.Store
	kubelet *stubKubelet
	mgr     *Manager
	cancel  context.CancelFunc
	done    chan error
}

func startHarness(t testing.TB, node *inventory.Node, opts Options, rc resources.Config) *harness {
	t.Helper()
	// Unix socket paths are limited to 108 bytes; t.TempDir() can be long.
	dir, err := os.MkdirTemp("", "gpulet-dp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &harness{dir: dir, store: inventory.NewStore(node), done: make(chan error, 1)}
	h.kubelet = startKubelet(t, dir)
	opts.PluginDir = dir
	if opts.Log == nil {
		opts.Log = discardLog()
	}
	if len(opts.DeviceListStrategies) == 0 {
		opts.DeviceListStrategies = []string{StrategyEnvvar}
	}
	if opts.DeviceIDStrategy == "" {
		opts.DeviceIDStrategy = IDStrategyUUID
	}
	if opts.Poll == 0 {
		opts.Poll = 50 * time.Millisecond
	}
	h.mgr = &Manager{Opts: &opts, Store: h.store, Resources: rc}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.mgr.Run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.cancel()
	<-h.done
	h.done <- nil // idempotent for a second stop
}

// lockedWriter lets a logger write from several goroutines into a builder.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(&lockedWriter{w: w}, nil))
}
