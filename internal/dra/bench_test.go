package dra

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
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
	c := r.claim("bench", "gpu-4")
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
