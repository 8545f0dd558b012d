package plugin

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
	"github.com/gpulet/gpulet/internal/resources"
	"github.com/gpulet/gpulet/internal/waittest"
)

const endpoint = "gpulet-nvidia-com-gpu.sock"

func TestRegistersResourceWithKubelet(t *testing.T) {
	h := startHarness(t, simtest.Node(t, "dgx-h100"), Options{Placement: func(*resources.Resource) (Placer, error) { return nil, nil }}, resources.Config{})
	r := h.kubelet.waitRegistration(t, 5*time.Second)
	if r.ResourceName != "nvidia.com/gpu" || r.Endpoint != endpoint || r.Version != pluginapi.Version {
		t.Fatalf("registration = %+v", r)
	}
	if !r.Options.GetPreferredAllocationAvailable {
		t.Error("GetPreferredAllocationAvailable not advertised although placement is on")
	}
	opts, err := dial(t, h.dir, endpoint).GetDevicePluginOptions(context.Background(), &pluginapi.Empty{})
	if err != nil || !opts.GetPreferredAllocationAvailable || opts.PreStartRequired {
		t.Fatalf("GetDevicePluginOptions = %+v, %v", opts, err)
	}
}

func TestListAndWatchStreamsHealthAndDeviceChanges(t *testing.T) {
	node := simtest.Node(t, "dgx-h100")
	h := startHarness(t, node, Options{}, resources.Config{})
	h.kubelet.waitRegistration(t, 5*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := dial(t, h.dir, endpoint).ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	recv := func() map[string]string {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, d := range resp.Devices {
			out[d.ID] = d.Health
		}
		return out
	}
	first := recv()
	if len(first) != 8 {
		t.Fatalf("first list has %d devices, want 8", len(first))
	}
	for id, hl := range first {
		if hl != pluginapi.Healthy {
			t.Errorf("%s is %s at start", id, hl)
		}
	}

	bad := node.GPUs[3].UUID
	h.store.SetHealth(bad, inventory.Health{Reason: "XID 48", XID: 48})
	got := recv()
	if got[bad] != pluginapi.Unhealthy || countHealthy(got) != 7 {
		t.Fatalf("after fault: %s is %s, %d healthy; want Unhealthy and 7", bad, got[bad], countHealthy(got))
	}

	h.store.SetHealth(bad, inventory.Health{Healthy: true})
	if got := recv(); got[bad] != pluginapi.Healthy || countHealthy(got) != 8 {
		t.Fatalf("after recovery: %s is %s", bad, got[bad])
	}

	// A GPU disappears: the list shrinks; the resource does not vanish.
	smaller := *node
	smaller.GPUs = node.GPUs[:7]
	smaller.Links = nil
	h.store.SetNode(&smaller)
	if got := recv(); len(got) != 7 {
		t.Fatalf("after removal the list has %d devices, want 7", len(got))
	}
	h.store.SetNode(node)
	if got := recv(); len(got) != 8 {
		t.Fatalf("after restore the list has %d devices, want 8", len(got))
	}
}

func countHealthy(m map[string]string) int {
	n := 0
	for _, h := range m {
		if h == pluginapi.Healthy {
			n++
		}
	}
	return n
}

func TestListAndWatchReportsNUMATopology(t *testing.T) {
	node := simtest.Node(t, "dgx-h100")
	h := startHarness(t, node, Options{}, resources.Config{})
	h.kubelet.waitRegistration(t, 5*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := dial(t, h.dir, endpoint).ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{}
	for _, g := range node.GPUs {
		want[g.UUID] = int64(g.NUMANode)
	}
	for _, d := range resp.Devices {
		if d.Topology == nil || len(d.Topology.Nodes) != 1 || d.Topology.Nodes[0].ID != want[d.ID] {
			t.Errorf("%s topology = %v, want NUMA %d", d.ID, d.Topology, want[d.ID])
		}
	}
}

func TestAllocateStrategies(t *testing.T) {
	node := simtest.Node(t, "dgx-h100")
	g0, g5 := node.GPUs[0], node.GPUs[5]
	ids := []string{g5.UUID, g0.UUID}
	cases := []struct {
		name   string
		opts   Options
		env    map[string]string
		mounts []string
		cdi    []string
		annot  string // expected annotation value, if any
		devs   []string
	}{
		{
			name: "envvar uuid",
			opts: Options{DeviceListStrategies: []string{StrategyEnvvar}, DeviceIDStrategy: IDStrategyUUID},
			env:  map[string]string{"NVIDIA_VISIBLE_DEVICES": g5.UUID + "," + g0.UUID},
		},
		{
			name: "envvar index",
			opts: Options{DeviceListStrategies: []string{StrategyEnvvar}, DeviceIDStrategy: IDStrategyIndex},
			env:  map[string]string{"NVIDIA_VISIBLE_DEVICES": "5,0"},
		},
		{
			name:   "volume-mounts",
			opts:   Options{DeviceListStrategies: []string{StrategyVolumeMounts}, DeviceIDStrategy: IDStrategyUUID},
			env:    map[string]string{"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"},
			mounts: []string{"/var/run/nvidia-container-devices/" + g5.UUID, "/var/run/nvidia-container-devices/" + g0.UUID},
		},
		{
			name: "cdi-cri",
			opts: Options{DeviceListStrategies: []string{StrategyCDICRI}, DeviceIDStrategy: IDStrategyUUID},
			env:  map[string]string{"NVIDIA_VISIBLE_DEVICES": "void"},
			cdi:  []string{DefaultCDIKind + "=" + g5.UUID, DefaultCDIKind + "=" + g0.UUID},
		},
		{
			name:  "cdi-annotations index",
			opts:  Options{DeviceListStrategies: []string{StrategyCDIAnnotations}, DeviceIDStrategy: IDStrategyIndex},
			env:   map[string]string{"NVIDIA_VISIBLE_DEVICES": "void"},
			annot: DefaultCDIKind + "=5," + DefaultCDIKind + "=0",
		},
		{
			// NVIDIA's plugin passes no device specs when every strategy is
			// CDI: the spec brings the nodes.
			name: "cdi-cri ignores pass-device-specs",
			opts: Options{DeviceListStrategies: []string{StrategyCDICRI}, DeviceIDStrategy: IDStrategyUUID, PassDeviceSpecs: true},
			env:  map[string]string{"NVIDIA_VISIBLE_DEVICES": "void"},
			cdi:  []string{DefaultCDIKind + "=" + g5.UUID, DefaultCDIKind + "=" + g0.UUID},
		},
		{
			name: "envvar and cdi-cri with device specs",
			opts: Options{DeviceListStrategies: []string{StrategyEnvvar, StrategyCDICRI}, DeviceIDStrategy: IDStrategyUUID, PassDeviceSpecs: true},
			env:  map[string]string{"NVIDIA_VISIBLE_DEVICES": g5.UUID + "," + g0.UUID},
			cdi:  []string{DefaultCDIKind + "=" + g5.UUID, DefaultCDIKind + "=" + g0.UUID},
			devs: []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia5"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, node, tc.opts, resources.Config{})
			h.kubelet.waitRegistration(t, 5*time.Second)
			resp, err := dial(t, h.dir, endpoint).Allocate(context.Background(), &pluginapi.AllocateRequest{
				ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}, {DevicesIds: ids[1:]}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.ContainerResponses) != 2 {
				t.Fatalf("%d container responses for 2 containers", len(resp.ContainerResponses))
			}
			c := resp.ContainerResponses[0]
			if fmt.Sprint(c.Envs) != fmt.Sprint(tc.env) {
				t.Errorf("envs = %v, want %v", c.Envs, tc.env)
			}
			var mounts []string
			for _, m := range c.Mounts {
				if m.HostPath != "/dev/null" || !m.ReadOnly {
					t.Errorf("mount %+v: want read-only /dev/null", m)
				}
				mounts = append(mounts, m.ContainerPath)
			}
			if fmt.Sprint(mounts) != fmt.Sprint(tc.mounts) {
				t.Errorf("mounts = %v, want %v", mounts, tc.mounts)
			}
			var cdi []string
			for _, d := range c.CdiDevices {
				cdi = append(cdi, d.Name)
			}
			if fmt.Sprint(cdi) != fmt.Sprint(tc.cdi) {
				t.Errorf("CDI devices = %v, want %v", cdi, tc.cdi)
			}
			if tc.annot != "" {
				if len(c.Annotations) != 1 {
					t.Fatalf("annotations = %v, want one", c.Annotations)
				}
				for k, v := range c.Annotations {
					if !strings.HasPrefix(k, "cdi.k8s.io/gpulet_") || v != tc.annot {
						t.Errorf("annotation %s=%s, want cdi.k8s.io/gpulet_*=%s", k, v, tc.annot)
					}
				}
			} else if len(c.Annotations) != 0 {
				t.Errorf("unexpected annotations %v", c.Annotations)
			}
			var devs []string
			for _, d := range c.Devices {
				name := filepath.Base(d.HostPath)
				if d.ContainerPath != "/dev/"+name || d.HostPath != filepath.Join(node.DevRoot, name) || d.Permissions != "rw" {
					t.Errorf("device spec %+v", d)
				}
				devs = append(devs, name)
			}
			if fmt.Sprint(devs) != fmt.Sprint(tc.devs) {
				t.Errorf("device specs = %v, want %v", devs, tc.devs)
			}
			// The second container got only its own device.
			if tc.env["NVIDIA_VISIBLE_DEVICES"] == g5.UUID+","+g0.UUID {
				if got := resp.ContainerResponses[1].Envs["NVIDIA_VISIBLE_DEVICES"]; got != g0.UUID {
					t.Errorf("second container sees %q, want %q", got, g0.UUID)
				}
			}
		})
	}
}

func TestAllocateRejectsUnknownAndUnhealthyDevices(t *testing.T) {
	node := simtest.Node(t, "dgx-h100")
	h := startHarness(t, node, Options{}, resources.Config{})
	h.kubelet.waitRegistration(t, 5*time.Second)
	bad := node.GPUs[2].UUID
	h.store.SetHealth(bad, inventory.Health{Reason: "XID 79: GPU has fallen off the bus", XID: 79})
	client := dial(t, h.dir, endpoint)
	// Wait until the server has the new health (the store notifies asynchronously).
	waittest.Until(t, 5*time.Second, "the server refuses the unhealthy GPU", func() bool {
		_, err := client.PreStartContainer(context.Background(), &pluginapi.PreStartContainerRequest{DevicesIds: []string{bad}})
		return err != nil
	})
	cases := []struct {
		name string
		ids  []string
		want []string
	}{
		{"unknown", []string{node.GPUs[0].UUID, "GPU-nope"}, []string{"unknown nvidia.com/gpu devices: GPU-nope"}},
		{"unhealthy", []string{bad}, []string{"unhealthy nvidia.com/gpu devices: " + bad, "XID 79"}},
		{"both", []string{"x", bad}, []string{"unknown nvidia.com/gpu devices: x", "unhealthy nvidia.com/gpu devices: " + bad}},
		{"duplicate", []string{node.GPUs[1].UUID, node.GPUs[1].UUID}, []string{"requested twice"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{
				ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: tc.ids}},
			})
			checkInvalid(t, "Allocate", err, tc.want)
			_, err = client.PreStartContainer(context.Background(), &pluginapi.PreStartContainerRequest{DevicesIds: tc.ids})
			checkInvalid(t, "PreStartContainer", err, tc.want)
		})
	}
}

