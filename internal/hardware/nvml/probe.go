//go:build cgo && linux

package nvml

import (
	"context"
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Probe checks a device end to end: the handle, a memory query, row
// remapping and uncorrected ECC counters (of the parent GPU for a MIG
// device). A check the device does not support is skipped; any other
// failure, a hung call included, makes the device unhealthy.
func (b *Backend) Probe(ctx context.Context, uuid string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(uuid) })
	if err != nil {
		return err
	}
	if _, err := call(b, "GetMemoryInfo", h.GetMemoryInfo); err != nil {
		return err
	}
	if parent := b.migParent(uuid); parent != "" {
		if h, err = call(b, "DeviceGetHandleByUUID", func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByUUID(parent) }); err != nil {
			return fmt.Errorf("parent GPU %s: %w", parent, err)
		}
	}
	failed, err := call(b, "GetRemappedRows", func() (bool, nvml.Return) {
		_, _, _, failure, ret := h.GetRemappedRows()
		return failure, ret
	})
	if err != nil && !unsupported(err) {
		return err
	}
	if err == nil && failed {
		return errors.New("row remapping failed: the GPU needs a reset or replacement")
	}
	dbe, err := call(b, "GetTotalEccErrors", func() (uint64, nvml.Return) {
		return h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC)
	})
	if err != nil && !unsupported(err) {
		return err
	}
	if err == nil && dbe > 0 {
		return fmt.Errorf("%d uncorrected ECC errors since the last reset", dbe)
	}
	return nil
}
