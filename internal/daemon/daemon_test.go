package daemon

import (
	"context"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/allocator"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// TestPlacementForAppliesThePolicy: the configured policy reaches the placer
// each server builds. GPU0 of pcie-4x-l4 has one of its four replicas in
// use: packed goes there, distributed anywhere else.
func TestPlacementForAppliesThePolicy(t *testing.T) {
	p, err := sim.LoadProfile("pcie-4x-l4")
	if err != nil {
		t.Fatal(err)
	}
	node, err := p.Node()
	if err != nil {
		t.Fatal(err)
	}
	res := resources.Build(inventory.NewStore(node).Snapshot(), resources.Config{Replicas: 4})[0]
	var avail []string
	for _, d := range res.Devices {
		if d.ID != node.GPUs[0].UUID+resources.ReplicaSep+"0" {
			avail = append(avail, d.ID)
		}
	}
	for _, tc := range []struct {
		policy allocator.Policy
		onGPU0 bool
	}{{allocator.PolicyPacked, true}, {allocator.PolicyDistributed, false}} {
		placer, err := PlacementFor(tc.policy)(&res)
		if err != nil {
			t.Fatal(err)
		}
		got, err := placer.Preferred(context.Background(), avail, nil, 1)
		if err != nil {
			t.Fatal(err)
		}
		if on := strings.HasPrefix(got[0], node.GPUs[0].UUID); on != tc.onGPU0 {
			t.Errorf("%s: got %v, on GPU0 %v, want %v", tc.policy, got, on, tc.onGPU0)
		}
	}
}