func checkInvalid(t *testing.T, call string, err error, want []string) {
	t.Helper()
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("%s: code %v (%v), want InvalidArgument", call, status.Code(err), err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s error %q does not say %q", call, err, w)
		}
	}
}

func TestTimeSlicedReplicasShareTheirGPU(t *testing.T) {
	node := simtest.Node(t, "pcie-4x-l4")
	h := startHarness(t, node, Options{PassDeviceSpecs: true}, resources.Config{Replicas: 3, RenameByDefault: true})
	r := h.kubelet.waitRegistration(t, 5*time.Second)
	if r.ResourceName != "nvidia.com/gpu.shared" {
		t.Fatalf("resource %q, want nvidia.com/gpu.shared", r.ResourceName)
	}
	client := dial(t, h.dir, "gpulet-nvidia-com-gpu-shared.sock")
	stream, err := client.ListAndWatch(context.Background(), &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	list, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Devices) != 12 {
		t.Fatalf("%d devices, want 4 GPUs x 3 replicas", len(list.Devices))
	}
	u := node.GPUs[1].UUID
	resp, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{u + "::0", u + "::2"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := resp.ContainerResponses[0]
	if c.Envs["NVIDIA_VISIBLE_DEVICES"] != u {
		t.Errorf("two replicas of one GPU give %q, want the GPU once", c.Envs["NVIDIA_VISIBLE_DEVICES"])
	}

	// failRequestsGreaterThanOne: two replicas in one container are refused.
	strict := startHarness(t, node, Options{}, resources.Config{Replicas: 3, FailRequestsGreaterThanOne: true})
	strict.kubelet.waitRegistration(t, 5*time.Second)
	_, err = dial(t, strict.dir, "gpulet-nvidia-com-gpu.sock").Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{u + "::0", u + "::2"}}},
	})
	checkInvalid(t, "Allocate", err, []string{"at most 1", "failRequestsGreaterThanOne"})
	if len(c.Devices) != 4 || c.Devices[3].ContainerPath != "/dev/nvidia1" {
		t.Errorf("device specs %v, want control devices + /dev/nvidia1", c.Devices)
	}
}

