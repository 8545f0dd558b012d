package inventory

import "math"

// MIGMemoryGB is the memory size in a MIG profile name (the 18 of
// 1g.18gb), as nvidia-smi and NVIDIA's go-nvlib compute it: the instance's
// share of the GPU's memory rounded up to an eighth, times the GPU's memory
// in whole GB. Both backends name profiles with it, so a simulated
// 1g.18gb has the memory a real one has.
func MIGMemoryGB(memBytes, gpuMemBytes uint64) uint64 {
	const oneGB = 1 << 30
	if gpuMemBytes == 0 {
		return (memBytes + oneGB - 1) / oneGB
	}
	frac := float64(memBytes) / float64(gpuMemBytes)
	frac = math.Ceil(frac*8) / 8
	totalGB := float64((gpuMemBytes + oneGB - 1) / oneGB)
	return uint64(math.Round(frac * totalGB))
}
