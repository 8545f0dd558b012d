package smi

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// testdata/nvidia-h200 holds copies of shared/fixtures/nvidia-h200 (read off
// a real node: 1x H200, driver 580.159.04, CUDA 13.0); query-gpu.csv is the
// "query csv" part of its summary.txt. TestFixtureCopiesAreCurrent keeps
// them equal where shared/ is present.
const fixtureDir = "testdata/nvidia-h200"

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(fixtureDir + "/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseXMLFixture(t *testing.T) {
	n, err := ParseXML(readFixture(t, "nvidia-smi-q.xml"))
	if err != nil {
		t.Fatal(err)
	}
	want := &Node{
		DriverVersion: "580.159.04",
		CUDAVersion:   "13.0",
		GPUs: []GPU{{
			UUID: "GPU-ac44f0a6-789f-45de-f092-9a23e7c04123", Name: "NVIDIA H200", Architecture: "Hopper",
			PCIBusID: "00000000:00:06.0", Serial: "1653724033794", MemoryMiB: 143771, Minor: 0,
			MIGCurrent: "Disabled", MIGPending: "Disabled",
		}},
	}
	if !reflect.DeepEqual(n, want) {
		t.Errorf("ParseXML =\n%+v\nwant\n%+v", n, want)
	}
}

// gpuXML wraps GPU elements into a minimal nvidia_smi_log.
func gpuXML(attached string, gpus ...string) string {
	s := `<?xml version="1.0" ?>
<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v13.dtd">
<nvidia_smi_log><driver_version>580.159.04</driver_version><cuda_version>13.0</cuda_version>`
	if attached != "" {
		s += "<attached_gpus>" + attached + "</attached_gpus>"
	}
	for _, g := range gpus {
		s += g
	}
	return s + "</nvidia_smi_log>"
}

func gpuElem(uuid, minor, mem, mig string) string {
	s := `<gpu id="00000000:1A:00.0"><product_name>NVIDIA L4</product_name><uuid>` + uuid + `</uuid>`
	if minor != "" {
		s += "<minor_number>" + minor + "</minor_number>"
	}
	if mig != "" {
		s += "<mig_mode><current_mig>" + mig + "</current_mig><pending_mig>" + mig + "</pending_mig></mig_mode>"
	}
	return s + "<fb_memory_usage><total>" + mem + "</total></fb_memory_usage></gpu>"
}

