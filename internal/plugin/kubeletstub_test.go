package plugin

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// stubKubelet is the kubelet's side of registration on a real unix socket.
type stubKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	dir  string
	srv  *grpc.Server
	regs chan *pluginapi.RegisterRequest
}

func startKubelet(t testing.TB, dir string) *stubKubelet {
	t.Helper()
	k := &stubKubelet{dir: dir, regs: make(chan *pluginapi.RegisterRequest, 16)}
	sock := filepath.Join(dir, "kubelet.sock")
	os.Remove(sock)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	k.srv = grpc.NewServer()
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go k.srv.Serve(lis)
	t.Cleanup(k.stop)
	return k
}

func (k *stubKubelet) stop() {
	k.srv.Stop()
	os.Remove(filepath.Join(k.dir, "kubelet.sock"))
}

func (k *stubKubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	k.regs <- r
	return &pluginapi.Empty{}, nil
}

func (k *stubKubelet) waitRegistration(t testing.TB, within time.Duration) *pluginapi.RegisterRequest {
	t.Helper()
	select {
	case r := <-k.regs:
		return r
	case <-time.After(within):
		t.Fatalf("no registration within %s", within)
		return nil
	}
}

// dial connects to a plugin's socket the way the kubelet does.
func dial(t testing.TB, dir, endpoint string) pluginapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// simNode is a simulated node of a built-in profile with its device nodes
// under a temporary folder.
func simNode(t testing.TB, profile string) *inventory.Node {
	t.Helper()
	p, err := sim.LoadProfile(profile)
	if err != nil {
		t.Fatal(err)
	}
	n, err := p.Node()
	if err != nil {
		t.Fatal(err)
	}
	n.DevRoot = filepath.Join(t.TempDir(), "dev")
	if err := sim.CreateDeviceNodes(n); err != nil {
		t.Fatal(err)
	}
	return n
}

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
