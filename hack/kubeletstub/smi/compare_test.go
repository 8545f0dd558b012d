package smi

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/inventory"
)

// TestSimH200MatchesRealNode holds the simulator's h200 profile to the node
// it copies: every field nvidia-smi reports must agree.
func TestSimH200MatchesRealNode(t *testing.T) {
	p, err := sim.LoadProfile("h200")
	if err != nil {
		t.Fatal(err)
	}
	node, err := p.Node()
	if err != nil {
		t.Fatal(err)
	}
	x, err := ParseXML(readFixture(t, "nvidia-smi-q.xml"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := ParseQueryCSV(readFixture(t, "query-gpu.csv"))
	if err != nil {
		t.Fatal(err)
	}
	real := FromXML(x)
	real.AddQuery(q)
	simView := FromInventory("sim h200", node)

	// Compute capability is not in the XML: the NVML probe of the same node
	// must agree with nvidia-smi's CSV, which the view took it from.
	var probe struct {
		Devices []struct {
			CC   string `json:"cc"`
			UUID string `json:"uuid"`
		} `json:"devices"`
	}
	if err := json.Unmarshal(readFixture(t, "nvml.json"), &probe); err != nil {
		t.Fatal(err)
	}
	if len(probe.Devices) != 1 || probe.Devices[0].CC != "9.0 Success" || !strings.HasPrefix(probe.Devices[0].UUID, real.GPUs[0].UUID) {
		t.Fatalf("nvml.json devices = %+v, want one GPU with cc 9.0 and UUID %s", probe.Devices, real.GPUs[0].UUID)
	}

	rows := Compare(real, simView)
	var b bytes.Buffer
	if err := WriteTable(&b, []View{real, simView}, rows); err != nil {
		t.Fatal(err)
	}
	if n := Mismatches(rows); n != 0 {
		t.Errorf("%d fields differ between the real H200 and the h200 profile:\n%s", n, b.String())
	}
	// Name each field so a field dropped from Compare cannot pass silently.
	want := map[string]string{
		"driver version":     "580.159.04",
		"cuda version":       "13.0",
		"gpu count":          "1",
		"uuid":               "GPU-ac44f0a6-789f-45de-f092-9a23e7c04123",
		"name":               "NVIDIA H200",
		"memory (MiB)":       "143771",
		"pci bus id":         "00000000:00:06.0",
		"minor":              "0",
		"mig mode":           "Disabled",
		"compute capability": "9.0",
	}
	for _, r := range rows {
		w, ok := want[r.Field]
		if !ok {
			continue
		}
		delete(want, r.Field)
		if r.Status != StatusOK || r.Values[0] != w || r.Values[1] != w {
			t.Errorf("%s: nvidia-smi %q, sim %q (%s); want both %q", r.Field, r.Values[0], r.Values[1], r.Status, w)
		}
	}
	for f := range want {
		t.Errorf("field %q was not compared", f)
	}
	if node.GPUs[0].Architecture != x.GPUs[0].Architecture || node.GPUs[0].Serial != x.GPUs[0].Serial {
		t.Errorf("architecture/serial: sim %s/%s, nvidia-smi %s/%s", node.GPUs[0].Architecture, node.GPUs[0].Serial,
			x.GPUs[0].Architecture, x.GPUs[0].Serial)
	}
}

// TestFixtureCopiesAreCurrent compares testdata with shared/fixtures, found
// by walking up from here (the checkout's sibling in CI and at /work).
func TestFixtureCopiesAreCurrent(t *testing.T) {
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	shared := ""
	for d := dir; ; d = filepath.Dir(d) {
		for _, c := range []string{filepath.Join(d, "shared", "fixtures", "nvidia-h200"), filepath.Join(d, "..", "shared", "fixtures", "nvidia-h200")} {
			if fi, err := os.Stat(c); err == nil && fi.IsDir() {
				shared = c
				break
			}
		}
		if shared != "" || filepath.Dir(d) == d {
			break
		}
	}
	if shared == "" {
		t.Skip("shared/fixtures/nvidia-h200 not found above " + dir + ": the copies in testdata are used as they are")
	}
	for _, name := range []string{"nvidia-smi-q.xml", "nvml.json"} {
		orig, err := os.ReadFile(filepath.Join(shared, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(orig, readFixture(t, name)) {
			t.Errorf("testdata/nvidia-h200/%s differs from %s: copy it again", name, filepath.Join(shared, name))
		}
	}
	summary, err := os.ReadFile(filepath.Join(shared, "summary.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(summary, readFixture(t, "query-gpu.csv")) {
		t.Errorf("testdata/nvidia-h200/query-gpu.csv is not the query csv of %s", filepath.Join(shared, "summary.txt"))
	}
}

func TestCompare(t *testing.T) {
	const a, b = "GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000"
	g := func(uuid string) ViewGPU {
		return ViewGPU{UUID: uuid, Name: "NVIDIA H200", MemoryMiB: "143771", PCIBusID: "00000000:00:06.0", Minor: "0", MIGMode: "Disabled", ComputeCap: "9.0"}
	}
	tests := []struct {
		name  string
		views []View
		want  map[string]string // "GPU/field" or "node/field" -> status
	}{
		{
			name: "CUDA's 4-digit bus domain and missing fields still agree",
			views: []View{
				{Source: "nvidia-smi", Driver: "580.159.04", CUDA: "13.0", GPUs: []ViewGPU{g(a)}},
				{Source: "cuda", CUDA: "13.0", GPUs: []ViewGPU{{UUID: a, Name: "NVIDIA H200", MemoryMiB: "143771", PCIBusID: "0000:00:06.0", ComputeCap: "9.0"}}},
			},
			want: map[string]string{"node/driver version": StatusUnknown, "node/cuda version": StatusOK, a + "/pci bus id": StatusOK,
				a + "/minor": StatusUnknown, a + "/mig mode": StatusUnknown, a + "/compute capability": StatusOK},
		},
		{
			name: "a name that differs",
			views: []View{
				{Source: "x", GPUs: []ViewGPU{g(a)}},
				{Source: "y", GPUs: []ViewGPU{func() ViewGPU { v := g(a); v.Name = "NVIDIA H100"; return v }()}},
			},
			want: map[string]string{a + "/name": StatusMismatch, a + "/memory (MiB)": StatusOK, "node/gpu count": StatusOK},
		},
		{
			name: "a GPU one view lacks",
			views: []View{
				{Source: "x", GPUs: []ViewGPU{g(a), g(b)}},
				{Source: "y", GPUs: []ViewGPU{g(a)}},
			},
			want: map[string]string{"node/gpu count": StatusMismatch, a + "/uuid": StatusOK, b + "/uuid": StatusMismatch, b + "/name": StatusUnknown},
		},
		{
			name: "MIG UUID matches the GPU- form, case aside",
			views: []View{
				{Source: "x", GPUs: []ViewGPU{g("MIG-AAAAAAAA-0000-0000-0000-000000000000")}},
				{Source: "y", GPUs: []ViewGPU{g(a)}},
			},
			want: map[string]string{"MIG-AAAAAAAA-0000-0000-0000-000000000000/uuid": StatusOK, "node/gpu count": StatusOK},
		},
		{
			name: "MIG mode case and bus ID case",
			views: []View{
				{Source: "x", GPUs: []ViewGPU{func() ViewGPU { v := g(a); v.PCIBusID = "00000000:1A:00.0"; return v }()}},
				{Source: "y", GPUs: []ViewGPU{func() ViewGPU { v := g(a); v.PCIBusID = "00000000:1a:00.0"; v.MIGMode = "disabled"; return v }()}},
			},
			want: map[string]string{a + "/pci bus id": StatusOK, a + "/mig mode": StatusOK},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows := Compare(tt.views...)
			got := map[string]string{}
			for _, r := range rows {
				k := r.GPU
				if k == "" {
					k = "node"
				}
				got[k+"/"+r.Field] = r.Status
				if len(r.Values) != len(tt.views) {
					t.Errorf("%s/%s has %d values for %d views", k, r.Field, len(r.Values), len(tt.views))
				}
			}
			for k, w := range tt.want {
				if got[k] != w {
					t.Errorf("%s: %q, want %q", k, got[k], w)
				}
			}
		})
	}
}

func TestNormalizeBusID(t *testing.T) {
	tests := []struct{ in, want string }{
		{"00000000:00:06.0", "0000:00:06.0"},
		{"0000:00:06.0", "0000:00:06.0"},
		{"00000001:1A:00.0", "0001:1a:00.0"},
		{" 0000:1a:00.0 ", "0000:1a:00.0"},
		{"N/A", "n/a"},
		{"zz:00:00.0", "zz:00:00.0"},
	}
	for _, tt := range tests {
		if got := NormalizeBusID(tt.in); got != tt.want {
			t.Errorf("NormalizeBusID(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFromInventoryMIG(t *testing.T) {
	tests := []struct {
		capable, enabled bool
		want             string
	}{{false, false, "N/A"}, {true, false, "Disabled"}, {true, true, "Enabled"}}
	for _, tt := range tests {
		v := FromInventory("gpulet", &inventory.Node{GPUs: []inventory.GPU{{UUID: "GPU-a", MIGCapable: tt.capable, MIGEnabled: tt.enabled, MemoryBytes: 3 << 20, Minor: 2}}})
		g := v.GPUs[0]
		if g.MIGMode != tt.want || g.MemoryMiB != "3" || g.Minor != "2" {
			t.Errorf("capable %v enabled %v: %+v, want MIG %s, 3 MiB, minor 2", tt.capable, tt.enabled, g, tt.want)
		}
	}
}

func TestWriteTable(t *testing.T) {
	views := []View{{Source: "nvidia-smi", Driver: "580"}, {Source: "gpulet list"}}
	rows := Compare(views...)
	var b bytes.Buffer
	if err := WriteTable(&b, views, rows); err != nil {
		t.Fatal(err)
	}
	want := "GPU   FIELD           nvidia-smi  gpulet list  STATUS\n" +
		"node  driver version  580         -            -\n" +
		"node  cuda version    -           -            -\n" +
		"node  gpu count       0           0            ok\n"
	if b.String() != want {
		t.Errorf("table =\n%s\nwant\n%s", b.String(), want)
	}
}