func TestGetPreferredAllocationUsesPlacerAndFallsBack(t *testing.T) {
	node := simtest.Node(t, "dgx-h100")
	var calls int
	placer := placerFunc(func(_ context.Context, available, must []string, size int) ([]string, error) {
		calls++
		if size == 3 {
			return nil, fmt.Errorf("placer broke")
		}
		out := append([]string(nil), available...)
		sort.Sort(sort.Reverse(sort.StringSlice(out)))
		return out[:size], nil
	})
	h := startHarness(t, node, Options{Placement: func(*resources.Resource) (Placer, error) { return placer, nil }}, resources.Config{})
	h.kubelet.waitRegistration(t, 5*time.Second)
	client := dial(t, h.dir, endpoint)
	avail := []string{node.GPUs[0].UUID, node.GPUs[1].UUID, node.GPUs[2].UUID, node.GPUs[3].UUID}
	resp, err := client.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
			{AvailableDeviceIDs: avail, AllocationSize: 2},
			{AvailableDeviceIDs: avail, MustIncludeDeviceIDs: []string{avail[3]}, AllocationSize: 3},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]string(nil), avail...)
	sort.Sort(sort.Reverse(sort.StringSlice(want)))
	if got := resp.ContainerResponses[0].DeviceIDs; fmt.Sprint(got) != fmt.Sprint(want[:2]) {
		t.Errorf("placer answer not passed through: %v, want %v", got, want[:2])
	}
	// The placer failed: a valid answer with the must-include device first.
	if got := resp.ContainerResponses[1].DeviceIDs; fmt.Sprint(got) != fmt.Sprint([]string{avail[3], avail[0], avail[1]}) {
		t.Errorf("fallback = %v", got)
	}
	if calls != 2 {
		t.Errorf("placer called %d times, want 2", calls)
	}
	_, err = client.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: avail[:1], AllocationSize: 2}},
	})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("impossible request: %v, want InvalidArgument", err)
	}
}

