package dra

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpulet/gpulet/internal/inventory"
)

func attrString(d resourceapi.Device, name resourceapi.QualifiedName) string {
	a, ok := d.Attributes[name]
	switch {
	case !ok:
		return "<none>"
	case a.StringValue != nil:
		return *a.StringValue
	case a.VersionValue != nil:
		return "v" + *a.VersionValue
	case a.IntValue != nil:
		b, _ := json.Marshal(*a.IntValue)
		return string(b)
	case a.BoolValue != nil:
		b, _ := json.Marshal(*a.BoolValue)
		return string(b)
	}
	return "<empty>"
}

func TestDevicesDGXH100(t *testing.T) {
	node, _ := simNode(t, "dgx-h100")
	devs := Devices(inventory.NewStore(node).Snapshot(), DeviceOptions{
		PCIeRoot: func(bus string) (string, bool) { return "pci" + bus[:4] + ":00", true },
	})
	if len(devs) != 8 {
		t.Fatalf("%d devices, want 8", len(devs))
	}
	for i, d := range devs {
		g := node.GPUs[i]
		want := map[resourceapi.QualifiedName]string{
			"type":                            "gpu",
			"uuid":                            g.UUID,
			"productName":                     "NVIDIA H100 80GB HBM3",
			"architecture":                    "Hopper",
			"cudaComputeCapability":           "v9.0.0",
			"driverVersion":                   "v580.159.4",
			"cudaDriverVersion":               "v13.0.0",
			"resource.kubernetes.io/pciBusID": map[int]string{0: "0000:1b:00.0", 4: "0000:9d:00.0"}[i],
			"resource.kubernetes.io/pcieRoot": "pci0000:00",
			"resource.kubernetes.io/numaNode": map[bool]string{true: "0", false: "1"}[i < 4],
			"gpulet.io/nvlinkDomain":          "0", // NVSwitch: all eight in one domain
			"parentUUID":                      "<none>",
			"profile":                         "<none>",
		}
		if d.Name != GPUName(g) || d.Name != "gpu-"+string(rune('0'+i)) {
			t.Errorf("device %d named %q", i, d.Name)
		}
		for k, v := range want {
			if v == "" {
				continue // bus IDs checked on two GPUs only
			}
			if got := attrString(d, k); got != v {
				t.Errorf("%s: %s = %s, want %s", d.Name, k, got, v)
			}
		}
		if m := d.Capacity["memory"]; m.Value.Value() != int64(81559)<<20 {
			t.Errorf("%s: memory %s", d.Name, m.Value.String())
		}
	}
	b, _ := json.MarshalIndent(devs[0], "", "  ")
	t.Logf("gpu-0 as published:\n%s", b)
}

func TestDevicesMIG(t *testing.T) {
	node, _ := simNode(t, migProfile)
	devs := Devices(inventory.NewStore(node).Snapshot(), DeviceOptions{})
	if len(devs) != 14 {
		t.Fatalf("%d devices, want 14 MIG instances and no whole GPU", len(devs))
	}
	tests := []struct {
		dev  int
		name string
		attr map[resourceapi.QualifiedName]string
		caps map[resourceapi.QualifiedName]int64
	}{
		{0, "gpu-0-mig-1g5gb-19-0", map[resourceapi.QualifiedName]string{
			"type": "mig", "brand": "Nvidia", "profile": "1g.5gb", "parentUUID": node.GPUs[0].UUID, "uuid": node.GPUs[0].MIGDevices[0].UUID,
			"productName": "NVIDIA A100-SXM4-40GB", "driverVersion": "v535.104.5", "cudaDriverVersion": "v12.2.0",
			"resource.kubernetes.io/numaNode": "0", "gpulet.io/nvlinkDomain": "<none>", "resource.kubernetes.io/pcieRoot": "<none>",
		}, map[resourceapi.QualifiedName]int64{"memory": 4864 << 20, "multiprocessors": 14, "copyEngines": 1, "jpegEngines": 0, "memorySlice0": 1}},
		{13, "gpu-1-mig-1g5gb-19-6", map[resourceapi.QualifiedName]string{
			"type": "mig", "parentUUID": node.GPUs[1].UUID, "resource.kubernetes.io/numaNode": "1",
		}, map[resourceapi.QualifiedName]int64{"memory": 4864 << 20, "memorySlice6": 1}},
	}
	for _, tc := range tests {
		d := devs[tc.dev]
		if d.Name != tc.name {
			t.Errorf("device %d named %q, want %q", tc.dev, d.Name, tc.name)
		}
		for k, v := range tc.attr {
			if got := attrString(d, k); got != v {
				t.Errorf("%s: %s = %s, want %s", d.Name, k, got, v)
			}
		}
		for k, v := range tc.caps {
			if c, ok := d.Capacity[k]; !ok || c.Value.Value() != v {
				t.Errorf("%s: capacity %s = %v, want %d", d.Name, k, c.Value.String(), v)
			}
		}
		for k := range d.Capacity {
			if strings.HasPrefix(string(k), "memorySlice") && k != "memorySlice"+resourceapi.QualifiedName(strconv.Itoa(tc.dev%7)) {
				t.Errorf("%s: capacity %s: a 1g instance placed at %d occupies one slice", d.Name, k, tc.dev%7)
			}
		}
	}
}

