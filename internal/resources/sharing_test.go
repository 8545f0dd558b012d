package resources

import (
	"fmt"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/inventory"
)

func fourGPUs() *inventory.Node {
	n := &inventory.Node{DevRoot: "/nonexistent"}
	for i := 0; i < 4; i++ {
		n.GPUs = append(n.GPUs, inventory.GPU{UUID: fmt.Sprintf("GPU-%d", i), Index: i, Minor: i})
	}
	return n
}

// TestSharesReplicateOnlyTheirDevices: NVIDIA's device_map semantics: the
// picked devices are replicated (under rename if set), the rest stay whole
// under the resource's name.
func TestSharesReplicateOnlyTheirDevices(t *testing.T) {
	gpu := "nvidia.com/gpu"
	for _, tc := range []struct {
		name  string
		share Share
		want  string
	}{
		{"all", Share{Name: gpu, Replicas: 2},
			"nvidia.com/gpu=GPU-0::0@0,GPU-0::1@0,GPU-1::0@1,GPU-1::1@1,GPU-2::0@2,GPU-2::1@2,GPU-3::0@3,GPU-3::1@3"},
		{"count, same name", Share{Name: gpu, Replicas: 2, Devices: Selector{Count: 1}},
			"nvidia.com/gpu=GPU-0::0@0,GPU-0::1@0,GPU-1@1,GPU-2@2,GPU-3@3"},
		{"list by index and UUID, renamed", Share{Name: gpu, Rename: "nvidia.com/gpu.shared", Replicas: 3, Devices: Selector{List: []string{"3", "GPU-1"}}},
			"nvidia.com/gpu=GPU-0@0,GPU-2@2 nvidia.com/gpu.shared=GPU-1::0@1,GPU-1::1@1,GPU-1::2@1,GPU-3::0@3,GPU-3::1@3,GPU-3::2@3"},
		{"another resource: nothing shared", Share{Name: "nvidia.com/mig-1g.10gb", Replicas: 2},
			"nvidia.com/gpu=GPU-0@0,GPU-1@1,GPU-2@2,GPU-3@3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Shares: []Share{tc.share}, FailRequestsGreaterThanOne: true}
			rs := Build(inventory.NewStore(fourGPUs()).Snapshot(), cfg)
			if got := summary(rs); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			for _, r := range rs {
				for _, d := range r.Devices {
					if (d.Replicas > 0) != strings.Contains(d.ID, ReplicaSep) {
						t.Errorf("%s: Replicas %d on %s", r.Name, d.Replicas, d.ID)
					}
				}
				shared := strings.Contains(summary([]Resource{r}), ReplicaSep)
				if shared != (r.MaxPerContainer == 1) {
					t.Errorf("%s: MaxPerContainer %d", r.Name, r.MaxPerContainer)
				}
			}
		})
	}
}

func TestCheckShares(t *testing.T) {
	snap := inventory.NewStore(fourGPUs()).Snapshot()
	gpu := "nvidia.com/gpu"
	for _, tc := range []struct {
		cfg       Config
		want      string
		unmatched string
	}{
		{Config{Shares: []Share{{Name: gpu, Replicas: 2, Devices: Selector{Count: 4}}}}, "", ""},
		{Config{Shares: []Share{{Name: gpu, Replicas: 2, Devices: Selector{Count: 5}}}}, "more devices than the 4", ""},
		{Config{Shares: []Share{{Name: gpu, Replicas: 2, Devices: Selector{List: []string{"7"}}}}}, `lists "7"`, ""},
		{Config{Shares: []Share{{Name: "nvidia.com/mig-1g.10gb", Replicas: 2}}}, "", "nvidia.com/mig-1g.10gb"},
	} {
		un, err := CheckShares(snap, tc.cfg)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: error %v, want %q", tc.cfg.Shares, err, tc.want)
		}
		if strings.Join(un, ",") != tc.unmatched {
			t.Errorf("%+v: unmatched %v", tc.cfg.Shares, un)
		}
	}
	// MPS on MIG devices is refused as NVIDIA refuses it; mixed already by Validate.
	mps := Config{MIGStrategy: MIGSingle, MPS: true, Shares: []Share{{Name: gpu, Replicas: 2}}}
	if _, err := CheckShares(inventory.NewStore(migNode()).Snapshot(), mps); err == nil || !strings.Contains(err.Error(), "MIG devices") {
		t.Errorf("MPS on MIG: %v", err)
	}
	mps.MIGStrategy = MIGMixed
	if err := mps.Validate(); err == nil || !strings.Contains(err.Error(), "mixed") {
		t.Errorf("MPS with mixed: %v", err)
	}
}