func TestParseXML(t *testing.T) {
	const u = "GPU-00000000-1111-2222-3333-444444444444"
	tests := []struct {
		name    string
		doc     string
		wantErr string
		check   func(t *testing.T, n *Node)
	}{
		{
			name: "no pci element: bus ID from the gpu id, no MIG, minor N/A",
			doc:  gpuXML("1", gpuElem(u, "N/A", "23034 MiB", "")),
			check: func(t *testing.T, n *Node) {
				g := n.GPUs[0]
				if g.PCIBusID != "00000000:1A:00.0" || g.Minor != -1 || g.MIGCurrent != "N/A" || g.MemoryMiB != 23034 {
					t.Errorf("GPU = %+v", g)
				}
			},
		},
		{
			name: "two GPUs keep their order",
			doc:  gpuXML("2", gpuElem(u, "3", "1 MiB", "Enabled"), gpuElem("GPU-b", "1", "2 MiB", "Disabled")),
			check: func(t *testing.T, n *Node) {
				if len(n.GPUs) != 2 || n.GPUs[0].Minor != 3 || n.GPUs[1].UUID != "GPU-b" || n.GPUs[0].MIGCurrent != "Enabled" {
					t.Errorf("GPUs = %+v", n.GPUs)
				}
			},
		},
		{name: "not nvidia-smi", doc: `<html><body/></html>`, wantErr: "expected element type <nvidia_smi_log> but have <html>"},
		{name: "not XML", doc: `nvidia-smi: command not found`, wantErr: "nvidia-smi XML: EOF"},
		{name: "truncated", doc: gpuXML("1", gpuElem(u, "0", "1 MiB", ""))[:200], wantErr: "unexpected EOF"},
		{name: "gpu without uuid", doc: gpuXML("1", gpuElem("", "0", "1 MiB", "")), wantErr: "gpu 0 (00000000:1A:00.0) has no uuid"},
		{name: "memory not in MiB", doc: gpuXML("1", gpuElem(u, "0", "1 GiB", "")), wantErr: `fb_memory_usage/total: "1 GiB" is not a size in MiB`},
		{name: "memory N/A", doc: gpuXML("1", gpuElem(u, "0", "N/A", "")), wantErr: `"N/A" is not a size in MiB`},
		{name: "negative minor", doc: gpuXML("1", gpuElem(u, "-1", "1 MiB", "")), wantErr: `minor_number "-1" is not a device minor`},
		{name: "count disagrees", doc: gpuXML("2", gpuElem(u, "0", "1 MiB", "")), wantErr: "attached_gpus is 2 but 1 <gpu> elements follow"},
		{name: "count not a number", doc: gpuXML("two", gpuElem(u, "0", "1 MiB", "")), wantErr: `attached_gpus "two" is not a number`},
		{name: "foreign charset", doc: `<?xml version="1.0" encoding="ISO-8859-1"?><nvidia_smi_log/>`, wantErr: `unsupported charset "ISO-8859-1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := ParseXML([]byte(tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, n)
		})
	}
}

func TestParseQueryCSV(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []map[string]string
		wantErr string
	}{
		{
			name: "fixture",
			in:   string(readFixture(t, "query-gpu.csv")),
			want: []map[string]string{{
				"index": "0", "uuid": "GPU-ac44f0a6-789f-45de-f092-9a23e7c04123", "name": "NVIDIA H200",
				"pci.bus_id": "00000000:00:06.0", "memory.total": "143771 MiB", "compute_cap": "9.0",
				"mig.mode.current": "Disabled", "driver_version": "580.159.04", "serial": "1653724033794",
				"vbios_version": "96.00.A5.00.1A",
			}},
		},
		{name: "header only", in: "uuid, compute_cap\n", want: []map[string]string{}},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "ragged", in: "uuid, compute_cap\nGPU-a\n", wantErr: "wrong number of fields"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseQueryCSV([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseQueryCSV = %v, %v\nwant %v", got, err, tt.want)
			}
		})
	}
}

func FuzzParseXML(f *testing.F) {
	f.Add(readFixture(f, "nvidia-smi-q.xml"))
	f.Add([]byte(gpuXML("1", gpuElem("GPU-a", "0", "1 MiB", "Disabled"))))
	f.Add([]byte(gpuXML("", gpuElem("GPU-a", "N/A", "1 MiB", ""), gpuElem("GPU-b", "7", "2 MiB", "Enabled"))))
	f.Add([]byte(`<nvidia_smi_log><gpu><uuid> </uuid></gpu></nvidia_smi_log>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := ParseXML(data)
		if err != nil {
			if n != nil {
				t.Fatalf("node %+v returned with error %v", n, err)
			}
			return
		}
		for i, g := range n.GPUs {
			if g.UUID == "" || g.UUID != strings.TrimSpace(g.UUID) {
				t.Errorf("GPU %d has UUID %q", i, g.UUID)
			}
			if g.Minor < -1 {
				t.Errorf("GPU %d has minor %d", i, g.Minor)
			}
			if g.MIGCurrent == "" || g.MIGPending == "" {
				t.Errorf("GPU %d has an empty MIG mode", i)
			}
		}
		// The views built from it compare equal to themselves.
		v := FromXML(n)
		if rows := Compare(v, v); Mismatches(rows) != 0 {
			t.Errorf("a view disagrees with itself: %+v", rows)
		}
		again, err := ParseXML(data)
		if err != nil || !reflect.DeepEqual(n, again) {
			t.Errorf("second parse differs: %v", err)
		}
	})
}
