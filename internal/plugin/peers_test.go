package plugin

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
	"github.com/gpulet/gpulet/internal/waittest"
)

// peerPlugin is another device plugin's socket in the folder: it answers
// GetDevicePluginOptions, as NVIDIA's plugin does.
type peerPlugin struct {
	pluginapi.UnimplementedDevicePluginServer
	srv  *grpc.Server
	path string
}

func (*peerPlugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}, nil
}

func startPeer(t testing.TB, dir, name string) *peerPlugin {
	t.Helper()
	p := &peerPlugin{srv: grpc.NewServer(), path: filepath.Join(dir, name)}
	lis, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	pluginapi.RegisterDevicePluginServer(p.srv, p)
	go func() { _ = p.srv.Serve(lis) }()
	t.Cleanup(p.stop)
	return p
}

// leaveStaleSocket leaves a socket file nobody listens on, as a plugin
// killed with SIGKILL does. (Stopping a server instead unlinks the file, at
// a moment that depends on whether Serve had started.)
func leaveStaleSocket(t testing.TB, path string) {
	t.Helper()
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	lis.SetUnlinkOnClose(false)
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
}

// stop ends it as NVIDIA's plugin ends: the server stops, the socket goes.
func (p *peerPlugin) stop() {
	p.srv.Stop()
	os.Remove(p.path)
}

// conflicts records what OnConflict was told.
type conflicts struct {
	mu  sync.Mutex
	got []*Conflict // nil entries: cleared
	ch  chan *Conflict
}

func newConflicts() *conflicts { return &conflicts{ch: make(chan *Conflict, 64)} }

func (c *conflicts) on(_ string, x *Conflict) {
	c.mu.Lock()
	c.got = append(c.got, x)
	c.mu.Unlock()
	c.ch <- x
}

func (c *conflicts) wait(t testing.TB, within time.Duration) *Conflict {
	t.Helper()
	select {
	case x := <-c.ch:
		return x
	case <-time.After(within):
		t.Fatalf("no conflict report within %v", within)
		return nil
	}
}

// peerSetup is a plugin folder with a stub kubelet; start runs gpulet's
// manager on it.
type peerSetup struct {
	dir     string
	kubelet *stubKubelet
	seen    *conflicts
	opts    Options
}

