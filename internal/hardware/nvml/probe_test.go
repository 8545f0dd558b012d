//go:build cgo && linux

package nvml

import (
	"context"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

func TestProbe(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(d *server.Device)
		uuid    string // default: GPU 2's
		wantErr string // "" for healthy
	}{
		{"healthy", func(*server.Device) {}, "", ""},
		{"old GPU: no row remapping, ECC off", func(d *server.Device) {
			d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, nvml.ERROR_NOT_SUPPORTED }
			d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
				return 0, nvml.ERROR_NOT_SUPPORTED
			}
		}, "", ""},
		{"remap pending only", func(d *server.Device) {
			d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 1, true, false, nvml.SUCCESS }
		}, "", ""},
		{"row remap failure", func(d *server.Device) {
			d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 512, false, true, nvml.SUCCESS }
		}, "", "row remapping failed"},
		{"uncorrected ECC", func(d *server.Device) {
			d.GetTotalEccErrorsFunc = func(typ nvml.MemoryErrorType, ctr nvml.EccCounterType) (uint64, nvml.Return) {
				if typ == nvml.MEMORY_ERROR_TYPE_UNCORRECTED && ctr == nvml.VOLATILE_ECC {
					return 2, nvml.SUCCESS
				}
				return 0, nvml.SUCCESS
			}
		}, "", "2 uncorrected ECC errors"},
		{"GPU lost", func(d *server.Device) {
			d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST }
		}, "", nvml.ERROR_GPU_IS_LOST.Error()},
		{"ECC query fails", func(d *server.Device) {
			d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
		}, "", "GetTotalEccErrors"},
		{"unknown device", func(*server.Device) {}, "GPU-00000000-0000-0000-0000-000000000000", "DeviceGetHandleByUUID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, dgxh100.New())
			tc.setup(f.devs[2])
			uuid := tc.uuid
			if uuid == "" {
				uuid = f.devs[2].UUID
			}
			err := f.b.Probe(context.Background(), uuid)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Probe = %v, want healthy", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Probe = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}

func TestProbeMIGChecksParent(t *testing.T) {
	f := newFixture(t, dgxh100.NewWithGPUs(gpus.H100_SXM5_80GB))
	migs := enableMIG(t, f.devs[0], h100Slots)
	withMIGHandles(f, migs)
	if _, err := f.b.Discover(context.Background()); err != nil {
		t.Fatal(err)
	}
	u, _ := migs[1].GetUUID()
	if err := f.b.Probe(context.Background(), u); err != nil {
		t.Fatalf("healthy MIG device: %v", err)
	}
	f.devs[0].GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return 1, nvml.SUCCESS }
	if err := f.b.Probe(context.Background(), u); err == nil || !strings.Contains(err.Error(), "uncorrected ECC") {
		t.Fatalf("MIG device on a GPU with an uncorrected ECC error: %v", err)
	}
}
