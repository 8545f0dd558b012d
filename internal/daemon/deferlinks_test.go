package daemon

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/allocator"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/backends"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
	"github.com/gpulet/gpulet/internal/resources"
	"github.com/gpulet/gpulet/internal/version"
	"github.com/gpulet/gpulet/internal/waittest"
)

// slowLinks is the simulator whose link scan blocks until release is
// closed, as NVML's NVLink scan takes its time (hardware.LinkDeferrer).
type slowLinks struct {
	*sim.Backend
	release  chan struct{}
	scanning atomic.Bool
}

func (b *slowLinks) DiscoverDevices(ctx context.Context) (*inventory.Node, error) {
	n, err := b.Discover(ctx)
	if err != nil {
		return nil, err
	}
	d := *n
	d.Links, d.LinksPending = nil, true
	return &d, nil
}

func (b *slowLinks) Links(ctx context.Context, _ *inventory.Node) ([][]inventory.Link, error) {
	b.scanning.Store(true)
	select {
	case <-b.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	n, err := b.Discover(ctx)
	if err != nil {
		return nil, err
	}
	return n.Links, nil
}

// sayings records the messages logged, for a test to wait for one.
type sayings struct {
	mu   *sync.Mutex
	msgs *[]string
}

func (h sayings) Enabled(context.Context, slog.Level) bool { return true }
func (h sayings) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.msgs = append(*h.msgs, r.Message)
	return nil
}
func (h sayings) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h sayings) WithGroup(string) slog.Handler      { return h }

func (h sayings) all() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.msgs)
}

// TestRegistersBeforeLinksPlacesWithThem: on a backend whose link scan
// blocks until released, the device plugin registers, the scan starts, a
// GetPreferredAllocation that arrives then waits for the links, and once
// they come it gets the topology-aware answer (DGX-1's cube-mesh), not the
// NUMA-only one a placer without links gives.
func TestRegistersBeforeLinksPlacesWithThem(t *testing.T) {
	kubelet := plugintest.StartKubeletT(t)
	dpDir := kubelet.Dir
	cfg := simConfig(t, dpDir)
	cfg.SimProfile = "dgx1-v100"
	said := sayings{mu: &sync.Mutex{}, msgs: new([]string)}
	log := slog.New(said)
	release := make(chan struct{})
	var once sync.Once
	releaseLinks := func() { once.Do(func() { close(release) }) }
	var backend *slowLinks
	open := func() (hardware.Backend, error) {
		b, err := backends.Opener(cfg, log)()
		if err != nil {
			return nil, err
		}
		backend = &slowLinks{Backend: b.(*sim.Backend), release: release}
		return backend, nil
	}

	// The answers with and without the links, which must differ for the
	// test to tell them apart.
	b, err := open()
	if err != nil {
		t.Fatal(err)
	}
	full, err := b.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bare := *full
	bare.Links = nil
	answer := func(n *inventory.Node, avail, must []string, size int) []string {
		t.Helper()
		res := resources.Build(inventory.NewStore(n).Snapshot(), ResourcesConfig(cfg))
		p, err := PlacementFor(allocator.PolicyDistributed)(&res[0])
		if err != nil {
			t.Fatal(err)
		}
		ids, err := p.Preferred(context.Background(), avail, must, size)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(ids)
		return ids
	}
	// A request the links decide: the GPUs but one, a few of them.
	var avail, must, want, numaOnly []string
	size := 0
	for skip := 0; skip < len(full.GPUs) && size == 0; skip++ {
		avail = nil
		for i, g := range full.GPUs {
			if i != skip {
				avail = append(avail, g.UUID)
			}
		}
		for size = 2; size <= 4; size++ {
			if want, numaOnly = answer(full, avail, nil, size), answer(&bare, avail, nil, size); !slices.Equal(want, numaOnly) {
				break
			}
		}
		if size > 4 {
			size = 0
		}
	}
	if size == 0 {
		t.Fatal("fixture: the links change no answer")
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunWithVersion(ctx, cfg, open, log, version.Info{Version: "test"}) }()
	defer func() {
		releaseLinks()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	reg, err := kubelet.WaitRegistration(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The scan starts once the plugin registered, without being asked.
	waittest.Until(t, 30*time.Second, "the link scan starts after registration", backend.scanning.Load)

	client, closeConn, err := plugin.Dial(dpDir, reg.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	type result struct {
		ids []string
		err error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := client.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
			ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
				AvailableDeviceIDs: avail, MustIncludeDeviceIDs: must, AllocationSize: int32(size)}}})
		if err != nil {
			got <- result{err: err}
			return
		}
		ids := resp.ContainerResponses[0].DeviceIDs
		slices.Sort(ids)
		got <- result{ids: ids}
	}()
	waittest.UntilSays(t, 30*time.Second, "GetPreferredAllocation waits for the links", func() (bool, string) {
		msgs := said.all()
		return slices.ContainsFunc(msgs, func(m string) bool { return strings.Contains(m, "waiting for the GPU links") }), strings.Join(msgs, "\n")
	})
	select {
	case r := <-got:
		t.Fatalf("GetPreferredAllocation answered %v (%v) before the links were scanned", r.ids, r.err)
	default:
	}
	releaseLinks()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if !slices.Equal(r.ids, want) {
			t.Errorf("preferred %v, want the topology-aware %v (NUMA only: %v)", r.ids, want, numaOnly)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("GetPreferredAllocation did not answer within 30s of the links being scanned")
	}
}
