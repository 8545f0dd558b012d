package resources

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/gpulet/gpulet/internal/inventory"
)

// MIGResourceName is the mixed-strategy resource of a MIG profile, named as
// NVIDIA's plugin names it: "mig-" and the profile with every "+" made a
// ".", since "+" is not allowed in a resource name. So 1g.18gb+me is
// <domain>/mig-1g.18gb.me, 1g.23gb+me.all is mig-1g.23gb.me.all, and
// 1g.23gb-me stays mig-1g.23gb-me.
func MIGResourceName(domain, profile string) string {
	return domain + "/mig-" + strings.ReplaceAll(profile, "+", ".")
}

// MIGIndex is the index name of a MIG instance, <gpu index>:<NVML MIG
// index>, as NVIDIA's plugin and container runtime read it.
func MIGIndex(gpuIndex, migIndex int) string {
	return strconv.Itoa(gpuIndex) + ":" + strconv.Itoa(migIndex)
}

// computeProfile matches profiles of a compute instance smaller than its
// GPU instance (1c.2g.20gb): NVIDIA's plugin makes no resource for them.
var computeProfile = regexp.MustCompile(`^[0-9]+c\.`)

// CheckMIG applies NVIDIA's checks of a node's MIG layout under a strategy.
// An error is a layout NVIDIA's plugin refuses to start with; warnings
// are what it logs and carries on. none checks nothing (every GPU is
// advertised whole). single needs every GPU MIG-enabled with at least one
// instance, or none MIG-enabled, and every instance alike (profile and
// memory), since all become one nvidia.com/gpu. mixed needs every
// instance to be a whole GPU instance (no 1c.2g.20gb: NVIDIA has no
// resource to put it in) and warns of a MIG-enabled GPU without instances.
func CheckMIG(node *inventory.Node, strategy string) (warnings []string, err error) {
	if strategy == "" || strategy == MIGNone {
		return nil, nil
	}
	var enabled, disabled []string
	var first *inventory.MIGDevice
	for _, g := range node.GPUs {
		if !g.MIGEnabled {
			disabled = append(disabled, strconv.Itoa(g.Index))
			continue
		}
		enabled = append(enabled, strconv.Itoa(g.Index))
		if len(g.MIGDevices) == 0 {
			msg := fmt.Sprintf("GPU %d (%s) has MIG enabled but no MIG devices configured", g.Index, g.UUID)
			if strategy == MIGSingle {
				return nil, fmt.Errorf("mig-strategy=single: %s", msg)
			}
			warnings = append(warnings, msg)
		}
		for i := range g.MIGDevices {
			m := &g.MIGDevices[i]
			switch strategy {
			case MIGSingle:
				if first == nil {
					first = m
				} else if m.Profile != first.Profile || m.MemoryBytes != first.MemoryBytes {
					return nil, fmt.Errorf("mig-strategy=single needs one MIG device type on the node, found %s (%d MiB) and %s (%d MiB) (MIG device %s on GPU %d); use mig-strategy=mixed or reconfigure MIG",
						first.Profile, first.MemoryBytes>>20, m.Profile, m.MemoryBytes>>20, m.UUID, g.Index)
				}
			case MIGMixed:
				if computeProfile.MatchString(m.Profile) {
					return nil, fmt.Errorf("mig-strategy=mixed: MIG device %s on GPU %d has profile %s, a compute instance smaller than its GPU instance, which no resource is made for (as in NVIDIA's plugin)",
						m.UUID, g.Index, m.Profile)
				}
			}
		}
	}
	if strategy == MIGSingle && len(enabled) > 0 && len(disabled) > 0 {
		return nil, fmt.Errorf("mig-strategy=single needs every GPU with the same MIG mode: MIG is enabled on GPUs %s and disabled on GPUs %s",
			strings.Join(enabled, ","), strings.Join(disabled, ","))
	}
	return warnings, nil
}
