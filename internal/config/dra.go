package config

// DRA settings (gpulet.dra in the file): whether `gpulet run` also serves
// Dynamic Resource Allocation, and which GPUs are DRA's rather than the
// device plugin's. Kept in this file so the rest of the config stays as it
// was.

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// DRA defaults that are the dra package's and the kubelet's values (the
// daemon's tests check they agree).
const (
	DefaultDRADevices      = DRADevicesAll
	DefaultDRAPluginDir    = "/var/lib/kubelet/plugins/gpu.nvidia.com" // dra.DefaultPluginDir
	DefaultDRARegistrarDir = "/var/lib/kubelet/plugins_registry"       // dra.DefaultRegistrarDir
	// DRADevicesAll gives every GPU to DRA: the device plugin advertises none.
	DRADevicesAll = "all"
)

// DRAConfig is how gpulet serves DRA.
type DRAConfig struct {
	Enabled bool
	// Devices is "all" or a comma-separated list of GPU indexes that DRA
	// owns; the device plugin gets the others.
	Devices      string
	PluginDir    string
	RegistrarDir string
	// ConsumableCapacity publishes whole GPUs as shareable by memory
	// (allowMultipleAllocations, KEP 5075), as NVIDIA's ConsumableShares
	// "memory" option: claims ask capacity.requests.memory and share a GPU
	// while their sum fits.
	ConsumableCapacity bool
	// DynamicMIG is "", "all" or a comma-separated list of GPU indexes whose
	// MIG instances DRA cuts on request (docs/dra-mig.md): every placement
	// is published as a partitionable device and created at Prepare.
	DynamicMIG string
	// DynamicMIGWholeWhenIdle turns MIG mode off again when a dynamic GPU's
	// last instance is destroyed.
	DynamicMIGWholeWhenIdle bool
}

// draFile is gpulet.dra in the config file.
type draFile struct {
	Enabled      *bool   `json:"enabled,omitempty"`
	Devices      *string `json:"devices,omitempty"`
	PluginDir    *string `json:"pluginDir,omitempty"`
	RegistrarDir *string `json:"registrarDir,omitempty"`
	// ConsumableCapacity: see DRAConfig.
	ConsumableCapacity *bool `json:"consumableCapacity,omitempty"`
	// DynamicMIG, DynamicMIGWholeWhenIdle: see DRAConfig.
	DynamicMIG              *string `json:"dynamicMIG,omitempty"`
	DynamicMIGWholeWhenIdle *bool   `json:"dynamicMIGWholeWhenIdle,omitempty"`
}

// DRAFlags adds the DRA settings of `gpulet run`.
func (c *Config) DRAFlags(fs *pflag.FlagSet) { c.addFlags(fs, groupDRA) }

// DRAIndexes returns the GPU indexes DRA owns, or all=true.
func (d DRAConfig) DRAIndexes() (indexes []int, all bool, err error) {
	s := strings.TrimSpace(d.Devices)
	if s == "" {
		return nil, true, nil
	}
	return gpuIndexes("dra-devices", s)
}

// DynamicMIGIndexes returns the GPU indexes given to dynamic MIG, or
// all=true; none when the setting is empty.
func (d DRAConfig) DynamicMIGIndexes() (indexes []int, all bool, err error) {
	s := strings.TrimSpace(d.DynamicMIG)
	if s == "" {
		return nil, false, nil
	}
	return gpuIndexes("dra-dynamic-mig", s)
}

// gpuIndexes parses "all" or a list of GPU indexes given to setting flag.
func gpuIndexes(flag, s string) (indexes []int, all bool, err error) {
	if s == DRADevicesAll {
		return nil, true, nil
	}
	seen := map[int]bool{}
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 0 {
			return nil, false, fmt.Errorf("%s %q: %q is not a GPU index; give all or indexes such as 0,1,4", flag, s, p)
		}
		if !seen[n] {
			seen[n] = true
			indexes = append(indexes, n)
		}
	}
	return indexes, false, nil
}

func (c *Config) validateDRA() error {
	if !c.DRA.Enabled {
		return nil
	}
	if _, _, err := c.DRA.DRAIndexes(); err != nil {
		return err
	}
	if _, _, err := c.DRA.DynamicMIGIndexes(); err != nil {
		return err
	}
	if c.Labels.NodeName == "" {
		return fmt.Errorf("--dra needs the node's name to publish ResourceSlices: set NODE_NAME (downward API spec.nodeName) or --node-name")
	}
	return nil
}