func newPeerSetup(t *testing.T) *peerSetup {
	dir, err := os.MkdirTemp("", "gpulet-dp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &peerSetup{dir: dir, kubelet: startKubelet(t, dir), seen: newConflicts()}
	s.opts = Options{PluginDir: dir, DeviceListStrategies: []string{StrategyEnvvar}, DeviceIDStrategy: IDStrategyUUID,
		Log: discardLog(), Poll: 50 * time.Millisecond, OnConflict: s.seen.on}
	return s
}

func (s *peerSetup) start(t *testing.T) {
	mgr := &Manager{Opts: &s.opts, Store: inventory.NewStore(simtest.Node(t, "h200")), Resources: resources.Config{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func (s *peerSetup) noRegistration(t *testing.T, within time.Duration) {
	t.Helper()
	if r, err := s.kubelet.WaitRegistration(within); err == nil {
		t.Fatalf("gpulet registered %s while another plugin serves it", r.ResourceName)
	}
}

func TestScanPeersNamesResourcesAndLiveness(t *testing.T) {
	dir, err := os.MkdirTemp("", "gpulet-dp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	startKubelet(t, dir)
	startPeer(t, dir, "nvidia-gpu.sock")
	startPeer(t, dir, "vendor-x.sock")
	startPeer(t, dir, endpoint)                                        // gpulet's own: not a peer
	leaveStaleSocket(t, filepath.Join(dir, "nvidia-mig-1g.10gb.sock")) // left behind by a killed plugin
	if err := os.WriteFile(filepath.Join(dir, "kubelet_internal_checkpoint"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ScanPeers(context.Background(), dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := []Peer{
		{Socket: "nvidia-gpu.sock", Resource: "nvidia.com/gpu", Live: true},
		{Socket: "nvidia-mig-1g.10gb.sock", Resource: "nvidia.com/mig-1g.10gb"},
		{Socket: "vendor-x.sock", Live: true},
	}
	if len(got) != len(want) {
		t.Fatalf("ScanPeers = %+v, want %+v", got, want)
	}
	for i := range want {
		g := got[i]
		if g.Socket != want[i].Socket || g.Resource != want[i].Resource || g.Live != want[i].Live || (g.Live == (g.Err != "")) {
			t.Errorf("peer %d = %+v, want %+v (an error exactly when not live)", i, g, want[i])
		}
	}
}

func TestResourceOfSocket(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		ok         bool
	}{
		{"nvidia-gpu.sock", "nvidia.com/gpu", true},
		{"nvidia-mig-3g.40gb.sock", "nvidia.com/mig-3g.40gb", true},
		{"nvidia-gpu.shared.sock", "nvidia.com/gpu.shared", true},
		{"nvidia-.sock", "", false},
		{"amd-gpu.sock", "", false},
		{"nvidia-gpu", "", false},
	} {
		got, ok := ResourceOfSocket(tc.name)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ResourceOfSocket(%q) = %q, %v; want %q, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

// Signal 1, another plugin first: gpulet holds back (no registration, no
// socket), reports the other socket, and registers once it has gone.
func TestHoldsBackWhileAnotherPluginServesItsResource(t *testing.T) {
	s := newPeerSetup(t)
	nv := startPeer(t, s.dir, "nvidia-gpu.sock")
	s.start(t)
	c := s.seen.wait(t, 5*time.Second)
	if c == nil || c.Resource != "nvidia.com/gpu" || c.Endpoint != "nvidia-gpu.sock" || c.Signal != "socket" || c.TakingOver {
		t.Fatalf("conflict = %+v, want nvidia-gpu.sock by socket, held back", c)
	}
	s.noRegistration(t, 1500*time.Millisecond)
	if _, err := os.Lstat(filepath.Join(s.dir, endpoint)); !os.IsNotExist(err) {
		t.Errorf("gpulet serves its socket while held back (stat: %v)", err)
	}
	nv.stop()
	s.kubelet.waitRegistration(t, 10*time.Second)
	if c := s.seen.wait(t, time.Second); c != nil {
		t.Errorf("after the other plugin left: %+v, want the conflict cleared", c)
	}
}

// Signal 1, another plugin second: gpulet withdraws its socket.
func TestWithdrawsWhenAnotherPluginArrives(t *testing.T) {
	s := newPeerSetup(t)
	s.start(t)
	s.kubelet.waitRegistration(t, 5*time.Second)
	startPeer(t, s.dir, "nvidia-gpu.sock")
	if c := s.seen.wait(t, 5*time.Second); c == nil || c.Endpoint != "nvidia-gpu.sock" {
		t.Fatalf("conflict = %+v, want nvidia-gpu.sock", c)
	}
	waittest.Until(t, 5*time.Second, "gpulet stops serving its socket after the conflict", func() bool {
		_, err := os.Lstat(filepath.Join(s.dir, endpoint))
		return os.IsNotExist(err)
	})
	s.noRegistration(t, 1500*time.Millisecond)
}

// Take-over: gpulet registers anyway, reports it, and registers again after
// a kubelet restart.
func TestTakeOverRegistersDespiteAnotherPlugin(t *testing.T) {
	s := newPeerSetup(t)
	s.opts.TakeOver = true
	startPeer(t, s.dir, "nvidia-gpu.sock")
	s.start(t)
	if c := s.seen.wait(t, 5*time.Second); c == nil || !c.TakingOver {
		t.Fatalf("conflict = %+v, want one reported as taking over", c)
	}
	s.kubelet.waitRegistration(t, 5*time.Second)
	s.kubelet.stop()
	start := time.Now()
	k2 := startKubelet(t, s.dir)
	k2.waitRegistration(t, 10*time.Second)
	if d := time.Since(start); d < takeOverDelay/2 {
		t.Errorf("registered %v after the kubelet restart: a taking-over gpulet waits for the other plugin to register first", d)
	}
}

// Signal 2: a live socket whose name does not tell its resource, and a
// checkpoint in which the kubelet holds other device IDs for gpulet's
// resource, is another registrant.
func TestCheckpointNamesAnotherRegistrant(t *testing.T) {
	s := newPeerSetup(t)
	startPeer(t, s.dir, "vendor-x.sock")
	cp := map[string]any{"Data": map[string]any{"PodDeviceEntries": nil,
		"RegisteredDevices": map[string][]string{"nvidia.com/gpu": {"GPU-other-0", "GPU-other-1"}}}, "Checksum": 0}
	data, _ := json.Marshal(cp)
	if err := os.WriteFile(filepath.Join(s.dir, "kubelet_internal_checkpoint"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	reg, err := RegisteredResources(s.dir)
	if err != nil || len(reg["nvidia.com/gpu"]) != 2 {
		t.Fatalf("RegisteredResources = %v, %v", reg, err)
	}
	s.start(t)
	c := s.seen.wait(t, 5*time.Second)
	if c == nil || c.Signal != "checkpoint" || c.Endpoint != "vendor-x.sock" {
		t.Fatalf("conflict = %+v, want vendor-x.sock by checkpoint", c)
	}
	s.noRegistration(t, time.Second)
}

// Signal 3: the kubelet ends gpulet's stream and keeps running (another
// registration replaced it). gpulet reports it and registers again at most
// once soon; a second replacement waits longer (backoff), never a loop.
func TestStreamReplacedReRegistersOnceThenBacksOff(t *testing.T) {
	s := newPeerSetup(t)
	s.start(t)
	s.kubelet.waitRegistration(t, 5*time.Second)
	drop := func() time.Time {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := dial(t, s.dir, endpoint).ListAndWatch(ctx, &pluginapi.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
		return time.Now()
	}
	drop()
	c := s.seen.wait(t, 5*time.Second)
	if c == nil || c.Signal != "stream-replaced" {
		t.Fatalf("conflict = %+v, want stream-replaced", c)
	}
	s.kubelet.waitRegistration(t, 10*time.Second)
	if c := s.seen.wait(t, time.Second); c != nil {
		t.Fatalf("%+v, want the conflict cleared before registering again", c)
	}
	drop()
	s.seen.wait(t, 5*time.Second)
	// The first hold lasted peerRecheck; the second twice that.
	s.noRegistration(t, 2*peerRecheck)
	s.kubelet.waitRegistration(t, 15*time.Second)
}
