package dra

import (
	"context"
	"testing"
	"time"

	k8stesting "k8s.io/client-go/testing"

	"github.com/gpulet/gpulet/internal/waittest"
)

// Prepare and Unprepare of a dynamic MIG claim (3g.71gb on a simulated
// H200) as the kubelet calls them: the record saved, MIG mode turned on
// (and off after, with MIGWholeWhenIdle), the instance created in the
// simulator (its state file and caps nodes), the CDI spec written; then
// the instance destroyed. The simulator's create is a file write: NVML's
// takes the driver's time (seconds on real GPUs, not measured here).
func BenchmarkPrepareDynamicMIG(b *testing.B) {
	for _, bc := range []struct {
		name  string
		whole bool
	}{{"MIGModeStaysOn", false}, {"WholeWhenIdle", true}} {
		b.Run(bc.name, func(b *testing.B) {
			r := newDynRig(b, "h200")
			r.stop()
			r.opts.MIGWholeWhenIdle = bc.whole
			r.start()
			benchPrepareUnprepare(b, r, r.claim("bench", "gpu-0-mig-3g71gb-9-4"))
		})
	}
}

// sliceWrites counts the ResourceSlice creates, updates and deletes the
// fake API server has seen.
func sliceWrites(r *rig) int {
	n := 0
	for _, a := range r.client.Actions() {
		if a.GetResource().Resource != "resourceslices" {
			continue
		}
		switch a.(type) {
		case k8stesting.CreateAction, k8stesting.UpdateAction, k8stesting.DeleteAction, k8stesting.PatchAction:
			n++
		}
	}
	return n
}

// Claims cost no ResourceSlice write: the published devices stand for
// placements, not instances, so preparing and unpreparing ten dynamic MIG
// claims (instances created and destroyed, MIG mode on and off) leaves the
// slices as they were, even when a publish is forced after each.
func TestDynamicMIGSliceWritesPerClaim(t *testing.T) {
	r := newDynRig(t, "h200")
	waittest.Until(t, 10*time.Second, "26 devices and a counter set published", func() bool {
		return len(publishedNames(t, r.client)) == 26
	})
	before := sliceWrites(r)
	for i := range 10 {
		c := r.claim("w"+string(rune('a'+i)), "gpu-0-mig-1g18gb-19-"+string(rune('0'+i%7)))
		if _, msg := r.prepare(c); msg != "" {
			t.Fatal(msg)
		}
		if err := r.driver.publish(context.Background()); err != nil {
			t.Fatal(err)
		}
		if msg := r.unprepare(c); msg != "" {
			t.Fatal(msg)
		}
		if err := r.driver.publish(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if after := sliceWrites(r); after != before {
		t.Fatalf("%d ResourceSlice writes for 10 claims", after-before)
	}
	t.Logf("ResourceSlice writes: %d to publish the pool, 0 for 10 dynamic MIG claims", before)
}
