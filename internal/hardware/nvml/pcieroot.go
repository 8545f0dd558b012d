//go:build cgo && linux && !nokube

package nvml

import (
	"k8s.io/dynamic-resource-allocation/deviceattribute"

	"github.com/gpulet/gpulet/internal/hardware"
)

var _ hardware.PCIeRootResolver = (*Backend)(nil)

// PCIeRoot reads a GPU's root complex from the host's /sys, as NVIDIA's
// DRA driver does: NVML's bus IDs are the host's. Only DRA uses it, so a
// build without the Kubernetes API (tag nokube) leaves it out, and with it
// the DRA library and the core API types it links.
func (b *Backend) PCIeRoot(busID string) (string, bool) {
	a, err := deviceattribute.GetPCIeRootAttributeByPCIBusID(busID)
	if err != nil || a.Value.StringValue == nil {
		return "", false
	}
	return *a.Value.StringValue, true
}
