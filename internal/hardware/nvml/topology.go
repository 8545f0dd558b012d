//go:build cgo && linux

package nvml

import (
	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpulet/gpulet/internal/inventory"
)

// links reads NVLink counts and PCIe common ancestors once per discovery.
// Only a wedged driver fails it; a link NVML cannot describe is left out.
func (b *Backend) links(handles []nvml.Device, gpus []inventory.GPU) ([][]inventory.Link, error) {
	n := len(handles)
	links := make([][]inventory.Link, n)
	byBus := map[string]int{}
	for i, g := range gpus {
		byBus[normBusID(g.PCIBusID)] = i
		links[i] = make([]inventory.Link, n)
	}
	// NVLinks to each peer GPU, and to NVSwitches (peers through a switch
	// get the smaller of the two GPUs' switch link counts).
	toSwitch := make([]int, n)
	for i, h := range handles {
		for l := 0; l < nvml.NVLINK_MAX_LINKS; l++ {
			state, err := call(b, "GetNvLinkState", func() (nvml.EnableState, nvml.Return) { return h.GetNvLinkState(l) })
			if hung(err) != nil {
				return nil, err
			}
			if err != nil || state != nvml.FEATURE_ENABLED {
				continue
			}
			kind, kindErr := call(b, "GetNvLinkRemoteDeviceType", func() (nvml.IntNvLinkDeviceType, nvml.Return) {
				return h.GetNvLinkRemoteDeviceType(l)
			})
			if hung(kindErr) != nil {
				return nil, kindErr
			}
			if kindErr == nil {
				switch kind {
				case nvml.NVLINK_DEVICE_TYPE_SWITCH:
					toSwitch[i]++
					continue
				case nvml.NVLINK_DEVICE_TYPE_IBMNPU:
					continue // a link to the CPU (POWER9)
				}
			}
			remote, err := call(b, "GetNvLinkRemotePciInfo", func() (nvml.PciInfo, nvml.Return) { return h.GetNvLinkRemotePciInfo(l) })
			if hung(err) != nil {
				return nil, err
			}
			if err != nil {
				continue
			}
			j, isGPU := byBus[normBusID(busID(remote))]
			switch {
			case isGPU && j != i:
				links[i][j].NVLinks++
			case kindErr != nil || kind == nvml.NVLINK_DEVICE_TYPE_UNKNOWN:
				// A driver that cannot name the far end: a link to
				// something that is not one of our GPUs is an NVSwitch.
				if !isGPU {
					toSwitch[i]++
				}
			}
		}
	}
	for i := range handles {
		for j := range handles {
			if i == j {
				continue
			}
			if links[i][j].NVLinks == 0 && toSwitch[i] > 0 && toSwitch[j] > 0 {
				links[i][j].NVLinks = min(toSwitch[i], toSwitch[j])
			}
			if j < i {
				links[i][j].PCIe = links[j][i].PCIe
				continue
			}
			lvl, err := call(b, "GetTopologyCommonAncestor", func() (nvml.GpuTopologyLevel, nvml.Return) {
				return handles[i].GetTopologyCommonAncestor(handles[j])
			})
			switch {
			case hung(err) != nil:
				return nil, err
			case err == nil:
				links[i][j].PCIe = level(lvl)
			case gpus[i].NUMANode >= 0 && gpus[i].NUMANode == gpus[j].NUMANode:
				links[i][j].PCIe = inventory.LevelNODE
			default:
				links[i][j].PCIe = inventory.LevelSYS
			}
		}
	}
	// Keep the matrix symmetric even if NVML counted links asymmetrically.
	for i := range links {
		for j := i + 1; j < n; j++ {
			m := min(links[i][j].NVLinks, links[j][i].NVLinks)
			if m == 0 {
				m = max(links[i][j].NVLinks, links[j][i].NVLinks)
			}
			links[i][j].NVLinks, links[j][i].NVLinks = m, m
		}
	}
	return links, nil
}

func level(l nvml.GpuTopologyLevel) inventory.Level {
	switch l {
	case nvml.TOPOLOGY_INTERNAL:
		return inventory.LevelSame
	case nvml.TOPOLOGY_SINGLE:
		return inventory.LevelPIX
	case nvml.TOPOLOGY_MULTIPLE:
		return inventory.LevelPXB
	case nvml.TOPOLOGY_HOSTBRIDGE:
		return inventory.LevelPHB
	case nvml.TOPOLOGY_NODE:
		return inventory.LevelNODE
	default:
		return inventory.LevelSYS
	}
}
