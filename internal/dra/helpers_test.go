package dra

import (
	"testing"

	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
)

// migProfile is an A100 node with MIG on both GPUs (7 × 1g.5gb each),
// with NVML's instance attributes.
const migProfile = `name: mig-a100
driverVersion: 535.104.05
cudaDriverVersion: "12.2"
template:
  name: NVIDIA A100-SXM4-40GB
  architecture: Ampere
  memoryMiB: 40960
  computeCapability: "8.0"
  mig: {profile: 1g.5gb, count: 7, memoryMiB: 4864,
        attributes: {multiprocessors: 14, giSlices: 1, ciSlices: 1, copyEngines: 1, decoders: 0, encoders: 0, jpegs: 0, ofas: 0}}
count: 2
numaNodes: [0, 1]
nvlinks:
  - [0, 12]
  - [12, 0]
`

// simNode returns a simulated node (a built-in profile name, or profile
// YAML) with its device nodes and MIG minors under a temporary folder, and
// the simulator's MIG minors file.
func simNode(t testing.TB, profile string) (*inventory.Node, string) {
	t.Helper()
	b, node := simtest.Backend(t, profile)
	return node, b.MIGMinorsPath()
}
