package plugin

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// reportPercentiles adds p50/p99 of the samples to the benchmark output.
func reportPercentiles(b *testing.B, samples []time.Duration) {
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	at := func(q float64) float64 {
		return float64(samples[int(q*float64(len(samples)-1))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(at(0.50), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
}

// BenchmarkAllocate measures Allocate over gRPC on a unix socket, as the
// kubelet calls it, with 8 advertised devices (dgx-h100) and 1024 (8 GPUs
// time-sliced 128 ways), every device-list strategy on and device specs passed.
func BenchmarkAllocate(b *testing.B) {
	for _, tc := range []struct {
		devices  int
		replicas int
	}{{8, 0}, {1024, 128}} {
		b.Run(fmt.Sprintf("devices=%d", tc.devices), func(b *testing.B) {
			node := simtest.Node(b, "dgx-h100")
			h := startHarness(b, node, Options{
				DeviceListStrategies: []string{StrategyEnvvar, StrategyCDIAnnotations, StrategyCDICRI},
				PassDeviceSpecs:      true,
			}, resources.Config{Replicas: tc.replicas})
			reg := h.kubelet.waitRegistration(b, 5*time.Second)
			client := dial(b, h.dir, reg.Endpoint)
			list := resources.Build(h.store.Snapshot(), resources.Config{Replicas: tc.replicas})[0]
			if len(list.Devices) != tc.devices {
				b.Fatalf("%d devices", len(list.Devices))
			}
			samples := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id := list.Devices[i%len(list.Devices)].ID
				start := time.Now()
				_, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{
					ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{id}}},
				})
				samples = append(samples, time.Since(start))
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportPercentiles(b, samples)
		})
	}
}

// BenchmarkListAndWatchUpdate measures the time from a health change in the
// inventory to the kubelet's stream receiving the new device list.
func BenchmarkListAndWatchUpdate(b *testing.B) {
	node := simtest.Node(b, "dgx-h100")
	h := startHarness(b, node, Options{}, resources.Config{})
	reg := h.kubelet.waitRegistration(b, 5*time.Second)
	stream, err := dial(b, h.dir, reg.Endpoint).ListAndWatch(context.Background(), &pluginapi.Empty{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		b.Fatal(err)
	}
	u := node.GPUs[3].UUID
	samples := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		healthy := i%2 == 1
		start := time.Now()
		h.store.SetHealth(u, inventory.Health{Healthy: healthy, Reason: "bench"})
		for {
			resp, err := stream.Recv()
			if err != nil {
				b.Fatal(err)
			}
			if devHealth(resp, u) == (healthy) {
				break
			}
		}
		samples = append(samples, time.Since(start))
	}
	b.StopTimer()
	reportPercentiles(b, samples)
}

func devHealth(resp *pluginapi.ListAndWatchResponse, id string) bool {
	for _, d := range resp.Devices {
		if d.ID == id {
			return d.Health == pluginapi.Healthy
		}
	}
	return false
}

// BenchmarkReRegisterAfterKubeletRestart measures the time from a new
// kubelet.sock appearing to gpulet's registration arriving on it.
func BenchmarkReRegisterAfterKubeletRestart(b *testing.B) {
	h := startHarness(b, simtest.Node(b, "dgx-h100"), Options{Poll: time.Hour}, resources.Config{})
	h.kubelet.waitRegistration(b, 5*time.Second)
	k := h.kubelet
	samples := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		k.stop()
		time.Sleep(time.Millisecond)
		b.StartTimer()
		start := time.Now()
		k = startKubelet(b, h.dir)
		k.waitRegistration(b, 5*time.Second)
		samples = append(samples, time.Since(start))
	}
	b.StopTimer()
	reportPercentiles(b, samples)
}