type placerFunc func(context.Context, []string, []string, int) ([]string, error)

func (f placerFunc) Preferred(ctx context.Context, a, m []string, n int) ([]string, error) {
	return f(ctx, a, m, n)
}

func TestReRegistersWhenKubeletRestarts(t *testing.T) {
	// Polling off: re-registration must come from watching kubelet.sock.
	h := startHarness(t, simtest.Node(t, "h200"), Options{Poll: time.Hour}, resources.Config{})
	h.kubelet.waitRegistration(t, 5*time.Second)
	k := h.kubelet
	// Many quick restarts: kubelet.sock appears at bind(), a moment before
	// the kubelet listens, so a first try can be refused.
	for i := 0; i < 50; i++ {
		k.stop()
		time.Sleep(time.Duration(i%3) * time.Millisecond)
		k = startKubelet(t, h.dir)
		r, err := k.WaitRegistration(2 * time.Second)
		if err != nil {
			t.Fatalf("restart %d: %v", i, err)
		}
		if r.ResourceName != "nvidia.com/gpu" {
			t.Fatalf("re-registered %q", r.ResourceName)
		}
	}
}

func TestReRegistersWhenPluginSocketIsDeleted(t *testing.T) {
	h := startHarness(t, simtest.Node(t, "h200"), Options{}, resources.Config{})
	h.kubelet.waitRegistration(t, 5*time.Second)
	// The kubelet removes every plugin socket when it starts.
	if err := os.Remove(filepath.Join(h.dir, endpoint)); err != nil {
		t.Fatal(err)
	}
	h.kubelet.waitRegistration(t, 5*time.Second)
	if _, err := dial(t, h.dir, endpoint).GetDevicePluginOptions(context.Background(), &pluginapi.Empty{}); err != nil {
		t.Fatalf("socket not served again: %v", err)
	}
}

