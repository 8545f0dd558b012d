package dra

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
)

// newDynRig is newRig with every GPU given to dynamic MIG on the
// simulator, MIG mode turned off when a GPU's last instance goes.
func newDynRig(t testing.TB, profile string) *rig {
	t.Helper()
	r := newRig(t, profile)
	r.stop()
	generateNames(r.client)
	r.opts.MIG = r.sim
	r.opts.DynamicMIG = func(inventory.GPU) bool { return true }
	r.opts.MIGWholeWhenIdle = true
	r.start()
	return r
}

// generateNames makes the fake API server name created objects from their
// generateName, as the real one does: a pool of several slices (counter
// sets apart from devices) needs it.
func generateNames(c *fake.Clientset) {
	var n atomic.Int64
	c.PrependReactor("create", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		o := a.(k8stesting.CreateAction).GetObject()
		if m, ok := o.(metav1.Object); ok && m.GetName() == "" && m.GetGenerateName() != "" {
			m.SetName(m.GetGenerateName() + strconv.FormatInt(n.Add(1), 36))
		}
		return false, nil, nil
	})
}

// instances are the simulated GPU's live MIG instances.
func (r *rig) instances(gpu int) []hardware.MIGInstance {
	r.t.Helper()
	ins, err := r.sim.MIGInstances(context.Background(), r.node.GPUs[gpu].UUID)
	if err != nil {
		r.t.Fatal(err)
	}
	return ins
}

func (r *rig) migMode(gpu int) bool {
	r.t.Helper()
	on, err := r.sim.MIGMode(context.Background(), r.node.GPUs[gpu].UUID)
	if err != nil {
		r.t.Fatal(err)
	}
	return on
}

// capsNodes are the caps nodes CDI should hand a container for GI/CI.
func (r *rig) capsNodes(gi, ci int) []string {
	r.t.Helper()
	f, err := os.Open(r.sim.MIGMinorsPath())
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	m, err := cdispec.ParseMIGMinors(f)
	if err != nil {
		r.t.Fatal(err)
	}
	caps, err := m.CapNodes(r.node.GPUs[0].Minor, gi, ci)
	if err != nil {
		r.t.Fatal(err)
	}
	return caps
}

// A 3g.71gb and a 2g.35gb claim on one H200: MIG mode goes on, each gets
// its instance with its caps nodes in its CDI spec; the whole GPU and an
// overlapping placement are refused while they hold it; a restart changes
// nothing for them; after both end the instances are gone, MIG mode is
// off, and a whole-GPU claim gets the GPU.
func TestDynamicMIGPrepareUnprepare(t *testing.T) {
	r := newDynRig(t, "h200")
	big := r.claim("big", "gpu-0-mig-3g71gb-9-4")
	small := r.claim("small", "gpu-0-mig-2g35gb-14-0")
	for _, c := range []*resourceapi.ResourceClaim{big, small} {
		ids, msg := r.prepare(c)
		if msg != "" || len(ids) != 1 {
			t.Fatalf("prepare %s: %v %q", c.Name, ids, msg)
		}
	}
	if !r.migMode(0) || len(r.instances(0)) != 2 {
		t.Fatalf("MIG mode %v, instances %+v", r.migMode(0), r.instances(0))
	}
	rec := r.recorded().Claims[string(big.UID)].Devices[0]
	if rec.MIG == nil || rec.MIG.Made == nil || rec.UUID == "" || rec.UUID != rec.MIG.Made.UUID || rec.MIG.Start != 4 {
		t.Fatalf("record of the 3g claim: %+v", rec)
	}
	spec, err := os.ReadFile(r.specPath(big))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range r.capsNodes(rec.MIG.Made.GI, rec.MIG.Made.CI) {
		if !strings.Contains(string(spec), "/dev/"+c) {
			t.Errorf("3g spec lacks caps node %s:\n%s", c, spec)
		}
		if !exists(filepath.Join(r.node.DevRoot, c)) {
			t.Errorf("caps node %s not on the host", c)
		}
	}

	whole := r.claim("whole", "gpu-0")
	if _, msg := r.prepare(whole); !strings.Contains(msg, "already prepared") {
		t.Fatalf("whole GPU while partitions run: %q", msg)
	}
	if _, msg := r.prepare(r.claim("overlap", "gpu-0-mig-1g18gb-19-5")); !strings.Contains(msg, "already prepared for claim uid-big") {
		t.Fatalf("overlapping placement: %q", msg)
	}

	r.stop()
	r.start()
	if n := len(r.instances(0)); n != 2 {
		t.Fatalf("a restart left %d instances", n)
	}
	if ids, msg := r.prepare(big); msg != "" || len(ids) != 1 {
		t.Fatalf("prepare again after restart: %v %q", ids, msg)
	}

	if msg := r.unprepare(big); msg != "" {
		t.Fatal(msg)
	}
	if ins := r.instances(0); len(ins) != 1 || ins[0].Start != 0 || !r.migMode(0) {
		t.Fatalf("after the 3g ended: %+v, MIG mode %v", ins, r.migMode(0))
	}
	if msg := r.unprepare(small); msg != "" {
		t.Fatal(msg)
	}
	if len(r.instances(0)) != 0 || r.migMode(0) {
		t.Fatalf("after both ended: %+v, MIG mode %v", r.instances(0), r.migMode(0))
	}
	if ids, msg := r.prepare(whole); msg != "" || len(ids) != 1 {
		t.Fatalf("whole GPU after both ended: %v %q", ids, msg)
	}
	if r.migMode(0) {
		t.Fatal("MIG mode on under a whole-GPU claim")
	}
}

