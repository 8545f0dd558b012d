package allocator

import (
	"fmt"

	"github.com/gpulet/gpulet/internal/resources"
)

// ForResource is the placer of one resource's device list: the topology of
// its devices over the node's links, answering with policy for shared
// devices (replicas, MIG instances). PolicyTopology places by links alone.
func ForResource(res *resources.Resource, policy Policy) (*Topology, error) {
	devs := make([]Device, len(res.Devices))
	for i, d := range res.Devices {
		devs[i] = Device{ID: d.ID, GPU: d.GPU, NUMA: d.NUMA}
	}
	topo, err := NewTopology(res.Links, devs)
	if err != nil {
		return nil, fmt.Errorf("placement for %s: %w", res.Name, err)
	}
	return topo.WithPolicy(policy)
}
