package resources

import (
	"fmt"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/inventory"
)

func migNode() *inventory.Node {
	n := &inventory.Node{DevRoot: "/nonexistent"}
	for i := 0; i < 2; i++ {
		g := inventory.GPU{UUID: fmt.Sprintf("GPU-%d", i), Index: i, Minor: i, NUMANode: i}
		if i == 1 {
			g.MIGEnabled = true
			g.MIGDevices = []inventory.MIGDevice{
				{UUID: "MIG-a", Index: 0, Profile: "3g.40gb"}, {UUID: "MIG-b", Index: 1, Profile: "1g.10gb"}, {UUID: "MIG-c", Index: 2, Profile: "1g.10gb"},
			}
		}
		n.GPUs = append(n.GPUs, g)
	}
	return n
}

func summary(rs []Resource) string {
	var parts []string
	for _, r := range rs {
		var ids []string
		for _, d := range r.Devices {
			s := d.ID + "@" + d.Index
			if !d.Healthy {
				s += "!"
			}
			ids = append(ids, s)
		}
		parts = append(parts, r.Name+"="+strings.Join(ids, ","))
	}
	return strings.Join(parts, " ")
}

func TestBuild(t *testing.T) {
	n := migNode()
	sick := inventory.Snapshot{Node: n, Health: map[string]inventory.Health{"GPU-1": {Reason: "XID 48"}, "GPU-0": {Reason: "x"}}}
	cases := []struct {
		name string
		snap inventory.Snapshot
		cfg  Config
		want string
	}{
		{"none advertises MIG-enabled GPUs whole", inventory.Snapshot{Node: n}, Config{}, "nvidia.com/gpu=GPU-0@0,GPU-1@1"},
		{"single", inventory.Snapshot{Node: n}, Config{MIGStrategy: MIGSingle}, "nvidia.com/gpu=GPU-0@0,MIG-a@1:0,MIG-b@1:1,MIG-c@1:2"},
		{"mixed", inventory.Snapshot{Node: n}, Config{MIGStrategy: MIGMixed},
			"nvidia.com/gpu=GPU-0@0 nvidia.com/mig-1g.10gb=MIG-b@1:1,MIG-c@1:2 nvidia.com/mig-3g.40gb=MIG-a@1:0"},
		{"broken parent breaks instances", sick, Config{MIGStrategy: MIGMixed},
			"nvidia.com/gpu=GPU-0@0! nvidia.com/mig-1g.10gb=MIG-b@1:1!,MIG-c@1:2! nvidia.com/mig-3g.40gb=MIG-a@1:0!"},
		{"replicas renamed", inventory.Snapshot{Node: n}, Config{Replicas: 2, RenameByDefault: true},
			"nvidia.com/gpu.shared=GPU-0::0@0,GPU-0::1@0,GPU-1::0@1,GPU-1::1@1"},
		{"custom name", inventory.Snapshot{Node: n}, Config{ResourceName: "example.com/accel"}, "example.com/accel=GPU-0@0,GPU-1@1"},
		{"replicas renamed explicitly", inventory.Snapshot{Node: n}, Config{Replicas: 2, RenameByDefault: true, SharedName: "nvidia.com/gpu-ts"},
			"nvidia.com/gpu-ts=GPU-0::0@0,GPU-0::1@0,GPU-1::0@1,GPU-1::1@1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := summary(Build(tc.snap, tc.cfg)); got != tc.want {
				t.Errorf("\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestDeviceLookup(t *testing.T) {
	rs := Build(inventory.Snapshot{Node: migNode()}, Config{MIGStrategy: MIGSingle})
	r := rs[0]
	for _, d := range r.Devices {
		got, ok := r.Device(d.ID)
		if !ok || got.UUID != d.UUID {
			t.Errorf("lookup %s = %+v %v", d.ID, got, ok)
		}
	}
	if _, ok := r.Device("MIG-z"); ok {
		t.Error("found a device that is not there")
	}
	if r.Devices[1].GPU != 1 || r.Devices[1].Minor != 1 || r.Devices[1].NUMA != 1 {
		t.Errorf("MIG device does not carry its parent's position: %+v", r.Devices[1])
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{MIGStrategy: "both"}, {Replicas: -1}, {ResourceName: "gpu"}} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if err := (Config{MIGStrategy: MIGMixed, Replicas: 4}).Validate(); err != nil {
		t.Error(err)
	}
}

func TestResourceEqual(t *testing.T) {
	a := Resource{Name: "nvidia.com/gpu", Devices: []Device{{ID: "a", Healthy: true}}, Links: [][]inventory.Link{{{NVLinks: 1}}}}
	b := a
	b.Devices = []Device{{ID: "a", Healthy: true}}
	b.Links = [][]inventory.Link{{{NVLinks: 1}}}
	if !a.Equal(&b) {
		t.Error("copies differ")
	}
	c := b
	c.Devices = []Device{{ID: "a", Healthy: false, Reason: "xid"}}
	d := b
	d.Links = [][]inventory.Link{{{NVLinks: 2}}}
	e := b
	e.MaxPerContainer = 1
	for i, o := range []Resource{c, d, e} {
		if a.Equal(&o) {
			t.Errorf("change %d not seen", i)
		}
	}
}