// A whole-GPU claim on a dynamic GPU left in MIG mode (not returned to
// whole) turns MIG mode off; one with an instance nobody holds is refused.
func TestDynamicMIGWholeGPU(t *testing.T) {
	r := newDynRig(t, "h200")
	ctx := context.Background()
	uuid := r.node.GPUs[0].UUID
	if err := r.sim.SetMIGMode(ctx, uuid, true); err != nil {
		t.Fatal(err)
	}
	c := r.claim("whole", "gpu-0")
	if ids, msg := r.prepare(c); msg != "" || len(ids) != 1 || r.migMode(0) {
		t.Fatalf("whole GPU from MIG mode: %v %q, MIG mode %v", ids, msg, r.migMode(0))
	}
	if msg := r.unprepare(c); msg != "" {
		t.Fatal(msg)
	}
	r.sim.SetMIGMode(ctx, uuid, true)
	if _, err := r.sim.CreateMIGInstance(ctx, uuid, 19, 0); err != nil {
		t.Fatal(err)
	}
	if _, msg := r.prepare(r.claim("whole2", "gpu-0")); !strings.Contains(msg, "MIG instances that no claim holds") {
		t.Fatalf("whole GPU over a stray instance: %q", msg)
	}
}

// A kill at each step of a dynamic MIG Prepare and Unprepare, then a
// restart: the instance exists exactly when a completed record holds it
// (no orphan, none destroyed under a running claim), and the kubelet's
// retries finish the job with nothing left.
func TestDynamicMIGKillAtEachStep(t *testing.T) {
	for _, tc := range []struct {
		step     string
		prepared bool
	}{
		{stepPrepareStarted, false},
		{stepPrepareInstances, false},
		{stepPrepareSpecs, false},
		{stepPrepareCompleted, true},
		{stepUnprepareStarted, false},
		{stepUnprepareInstances, false},
		{stepUnprepareSpecs, false},
		{stepUnprepareComplete, false},
	} {
		t.Run(tc.step, func(t *testing.T) {
			r := newDynRig(t, "h200")
			c := r.claim("victim", "gpu-0-mig-3g71gb-9-0")
			unprep := strings.HasPrefix(tc.step, "unprepare")
			if unprep {
				if _, msg := r.prepare(c); msg != "" {
					t.Fatal(msg)
				}
			}
			r.driver.mu.Lock()
			r.driver.crashAt = func(s string) bool { return s == tc.step }
			r.driver.mu.Unlock()
			if unprep {
				if msg := r.unprepare(c); msg == "" && tc.step != stepUnprepareComplete {
					t.Fatal("the killed unprepare answered success")
				}
			} else if ids, msg := r.prepare(c); msg == "" {
				t.Fatalf("the killed prepare answered %v", ids)
			}
			r.stop()
			r.start()

			rec, ok := r.recorded().Claims[string(c.UID)]
			ins := r.instances(0)
			if tc.prepared {
				if !ok || rec.State != statePrepareCompleted || len(ins) != 1 || ins[0].UUID != rec.Devices[0].UUID {
					t.Fatalf("after restart: record %v (%+v), instances %+v; want the claim's instance kept", ok, rec, ins)
				}
			} else if ok || len(ins) != 0 || exists(r.specPath(c)) || r.migMode(0) {
				t.Fatalf("after restart: record %v, instances %+v, spec %v, MIG mode %v; want all gone", ok, ins, exists(r.specPath(c)), r.migMode(0))
			}
			if !unprep {
				if ids, msg := r.prepare(c); msg != "" || len(ids) != 1 {
					t.Fatalf("retried prepare: %v %q", ids, msg)
				}
				if n := len(r.instances(0)); n != 1 {
					t.Fatalf("%d instances after the retried prepare", n)
				}
			}
			if msg := r.unprepare(c); msg != "" {
				t.Fatal(msg)
			}
			if len(r.instances(0)) != 0 || len(r.recorded().Claims) != 0 || r.migMode(0) {
				t.Fatalf("after unprepare: instances %+v, records %v, MIG mode %v", r.instances(0), r.recorded().Claims, r.migMode(0))
			}
		})
	}
}

