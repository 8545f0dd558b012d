package devicemanager_test

import (
	"slices"
	"syscall"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Both benchmarks time real processes and a real device manager; the
// capacity poll runs every 100µs, so that is their resolution. Besides
// ns/op they report the median, p90 and maximum in ms.

const benchPoll = 100 * time.Microsecond

func reportLatencies(b *testing.B, name string, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	b.ReportMetric(ms(sum/time.Duration(len(s))), "ms-mean")
	b.ReportMetric(ms(percentile(s, 0.5)), "ms-p50")
	b.ReportMetric(ms(percentile(s, 0.9)), "ms-p90")
	b.ReportMetric(ms(s[len(s)-1]), "ms-max")
	b.Logf("%s over %d runs: p50 %v, p90 %v, max %v", name, len(s),
		percentile(s, 0.5).Round(time.Microsecond), percentile(s, 0.9).Round(time.Microsecond), s[len(s)-1].Round(time.Microsecond))
}

// BenchmarkKubeletRestartReRegistration: a running gpulet (dgx-h100 sim),
// the kubelet's device manager stopped and a new one started on the same
// folder; timed from the new manager's Start to nvidia.com/gpu 8/8 in its
// capacity/allocatable.
func BenchmarkKubeletRestartReRegistration(b *testing.B) {
	requireNode(b)
	for _, bc := range []struct {
		name  string
		crash bool
	}{
		{"graceful_stop", false},
		{"crash_leaves_kubelet_sock", true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			kubeletLogsOnFailure(b)
			freshNode(b)
			startGpulet(b, b, "dgx-h100", b.TempDir())
			k := startKubelet(b, b, nil)
			k.mustCapacity(b, 8, 8, 10*time.Second)
			var ds []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				k.stop()
				if bc.crash {
					staleSocket(b, pluginapi.KubeletSocket)
				}
				// A real kubelet is down for a while; let gpulet notice.
				time.Sleep(kubeletDowntime)
				b.StartTimer()
				k = startKubelet(b, b, k.pods)
				d, err := k.waitCapacity(k.started, 8, 8, 10*time.Second, benchPoll)
				if err != nil {
					b.Fatalf("run %d: %v", i, err)
				}
				ds = append(ds, d)
			}
			b.StopTimer()
			reportLatencies(b, "kubelet restart -> gpulet capacity 8/8", ds)
		})
	}
}

// BenchmarkGpuletStartToCapacity: a running device manager; timed from
// starting the `gpulet run` process (dgx-h100 sim) to nvidia.com/gpu 8/8 in
// the kubelet's capacity/allocatable. Each run ends gpulet with SIGTERM and
// waits for the kubelet to see it gone (untimed).
func BenchmarkGpuletStartToCapacity(b *testing.B) {
	requireNode(b)
	kubeletLogsOnFailure(b)
	freshNode(b)
	simRoot := b.TempDir()
	k := startKubelet(b, b, nil)
	var ds []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		g := startGpulet(b, b, "dgx-h100", simRoot)
		d, err := k.waitCapacity(g.started, 8, 8, 10*time.Second, benchPoll)
		if err != nil {
			b.Fatalf("run %d: %v", i, err)
		}
		ds = append(ds, d)
		b.StopTimer()
		if err := g.signal(syscall.SIGTERM, 10*time.Second); err != nil {
			b.Fatal(err)
		}
		if _, err := k.waitCapacity(time.Now(), 8, 0, 10*time.Second, time.Millisecond); err != nil {
			b.Fatalf("run %d, after SIGTERM: %v", i, err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	reportLatencies(b, "gpulet process start -> capacity 8/8", ds)
}
