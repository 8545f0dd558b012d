package devicemanager_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// capacitySampler records every change of the nvidia.com/gpu capacity the
// node would report, across kubelet restarts, until stopped.
type capacitySampler struct {
	k      atomic.Pointer[kubelet]
	mu     sync.Mutex
	values []int64 // each distinct value in turn, zeros included
	allocs []int64 // the same for allocatable
	stop   chan struct{}
	done   chan struct{}
}

func sampleCapacity(k *kubelet) *capacitySampler {
	s := &capacitySampler{stop: make(chan struct{}), done: make(chan struct{})}
	s.k.Store(k)
	go func() {
		defer close(s.done)
		for {
			c, a := s.k.Load().capacity()
			s.mu.Lock()
			if n := len(s.values); n == 0 || s.values[n-1] != c {
				s.values = append(s.values, c)
			}
			if n := len(s.allocs); n == 0 || s.allocs[n-1] != a {
				s.allocs = append(s.allocs, a)
			}
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return s
}

func (s *capacitySampler) end() []int64 {
	close(s.stop)
	<-s.done
	return s.values
}

// flips counts changes from one non-zero capacity to another (a restarting
// kubelet reports 0 for a moment; that is no flip).
func flips(values []int64) int {
	n, last := 0, int64(0)
	for _, v := range values {
		if v == 0 {
			continue
		}
		if last != 0 && v != last {
			n++
		}
		last = v
	}
	return n
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func httpGet(addr, path string) (int, string, error) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func countLines(p *gpuletProc, substr string) int {
	n := 0
	for _, e := range p.logs.since(0) {
		if strings.Contains(e.msg, substr) {
			n++
		}
	}
	return n
}

// TestNVIDIAPluginConflict runs NVIDIA's nvidia-device-plugin and gpulet on
// one mock H100 node under kubelet's device manager, in both start orders,
// each through 3 kubelet restarts. gpulet shares each GPU 2 ways and
// NVIDIA's plugin does not, so the node's capacity tells who serves:
// 8 (NVIDIA's) or 16 (gpulet's).
//   - Default: gpulet holds back. Once both run, capacity never flips; it
//     stays NVIDIA's, and gpulet reports the conflict (log, /readyz, metric).
//   - Take-over: gpulet ends up serving after every restart, and NVIDIA's
//     plugin registers once per kubelet start, as it does alone: gpulet
//     does not drive it into a loop.
func TestNVIDIAPluginConflict(t *testing.T) {
	n := requireMockNode(t, "h100")
	const restarts = 3
	for _, tc := range []struct {
		name        string
		gpuletFirst bool
		takeOver    bool
	}{
		{"nvidia_first", false, false},
		{"gpulet_first", true, false},
		{"nvidia_first_take_over", false, true},
		{"gpulet_first_take_over", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kubeletLogsOnFailure(t)
			freshNode(t)
			pods := &podList{}
			k := startKubelet(t, t, pods)
			metricsAddr := freePort(t)
			gflags := []string{"--replicas=2", "--metrics-address=" + metricsAddr}
			if tc.takeOver {
				gflags = append(gflags, "--take-over")
			}
			var g, nv *gpuletProc
			startG := func() { g = n.startGpulet(t, t, gflags...) }
			startNV := func() { nv = n.startNVIDIA(t, t, "--device-list-strategy=envvar") }
			want, other := int64(8), int64(16) // who serves at the end: NVIDIA's 8 by default
			if tc.takeOver {
				want, other = 16, 8
			}
			if tc.gpuletFirst {
				startG()
				k.mustCapacity(t, 16, 16, 20*time.Second)
				startNV()
			} else {
				startNV()
				k.mustCapacity(t, 8, 8, 20*time.Second)
				startG()
			}
			// Settled: NVIDIA's plugin registered, gpulet saw it, and
			// (taking over, 2 s later) the capacity is the winner's.
			start := time.Now()
			settled := func(nvWant int) error {
				deadline := time.Now().Add(20 * time.Second)
				for {
					c, a := k.capacity()
					nvRegs := countLines(nv, nvidiaRegistered)
					seen := countLines(g, conflictLine)
					if nvRegs >= nvWant && seen > 0 && c == want && a == want {
						return nil
					}
					if time.Now().After(deadline) {
						return fmt.Errorf("capacity/allocatable %d/%d, NVIDIA's registrations %d (want %d), gpulet's conflict reports %d",
							c, a, nvRegs, nvWant, seen)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			// A taking-over gpulet registers again takeOverDelay (2 s)
			// after the other plugin: watch past that before judging.
			const watch = 3 * time.Second
			if err := settled(1); err != nil {
				t.Fatalf("both running: %v", err)
			}
			time.Sleep(watch)
			if err := settled(1); err != nil {
				t.Fatalf("both running, %v later: %v", watch, err)
			}
			t.Logf("both running: capacity %d (%s) %v after the second plugin started", want, map[int64]string{8: "NVIDIA's", 16: "gpulet's"}[want], time.Since(start).Round(time.Millisecond))
			sampler := sampleCapacity(k)
			for i := 1; i <= restarts; i++ {
				k.stop()
				time.Sleep(kubeletDowntime)
				restarted := time.Now()
				k = startKubelet(t, t, pods)
				sampler.k.Store(k)
				if err := settled(1 + i); err != nil {
					t.Fatalf("kubelet restart %d: %v", i, err)
				}
				d := time.Since(restarted)
				time.Sleep(watch)
				if err := settled(1 + i); err != nil {
					t.Errorf("kubelet restart %d, %v later: %v", i, watch, err)
				}
				t.Logf("kubelet restart %d: capacity/allocatable %d/%d %v after the kubelet started, still %v later", i, want, want, d.Round(time.Millisecond), watch)
			}
			values := sampler.end()
			f := flips(values)
			t.Logf("capacity values seen across %d kubelet restarts: %v (%d flips)", restarts, values, f)
			nvRegs := countLines(nv, nvidiaRegistered)
			gRegs := countLines(g, "registered with kubelet")
			t.Logf("registrations: NVIDIA's plugin %d, gpulet %d (%d kubelet starts)", nvRegs, gRegs, restarts+1)
			if nvRegs != restarts+1 {
				t.Errorf("NVIDIA's plugin registered %d times over %d kubelet starts, want once per start", nvRegs, restarts+1)
			}
			if !tc.takeOver {
				if f != 0 {
					t.Errorf("capacity flipped %d times across the kubelet restarts while gpulet holds back: %v", f, values)
				}
				if slicesContains(values, other) {
					t.Errorf("capacity showed gpulet's %d while gpulet holds back: %v", other, values)
				}
				maxG := 0
				if tc.gpuletFirst {
					maxG = 1 // before NVIDIA's plugin came
				}
				if gRegs > maxG {
					t.Errorf("gpulet registered %d times while NVIDIA's plugin served nvidia.com/gpu, want at most %d", gRegs, maxG)
				}
				if countLines(g, conflictLine) == 0 || countLines(g, "other_endpoint=nvidia-gpu.sock") == 0 {
					t.Error("gpulet's log does not report the conflict with nvidia-gpu.sock")
				}
				code, body, err := httpGet(metricsAddr, "/readyz")
				if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "degraded") || !strings.Contains(body, "nvidia-gpu.sock") {
					t.Errorf("/readyz = %d %q (%v), want 503 degraded naming nvidia-gpu.sock", code, body, err)
				}
				_, metrics, err := httpGet(metricsAddr, "/metrics")
				if err != nil || !strings.Contains(metrics, `gpulet_device_plugin_conflict{action="hold-back",endpoint="nvidia-gpu.sock",resource="nvidia.com/gpu",signal="socket"} 1`) {
					t.Errorf("/metrics has no hold-back conflict for nvidia-gpu.sock (%v)", err)
				}
			} else {
				// Each restart: NVIDIA's plugin registers first, gpulet
				// takes over 2 s later; nothing more.
				if gRegs > 2*(restarts+1) {
					t.Errorf("gpulet registered %d times over %d kubelet starts: a loop", gRegs, restarts+1)
				}
				if code, body, err := httpGet(metricsAddr, "/readyz"); err != nil || code != http.StatusOK {
					t.Errorf("/readyz = %d %q (%v), want 200 while taking over", code, body, err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a, err := k.admit(ctx, gpuPod(1))
			if err != nil {
				t.Fatalf("a pod asking for 1 %s after the restarts: %v", resGPU, err)
			}
			served := "NVIDIA's plugin"
			if strings.Contains(a.devices[0], "::") {
				served = "gpulet"
			}
			if (served == "gpulet") != tc.takeOver {
				t.Errorf("the pod's device %v came from %s", a.devices, served)
			}
			t.Logf("a pod got %v from %s", a.devices, served)
			k.release(a)

			// NVIDIA's DaemonSet deleted (README's migration step 2): gpulet
			// serves; taking over, allocatable never drops.
			sampler = sampleCapacity(k)
			nv.stop()
			d := k.mustCapacity(t, 16, 16, 20*time.Second)
			time.Sleep(watch)
			sampler.end()
			t.Logf("NVIDIA's plugin stopped: gpulet serves 16/16 after %v; allocatable seen %v", d.Round(time.Millisecond), sampler.allocs)
			if tc.takeOver && (len(sampler.allocs) != 1 || sampler.allocs[0] != 16) {
				t.Errorf("allocatable went %v when NVIDIA's plugin stopped while gpulet had taken over, want 16 throughout", sampler.allocs)
			}
			if c, a := k.capacity(); c != 16 || a != 16 {
				t.Errorf("capacity/allocatable %d/%d %v after NVIDIA's plugin stopped, want gpulet's 16/16", c, a, watch)
			}
		})
	}
}

// What each plugin logs when it registers, and gpulet when it sees another
// plugin serving its resource.
const (
	nvidiaRegistered = "Registered device plugin for 'nvidia.com/gpu' with Kubelet"
	conflictLine     = "another device plugin serves a resource gpulet advertises"
)

func slicesContains(vs []int64, v int64) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}
