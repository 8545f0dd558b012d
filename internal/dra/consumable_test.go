package dra

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"

	"github.com/gpulet/gpulet/internal/inventory"
)

type classes []*resourceapi.DeviceClass

func (c classes) List() ([]*resourceapi.DeviceClass, error) { return c, nil }
func (c classes) Get(name string) (*resourceapi.DeviceClass, error) {
	for _, dc := range c {
		if dc.Name == name {
			return dc, nil
		}
	}
	return nil, fmt.Errorf("no class %s", name)
}

// With consumable capacity on, the scheduler's own allocator (structured,
// as kube-scheduler runs it) puts two claims of 10Gi each on one 80 GiB
// GPU, and a third that would exceed its memory does not fit there; the
// driver prepares both shares.
func TestConsumableCapacityShares(t *testing.T) {
	r := newRig(t, "dgx-h100")
	r.stop()
	r.opts.Devices.ConsumableCapacity = true
	r.start()
	gpu0 := r.node.GPUs[0]
	devs := Devices(inventory.NewStore(r.node).Snapshot(), r.opts.Devices)
	if a := devs[0].AllowMultipleAllocations; a == nil || !*a || devs[0].Capacity["memory"].RequestPolicy == nil {
		t.Fatalf("gpu-0 not published for several claims: %+v", devs[0])
	}
	node := testNode
	slice := &resourceapi.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: "s"}, Spec: resourceapi.ResourceSliceSpec{
		Driver: DriverName, NodeName: &node, Pool: resourceapi.ResourcePool{Name: testNode, ResourceSliceCount: 1, Generation: 1}, Devices: devs}}
	class := &resourceapi.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: "gpu.nvidia.com"}, Spec: resourceapi.DeviceClassSpec{
		Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"}}}}}
	claim := func(name, mem string) *resourceapi.ResourceClaim {
		return &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-" + name)},
			Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
				DeviceClassName: "gpu.nvidia.com", AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1, // the API server's defaults
				Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: "device.attributes['gpu.nvidia.com'].uuid == '" + gpu0.UUID + "'"}}},
				Capacity:  &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{"memory": resource.MustParse(mem)}},
			}}}}}}
	}
	state := structured.AllocatedState{
		AllocatedDevices: sets.New[structured.DeviceID](), AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity: structured.NewConsumedCapacityCollection(),
	}
	allocate := func(claims ...*resourceapi.ResourceClaim) ([]resourceapi.AllocationResult, error) {
		a, err := structured.NewAllocator(context.Background(), structured.Features{ConsumableCapacity: true}, state,
			classes{class}, []*resourceapi.ResourceSlice{slice}, cel.NewCache(10, cel.Features{EnableConsumableCapacity: true}))
		if err != nil {
			t.Fatal(err)
		}
		return a.Allocate(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}}, claims)
	}

	one, two := claim("one", "10Gi"), claim("two", "10Gi")
	res, err := allocate(one, two)
	if err != nil || len(res) != 2 {
		t.Fatalf("two 10Gi claims on one 80 GiB GPU: %v, %d results", err, len(res))
	}
	for i, c := range []*resourceapi.ResourceClaim{one, two} {
		rr := res[i].Devices.Results[0]
		if m := rr.ConsumedCapacity["memory"]; rr.Device != "gpu-0" || rr.ShareID == nil || m.Cmp(resource.MustParse("10Gi")) != 0 {
			t.Fatalf("claim %s: %+v, want a 10Gi share of gpu-0", c.Name, rr)
		}
		id := structured.MakeDeviceID(rr.Driver, rr.Pool, rr.Device)
		state.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, rr.ShareID))
		state.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, rr.ConsumedCapacity))
		// The driver prepares each share (the kubelet gets its share ID).
		c.Status.Allocation = &res[i]
		if _, err := r.client.ResourceV1().ResourceClaims("default").Create(context.Background(), c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if ids, msg := r.prepare(c); msg != "" || len(ids) != 1 {
			t.Fatalf("prepare %s: %v %q", c.Name, ids, msg)
		}
	}
	if res, err := allocate(claim("three", "70Gi")); err == nil && len(res) > 0 {
		t.Fatalf("a 70Gi claim fit beside two 10Gi claims on an 80 GiB GPU: %+v", res)
	}
	if res, err := allocate(claim("four", "50Gi")); err != nil || len(res) != 1 {
		t.Fatalf("a 50Gi claim beside two 10Gi claims: %v %d", err, len(res))
	}
	// A claim holding gpu-0 whole is refused at Prepare while shares hold it.
	if _, msg := r.prepare(r.claim("whole", "gpu-0")); msg == "" {
		t.Error("gpu-0 prepared whole while two claims hold shares")
	}
}