// NVIDIA sizes a MIG device by its GPU-instance profile: a compute
// instance of a 3g instance still shows the 3g's multiprocessors and its
// four memory slices; without the profile (no privilege to read GPU
// instances) the name falls back to the GI and CI IDs.
func TestDevicesMIGProfile(t *testing.T) {
	gpu := inventory.GPU{UUID: "GPU-a", Minor: 3, Name: "NVIDIA H100 80GB HBM3", MemoryBytes: 80 << 30, NUMANode: -1, MIGEnabled: true,
		MIGDevices: []inventory.MIGDevice{
			{UUID: "MIG-a", Profile: "1c.3g.40gb", GI: 2, CI: 0, MemoryBytes: 40 << 30,
				Attributes: &inventory.MIGAttributes{Multiprocessors: 16, CopyEngines: 3},
				GIProfile:  &inventory.MIGGIProfile{ID: 9, PlacementStart: 4, PlacementSize: 4, MemoryBytes: 40 << 30, Multiprocessors: 60, CopyEngines: 3}},
			{UUID: "MIG-b", Profile: "1g.10gb+me", GI: 9, CI: 0, MemoryBytes: 10 << 30},
		}}
	node := &inventory.Node{GPUs: []inventory.GPU{gpu}, Links: [][]inventory.Link{{{}}}}
	devs := Devices(inventory.NewStore(node).Snapshot(), DeviceOptions{})
	if len(devs) != 2 || devs[0].Name != "gpu-3-mig-1c3g40gb-9-4" || devs[1].Name != "gpu-3-mig-1g10gb-me-9-0" {
		t.Fatalf("names %v", []string{devs[0].Name, devs[1].Name})
	}
	want := map[resourceapi.QualifiedName]int64{"multiprocessors": 60, "copyEngines": 3, "memory": 40 << 30,
		"memorySlice4": 1, "memorySlice5": 1, "memorySlice6": 1, "memorySlice7": 1}
	if len(devs[0].Capacity) != len(want)+4 { // + decoders, encoders, jpegEngines, ofaEngines
		t.Errorf("capacities %v", devs[0].Capacity)
	}
	for k, v := range want {
		if c := devs[0].Capacity[k]; c.Value.Value() != v {
			t.Errorf("%s = %s, want %d", k, c.Value.String(), v)
		}
	}
	if _, ok := devs[1].Capacity["multiprocessors"]; ok || len(devs[1].Capacity) != 1 {
		t.Errorf("an instance without attributes or profile: capacities %v, want memory only", devs[1].Capacity)
	}
}

func TestDevicesHealth(t *testing.T) {
	node, _ := simNode(t, migProfile)
	store := inventory.NewStore(node)
	store.SetHealth(node.GPUs[0].MIGDevices[2].UUID, inventory.Health{Reason: "XID 48", XID: 48})
	store.SetHealth(node.GPUs[1].UUID, inventory.Health{Reason: "XID 79", XID: 79})
	devs := Devices(store.Snapshot(), DeviceOptions{})
	if len(devs) != 14 {
		t.Fatalf("%d devices, want all 14: unhealthy ones stay, tainted", len(devs))
	}
	tainted := 0
	for _, d := range devs {
		want := d.Name == "gpu-0-mig-1g5gb-19-2" || attrString(d, "parentUUID") == node.GPUs[1].UUID
		if got := len(d.Taints) == 1 && d.Taints[0].Effect == resourceapi.DeviceTaintEffectNoSchedule; got != want {
			t.Errorf("%s: taints %+v, want tainted %v", d.Name, d.Taints, want)
		}
		if len(d.Taints) > 0 {
			tainted++
		}
	}
	if tainted != 8 {
		t.Errorf("%d tainted, want 8 (one instance of GPU 0, all 7 of GPU 1)", tainted)
	}
	if k := devs[7].Taints[0].Key; k != TaintKeyGPULost {
		t.Errorf("a MIG instance of a GPU with XID 79 has taint %s, want %s", k, TaintKeyGPULost)
	}
}

func TestNVLinkDomains(t *testing.T) {
	link := func(n int) inventory.Link { return inventory.Link{NVLinks: n} }
	// GPUs 0-1 and 2-3 are NVLink pairs (as on a 4x PCIe board with
	// bridges), GPU 4 has none.
	node := &inventory.Node{GPUs: make([]inventory.GPU, 5)}
	for i := range node.GPUs {
		node.GPUs[i].Index = i
	}
	node.Links = make([][]inventory.Link, 5)
	for i := range node.Links {
		node.Links[i] = make([]inventory.Link, 5)
	}
	for _, p := range [][2]int{{0, 1}, {2, 3}} {
		node.Links[p[0]][p[1]], node.Links[p[1]][p[0]] = link(4), link(4)
	}
	got := nvlinkDomains(node)
	want := map[int]int{0: 0, 1: 0, 2: 2, 3: 2}
	if len(got) != len(want) {
		t.Fatalf("domains %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("domains %v, want %v", got, want)
		}
	}
}

func TestSemver(t *testing.T) {
	for in, want := range map[string]string{"9.0": "9.0.0", "13.0": "13.0.0", "580.159.04": "580.159.4", "535.104.05": "535.104.5", "12": "12.0.0", "": "", "1.2.3.4": "", "x.1": ""} {
		got, ok := semver(in)
		if got != want || ok != (want != "") {
			t.Errorf("semver(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
