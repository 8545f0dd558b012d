package daemon

import (
	"fmt"
	"log/slog"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// MIGMinorsPath is the mig-minors file that maps the backend's MIG
// instances to their /dev/nvidia-caps nodes: the simulator's own, or ""
// for the driver's (cdispec.DefaultMIGMinorsPath; /proc is kernel-wide, so
// a container reads the host's).
func MIGMinorsPath(backend hardware.Backend) string {
	if b, ok := backend.(hardware.MIGMinors); ok {
		return b.MIGMinorsPath()
	}
	return ""
}

// checkMIG refuses a MIG layout the strategy cannot advertise, as NVIDIA's
// plugin refuses to start with it, and logs what NVIDIA only warns of.
func checkMIG(node *inventory.Node, strategy string, log *slog.Logger) error {
	warnings, err := resources.CheckMIG(node, strategy)
	if err != nil {
		return fmt.Errorf("invalid MIG configuration: %w", err)
	}
	for _, w := range warnings {
		log.Warn("MIG configuration", "mig_strategy", strategy, "problem", w)
	}
	return nil
}