func TestReRegistersWhenListAndWatchStreamEnds(t *testing.T) {
	h := startHarness(t, simtest.Node(t, "h200"), Options{}, resources.Config{})
	h.kubelet.waitRegistration(t, 5*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := dial(t, h.dir, endpoint).ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel() // the kubelet drops the stream
	h.kubelet.waitRegistration(t, 5*time.Second)
}

func TestWaitsForAbsentKubeletThenRegisters(t *testing.T) {
	dir, err := os.MkdirTemp("", "gpulet-dp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	node := simtest.Node(t, "h200")
	store := inventory.NewStore(node)
	var logs strings.Builder
	lw := &lockedWriter{w: &logs}
	log := func() string { lw.mu.Lock(); defer lw.mu.Unlock(); return logs.String() }
	opts := &Options{PluginDir: dir, DeviceListStrategies: []string{StrategyEnvvar}, DeviceIDStrategy: IDStrategyUUID,
		Log: slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelDebug})), Poll: 20 * time.Millisecond}
	mgr := &Manager{Opts: opts, Store: store}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Run(ctx) }()

	// Several retries without a kubelet (each logged at debug level).
	waittest.Until(t, 5*time.Second, "3 failed registrations", func() bool { return strings.Count(log(), "registration failed") >= 3 })
	k := startKubelet(t, dir)
	k.waitRegistration(t, 5*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v", err)
	}
	if n := strings.Count(log(), "kubelet not reachable"); n != 1 {
		t.Errorf("logged the missing kubelet %d times, want once:\n%s", n, log())
	}
	if _, err := os.Stat(filepath.Join(dir, endpoint)); !os.IsNotExist(err) {
		t.Errorf("socket left behind after shutdown: %v", err)
	}
}

// The kubelet refuses a second registration of a connected plugin and
// forgets the live one while refusing, so gpulet must register exactly once
// per kubelet: also when it starts over a stale socket of a killed gpulet,
// and when the kubelet restarts and deletes gpulet's socket first.
func TestRegistersOncePerKubelet(t *testing.T) {
	dir, err := os.MkdirTemp("", "gpulet-dp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.WriteFile(filepath.Join(dir, endpoint), nil, 0o600) // left by a SIGKILLed gpulet
	k := startKubelet(t, dir)
	store := inventory.NewStore(simtest.Node(t, "h200"))
	mgr := &Manager{Store: store, Opts: &Options{PluginDir: dir, DeviceListStrategies: []string{StrategyEnvvar},
		DeviceIDStrategy: IDStrategyUUID, Log: discardLog(), Poll: 20 * time.Millisecond}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Run(ctx) }()
	defer func() { cancel(); <-done }()

	noMore := func(k *stubKubelet) {
		t.Helper()
		if r, err := k.WaitRegistration(500 * time.Millisecond); err == nil {
			t.Fatalf("registered a second time with the same kubelet: %+v", r)
		}
	}
	k.waitRegistration(t, 5*time.Second)
	noMore(k)

	// A kubelet restart: it removes every plugin socket, then serves again.
	k.stop()
	os.Remove(filepath.Join(dir, endpoint))
	time.Sleep(30 * time.Millisecond)
	k2 := startKubelet(t, dir)
	k2.waitRegistration(t, 5*time.Second)
	noMore(k2)
}

// A kubelet that refuses a registration as "already connected" keeps a stale
// connection to our socket: gpulet serves a fresh socket and registers again.
func TestRecoversFromAlreadyConnectedRefusal(t *testing.T) {
	dir, err := os.MkdirTemp("", "gpulet-dp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	k, err := plugintest.StartKubelet(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	// The socket is stat'ed when the refused registration arrives: the plugin
	// cannot have replaced it yet, however the test goroutine is scheduled.
	refusedSocket := make(chan os.FileInfo, 1)
	refused := 0
	k.Refuse = func(*pluginapi.RegisterRequest) error {
		if refused == 0 {
			refused++
			fi, _ := os.Stat(filepath.Join(dir, endpoint))
			refusedSocket <- fi
			return fmt.Errorf("device plugin already connected: %s", filepath.Join(dir, endpoint))
		}
		return nil
	}
	mgr := &Manager{Store: inventory.NewStore(simtest.Node(t, "h200")), Opts: &Options{PluginDir: dir,
		DeviceListStrategies: []string{StrategyEnvvar}, DeviceIDStrategy: IDStrategyUUID, Log: discardLog(), Poll: time.Hour}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var first os.FileInfo
	select {
	case first = <-refusedSocket:
	case <-time.After(5 * time.Second):
		t.Fatal("no registration reached the kubelet within 5s")
	}
	if first == nil {
		t.Fatal("the plugin registered before its socket existed")
	}
	if _, err := k.WaitRegistration(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	now, err := os.Stat(filepath.Join(dir, endpoint))
	if err != nil || sameFile(first, now) {
		t.Errorf("the socket was not served afresh after the refusal (err %v)", err)
	}
}
