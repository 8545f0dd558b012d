package dra

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/gpulet/gpulet/internal/inventory"
)

func reportPercentiles(b *testing.B, name string, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), name+"-p50-µs")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), name+"-p99-µs")
}

// Prepare and Unprepare of a one-GPU claim as the kubelet calls them: gRPC
// over the unix socket, the helper's claim lookup (fake API server), the
// CDI spec written and removed, the checkpoint saved each time.
func BenchmarkPrepareUnprepareGRPC(b *testing.B) {
	r := newRig(b, "dgx-h100")
	benchPrepareUnprepare(b, r, r.claim("bench", "gpu-4"))
}

// benchPrepareUnprepare prepares and unprepares c, as the kubelet calls
// them, once per iteration, and reports the percentiles of each.
func benchPrepareUnprepare(b *testing.B, r *rig, c *resourceapi.ResourceClaim) {
	var prep, unprep []time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if _, msg := r.prepare(c); msg != "" {
			b.Fatal(msg)
		}
		t1 := time.Now()
		if msg := r.unprepare(c); msg != "" {
			b.Fatal(msg)
		}
		prep, unprep = append(prep, t1.Sub(t0)), append(unprep, time.Since(t1))
	}
	reportPercentiles(b, "prepare", prep)
	reportPercentiles(b, "unprepare", unprep)
}

// From Start to the API server holding the node's slice with all eight
// GPUs of a dgx-h100 (fake API server: no network, no admission).
func BenchmarkStartToSlicesPublished(b *testing.B) {
	r := newRig(b, "dgx-h100")
	r.stop()
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		r.client = fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode, UID: "node-uid"}})
		r.opts.Client = r.client
		b.StartTimer()
		t0 := time.Now()
		r.start()
		for {
			list, err := r.client.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
			if err != nil {
				b.Fatal(err)
			}
			if len(list.Items) == 1 && len(list.Items[0].Spec.Devices) == 8 {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
		lat = append(lat, time.Since(t0))
		b.StopTimer()
		r.stop()
		b.StartTimer()
	}
	reportPercentiles(b, "publish", lat)
}

// Prepare of a one-GPU claim carrying NVIDIA's GpuConfig, as the kubelet
// calls it, on the simulator's compute policy and MPS stand-ins (file
// writes, no nvidia-smi or MPS binary): TimeSlicing Long (compute mode and
// interval set) and MPS (a control daemon for the claim, 50 % threads,
// 10Gi pinned); Unprepare, which undoes it, is not timed.
func BenchmarkPrepareWithConfig(b *testing.B) {
	const hdr = "apiVersion: resource.nvidia.com/v1beta1\nkind: GpuConfig\n"
	for _, bc := range []struct{ name, params string }{
		{"TimeSlicing", hdr + "sharing: {strategy: TimeSlicing, timeSlicingConfig: {interval: Long}}"},
		{"MPS", hdr + "sharing: {strategy: MPS, mpsConfig: {defaultActiveThreadPercentage: 50, defaultPinnedDeviceMemoryLimit: 10Gi}}"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r := newRig(b, "dgx-h100")
			c := r.claim("cfg", "gpu-4")
			c.Status.Allocation.Devices.Config = []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, bc.params)}
			if _, err := r.client.ResourceV1().ResourceClaims("default").UpdateStatus(context.Background(), c, metav1.UpdateOptions{}); err != nil {
				b.Fatal(err)
			}
			var prep []time.Duration
			b.ResetTimer()
			for b.Loop() {
				t0 := time.Now()
				_, msg := r.prepare(c)
				prep = append(prep, time.Since(t0))
				if msg != "" {
					b.Fatalf("prepare: %q", msg)
				}
				b.StopTimer()
				if msg := r.unprepare(c); msg != "" {
					b.Fatal(msg)
				}
				b.StartTimer()
			}
			reportPercentiles(b, "prepare", prep)
		})
	}
}

// From a fault recorded in the inventory to the device's taint in the
// (fake) API server's ResourceSlice.
func BenchmarkFaultToTaint(b *testing.B) {
	r := newRig(b, "dgx-h100")
	sliceDevices(b, r.client, gpuNames(8))
	uuid := r.node.GPUs[6].UUID
	tainted := func() bool {
		list, err := r.client.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range list.Items {
			for _, d := range s.Spec.Devices {
				if d.Name == "gpu-6" {
					return len(d.Taints) > 0
				}
			}
		}
		return false
	}
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		r.store.SetHealth(uuid, inventory.Health{Reason: "XID 48", XID: 48, Since: t0})
		for !tainted() {
			time.Sleep(100 * time.Microsecond)
		}
		lat = append(lat, time.Since(t0))
		b.StopTimer()
		r.store.SetHealth(uuid, inventory.Health{Healthy: true})
		for tainted() {
			time.Sleep(100 * time.Microsecond)
		}
		b.StartTimer()
	}
	reportPercentiles(b, "taint", lat)
}
