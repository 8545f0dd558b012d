//go:build cgo && linux

package nvml

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/gpulet/gpulet/internal/waittest"
)

func TestHungCallFailsFast(t *testing.T) {
	const timeout = 200 * time.Millisecond
	setTimeouts(t, timeout)
	f := newFixture(t, dgxh100.New())
	block := newBlocker(t)
	mem := f.devs[0].GetMemoryInfoFunc
	f.devs[0].GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { block.wait(); return mem() }
	ctx := context.Background()

	start := time.Now()
	err := f.b.Probe(ctx, f.devs[0].UUID)
	el := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "did not return within") || !errors.Is(err, errWedged) {
		t.Fatalf("Probe on a hung GetMemoryInfo = %v, want a 'did not return within' error", err)
	}
	if el < timeout || el > timeout+500*time.Millisecond {
		t.Errorf("Probe returned after %v, want about %v", el, timeout)
	}

	// The driver is wedged: calls now fail at once instead of stacking up
	// goroutines behind the stuck one.
	before := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		start := time.Now()
		err := f.b.Probe(ctx, f.devs[1].UUID)
		if !errors.Is(err, errWedged) || !strings.Contains(err.Error(), "GetMemoryInfo has not returned") {
			t.Fatalf("Probe while wedged = %v", err)
		}
		if el := time.Since(start); el > timeout/2 {
			t.Fatalf("Probe while wedged took %v", el)
		}
	}
	if _, err := f.b.Discover(ctx); !errors.Is(err, errWedged) {
		t.Errorf("Discover while wedged = %v", err)
	}
	if err := f.b.Close(); !errors.Is(err, errWedged) {
		t.Errorf("Close while wedged = %v", err)
	}
	if after := runtime.NumGoroutine(); after > before+2 {
		t.Errorf("goroutines grew from %d to %d while wedged", before, after)
	}

	block.release()
	waitUnwedged(t, f.b)
	if err := f.b.Probe(ctx, f.devs[0].UUID); err != nil {
		t.Errorf("Probe after the stuck call returned: %v", err)
	}
	if _, err := f.b.Discover(ctx); err != nil {
		t.Errorf("Discover after the stuck call returned: %v", err)
	}
}

// TestTwoHungCalls: the driver stays wedged until every stuck call returns,
// not just the first.
func TestTwoHungCalls(t *testing.T) {
	setTimeouts(t, 50*time.Millisecond)
	f := newFixture(t, dgxh100.New())
	blocks := []*blocker{newBlocker(t), newBlocker(t)}
	entered := make(chan struct{}, 2)
	for i, bl := range blocks {
		mem := f.devs[i].GetMemoryInfoFunc
		f.devs[i].GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { entered <- struct{}{}; bl.wait(); return mem() }
	}
	errs := make(chan error, 2)
	for i := range blocks {
		go func() { errs <- f.b.Probe(context.Background(), f.devs[i].UUID) }()
	}
	<-entered
	<-entered // both calls are in NVML before either times out
	for range blocks {
		if err := <-errs; !strings.Contains(fmt.Sprint(err), "did not return within") {
			t.Fatalf("Probe = %v", err)
		}
	}
	blocks[0].release()
	waittest.Until(t, 2*time.Second, "the first stuck call returned and is forgotten", func() bool {
		f.b.mu.Lock()
		defer f.b.mu.Unlock()
		return len(f.b.stuck) == 1
	})
	if err := f.b.Probe(context.Background(), f.devs[2].UUID); !errors.Is(err, errWedged) {
		t.Errorf("with one call still stuck, Probe = %v; want a wedged error", err)
	}
	blocks[1].release()
	waitUnwedged(t, f.b)
	if err := f.b.Probe(context.Background(), f.devs[2].UUID); err != nil {
		t.Errorf("Probe after both calls returned: %v", err)
	}
}

func TestDiscoverHungCall(t *testing.T) {
	for _, tc := range []struct {
		name string
		hang func(d *server.Device, wait func())
	}{
		{"GetMemoryInfo", func(d *server.Device, wait func()) {
			orig := d.GetMemoryInfoFunc
			d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { wait(); return orig() }
		}},
		{"GetNumaNodeId (optional)", func(d *server.Device, wait func()) {
			d.GetNumaNodeIdFunc = func() (int, nvml.Return) { wait(); return 0, nvml.SUCCESS }
		}},
		{"GetSerial (optional)", func(d *server.Device, wait func()) {
			d.GetSerialFunc = func() (string, nvml.Return) { wait(); return "1", nvml.SUCCESS }
		}},
		{"GetNvLinkState (topology)", func(d *server.Device, wait func()) {
			d.GetNvLinkStateFunc = func(int) (nvml.EnableState, nvml.Return) { wait(); return 0, nvml.ERROR_NOT_SUPPORTED }
		}},
		{"GetTopologyCommonAncestor (topology)", func(d *server.Device, wait func()) {
			d.GetTopologyCommonAncestorFunc = func(nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
				wait()
				return nvml.TOPOLOGY_SYSTEM, nvml.SUCCESS
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setTimeouts(t, 50*time.Millisecond)
			f := newFixture(t, dgxh100.New())
			block := newBlocker(t)
			tc.hang(f.devs[5], block.wait)
			n, err := f.b.Discover(context.Background())
			if n != nil || err == nil || !strings.Contains(err.Error(), "did not return within") {
				t.Fatalf("Discover with a hung %s = %v, %v; want a 'did not return within' error and no node", tc.name, n, err)
			}
			block.release()
			waitUnwedged(t, f.b)
			if _, err := f.b.Discover(context.Background()); err != nil {
				t.Errorf("Discover after the call returned: %v", err)
			}
		})
	}
}
