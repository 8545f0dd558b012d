package sim

import (
	"strings"

	"github.com/gpulet/gpulet/internal/hardware"
)

// MIG profile tables of the GPUs the simulator can cut dynamically. The
// profiles, their IDs, compute and memory slices, engines (SMs, copy
// engines, NVDEC, NVENC, NVJPG, OFA), instance limits and placements are
// those NVIDIA's MIG user guide lists for each product and nvidia-smi
// (mig -lgip, -lgipp) reports; memory sizes are in MiB as NVML reports them,
// chosen so NVML's naming rule (inventory.MIGMemoryGB) gives the guide's
// names on the GPU's memory. The eight memory slices and seven compute
// slices are the hardware's: a placement is a first memory slice, and a
// profile of N memory slices covers [start, start+N).
type migTable struct {
	// product matches nvidia-smi's product name (NVML's GetName).
	product  func(name string, memMiB uint64) bool
	profiles []hardware.MIGProfile
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// migProfile builds a table row: ID, name, compute and memory slices,
// memory, SMs, copy engines, decoders, encoders, JPEG, OFA, placements.
func migRow(id int, name string, c, m int, memMiB uint64, sm, ce, dec, enc, jpeg, ofa int, placements []int) hardware.MIGProfile {
	return hardware.MIGProfile{Name: name, ID: id, ComputeSlices: c, MemorySlices: m, MemoryBytes: memMiB << 20,
		Multiprocessors: sm, CopyEngines: ce, Decoders: dec, Encoders: enc, JPEGs: jpeg, OFAs: ofa, Placements: placements}
}

var migTables = []migTable{
	{ // A100-SXM4-40GB: 108 SMs, of which MIG uses 98.
		product: func(name string, mem uint64) bool { return strings.Contains(name, "A100") && mem < 60<<10 },
		profiles: []hardware.MIGProfile{
			migRow(19, "1g.5gb", 1, 1, 4864, 14, 1, 0, 0, 0, 0, seq(7)),
			migRow(20, "1g.5gb+me", 1, 1, 4864, 14, 1, 1, 0, 1, 1, seq(7)),
			migRow(15, "1g.10gb", 1, 2, 9856, 14, 1, 1, 0, 0, 0, []int{0, 2, 4, 6}),
			migRow(14, "2g.10gb", 2, 2, 9856, 28, 2, 1, 0, 0, 0, []int{0, 2, 4}),
			migRow(9, "3g.20gb", 3, 4, 19968, 42, 3, 2, 0, 0, 0, []int{0, 4}),
			migRow(5, "4g.20gb", 4, 4, 19968, 56, 4, 2, 0, 0, 0, []int{0}),
			migRow(0, "7g.40gb", 7, 8, 40192, 98, 7, 5, 0, 1, 1, []int{0}),
		},
	},
	{ // H100 80GB (SXM5, HBM3): 132 SMs.
		product: func(name string, mem uint64) bool {
			return strings.Contains(name, "H100") && mem > 60<<10 && mem < 100<<10
		},
		profiles: []hardware.MIGProfile{
			migRow(19, "1g.10gb", 1, 1, 9984, 16, 1, 1, 0, 1, 0, seq(7)),
			migRow(20, "1g.10gb+me", 1, 1, 9984, 16, 1, 1, 0, 1, 1, seq(7)),
			migRow(15, "1g.20gb", 1, 2, 19968, 26, 1, 1, 0, 1, 0, []int{0, 2, 4, 6}),
			migRow(14, "2g.20gb", 2, 2, 19968, 32, 2, 2, 0, 2, 0, []int{0, 2, 4}),
			migRow(9, "3g.40gb", 3, 4, 40192, 60, 3, 3, 0, 3, 0, []int{0, 4}),
			migRow(5, "4g.40gb", 4, 4, 40192, 64, 4, 4, 0, 4, 0, []int{0}),
			migRow(0, "7g.80gb", 7, 8, 80896, 132, 8, 7, 0, 7, 1, []int{0}),
		},
	},
	{ // H200 141GB (HBM3e): 132 SMs, the H100's slices with more memory.
		product: func(name string, mem uint64) bool { return strings.Contains(name, "H200") && mem > 130<<10 },
		profiles: []hardware.MIGProfile{
			migRow(19, "1g.18gb", 1, 1, 16896, 16, 1, 1, 0, 1, 0, seq(7)),
			migRow(20, "1g.18gb+me", 1, 1, 16896, 16, 1, 1, 0, 1, 1, seq(7)),
			migRow(15, "1g.35gb", 1, 2, 33280, 26, 1, 1, 0, 1, 0, []int{0, 2, 4, 6}),
			migRow(14, "2g.35gb", 2, 2, 33280, 32, 2, 2, 0, 2, 0, []int{0, 2, 4}),
			migRow(9, "3g.71gb", 3, 4, 71424, 60, 3, 3, 0, 3, 0, []int{0, 4}),
			migRow(5, "4g.71gb", 4, 4, 71424, 64, 4, 4, 0, 4, 0, []int{0}),
			migRow(0, "7g.141gb", 7, 8, 142848, 132, 8, 7, 0, 7, 1, []int{0}),
		},
	},
}

// migTableFor returns the profile table of a GPU, or nil when the
// simulator has none for its product.
func migTableFor(name string, memMiB uint64) []hardware.MIGProfile {
	for _, t := range migTables {
		if t.product(name, memMiB) {
			return t.profiles
		}
	}
	return nil
}

// giID is the GPU-instance ID the driver gives an instance of size memory
// slices at start, as A100 and H100 number them: the full GPU 0, a half
// (4 slices) 1 or 2, a quarter (2 slices) 3-6, an eighth 7-13.
func giID(size, start int) int {
	switch {
	case size >= 8:
		return 0
	case size >= 4:
		return 1 + start/4
	case size >= 2:
		return 3 + start/2
	}
	return 7 + start
}