// At start, an instance on a dynamic GPU that no record holds (a crash
// between create and save, or anyone's) is destroyed; a running claim's
// is not.
func TestDynamicMIGOrphanSweep(t *testing.T) {
	r := newDynRig(t, "h200")
	ctx := context.Background()
	keep := r.claim("keep", "gpu-0-mig-2g35gb-14-0")
	if _, msg := r.prepare(keep); msg != "" {
		t.Fatal(msg)
	}
	uuid := r.node.GPUs[0].UUID
	if _, err := r.sim.CreateMIGInstance(ctx, uuid, 9, 4); err != nil {
		t.Fatal(err)
	}
	r.stop()
	r.start()
	ins := r.instances(0)
	if len(ins) != 1 || ins[0].Start != 0 || ins[0].UUID != r.recorded().Claims[string(keep.UID)].Devices[0].UUID {
		t.Fatalf("after start: %+v; want only the claim's 2g", ins)
	}
}

// A claim that asks to share a dynamic MIG device is refused before
// anything is created.
func TestDynamicMIGNoSharing(t *testing.T) {
	r := newDynRig(t, "h200")
	c := r.claim("mps", "gpu-0-mig-1g18gb-19-6")
	c.Status.Allocation.Devices.Config = []resourceapi.DeviceAllocationConfiguration{
		opaque(DriverName, "apiVersion: resource.nvidia.com/v1beta1\nkind: MigDeviceConfig\nsharing: {strategy: MPS}\n"),
	}
	if _, err := r.client.ResourceV1().ResourceClaims("default").Update(context.Background(), c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, msg := r.prepare(c); !strings.Contains(msg, "not supported on dynamically created MIG devices") {
		t.Fatalf("MPS on a dynamic MIG device: %q", msg)
	}
	if len(r.instances(0)) != 0 {
		t.Fatal("an instance was created for a refused claim")
	}
}

// On an A100 in MIG mode, the last instance's end leaves MIG mode on: it
// could only be switched back with a GPU reset.
func TestDynamicMIGAmpereKeepsMIGMode(t *testing.T) {
	r := newRig(t, a100Dyn)
	r.stop()
	if err := r.sim.SetMIGMode(context.Background(), r.node.GPUs[0].UUID, true); err != nil {
		t.Fatal(err)
	}
	node, err := r.sim.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r.store.SetNode(node)
	r.node = node
	generateNames(r.client)
	r.opts.MIG = r.sim
	r.opts.DynamicMIG = func(inventory.GPU) bool { return true }
	r.opts.MIGWholeWhenIdle = true
	r.start()
	c := r.claim("a", "gpu-0-mig-3g20gb-9-4")
	if _, msg := r.prepare(c); msg != "" {
		t.Fatal(msg)
	}
	if msg := r.unprepare(c); msg != "" {
		t.Fatal(msg)
	}
	if len(r.instances(0)) != 0 || !r.migMode(0) {
		t.Fatalf("after the claim: instances %+v, MIG mode %v; want none, on", r.instances(0), r.migMode(0))
	}
}
