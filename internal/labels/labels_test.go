package labels

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

var fixedNow = func() time.Time { return time.Unix(1724632719, 0) }

func machineFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "product_name")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// h100Attrs are NVML's attributes of an H100 80GB 1g.10gb instance.
var h100Attrs = &inventory.MIGAttributes{Multiprocessors: 16, GISlices: 1, CISlices: 1, CopyEngines: 1, Decoders: 1, JPEGs: 1}

// migNode is a DGX H100 with every GPU split into profile instances.
func migNode(t *testing.T, perGPU int, profile string, memMiB uint64) *inventory.Node {
	n := simtest.Node(t, "dgx-h100")
	for i := range n.GPUs {
		g := &n.GPUs[i]
		g.MIGEnabled = true
		for m := 0; m < perGPU; m++ {
			g.MIGDevices = append(g.MIGDevices, inventory.MIGDevice{
				UUID: g.UUID + "-mig-" + string(rune('a'+m)), Profile: profile, GI: m + 1, MemoryBytes: memMiB << 20, Attributes: h100Attrs,
			})
		}
	}
	return n
}

func TestComputeH200(t *testing.T) {
	snap := inventory.NewStore(simtest.Node(t, "h200")).Snapshot()
	got, err := Compute(snap, Options{MachineTypeFile: machineFile(t, "Standard_ND96isr_H200_v5 \n"), Now: fixedNow,
		Extra: map[string]string{"accelerator": "nvidia"}, SysfsRoot: pciTree(t, map[string][]byte{"0000:07:00.0": pciConfig(nil)})})
	if err != nil {
		t.Fatal(err)
	}
	want := Labels{
		"accelerator":                             "nvidia",
		"nvidia.com/cuda.driver-version.full":     "580.159.04",
		"nvidia.com/cuda.driver-version.major":    "580",
		"nvidia.com/cuda.driver-version.minor":    "159",
		"nvidia.com/cuda.driver-version.revision": "04",
		"nvidia.com/cuda.driver.major":            "580",
		"nvidia.com/cuda.driver.minor":            "159",
		"nvidia.com/cuda.driver.rev":              "04",
		"nvidia.com/cuda.runtime-version.full":    "13.0",
		"nvidia.com/cuda.runtime-version.major":   "13",
		"nvidia.com/cuda.runtime-version.minor":   "0",
		"nvidia.com/cuda.runtime.major":           "13",
		"nvidia.com/cuda.runtime.minor":           "0",
		"nvidia.com/gfd.timestamp":                "1724632719",
		"nvidia.com/gpu.compute.major":            "9",
		"nvidia.com/gpu.compute.minor":            "0",
		"nvidia.com/gpu.count":                    "1",
		"nvidia.com/gpu.family":                   "hopper",
		"nvidia.com/gpu.machine":                  "Standard_ND96isr_H200_v5",
		"nvidia.com/gpu.memory":                   "143771",
		"nvidia.com/gpu.mode":                     "compute",
		"nvidia.com/gpu.product":                  "NVIDIA-H200",
		"nvidia.com/gpu.replicas":                 "1",
		"nvidia.com/gpu.sharing-strategy":         "none",
		"nvidia.com/mig.capable":                  "true",
		"nvidia.com/mps.capable":                  "false",
		"nvidia.com/vgpu.present":                 "false",
	}
	assertLabels(t, got, want)
}

func assertLabels(t *testing.T, got, want Labels) {
	t.Helper()
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %q (present %v), want %q", k, g, ok, v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected label %s=%q", k, v)
		}
	}
}

// TestResourceLabels checks the labels that depend on sharing and MIG
// strategy; only the keys listed are compared, plus absent ones.
func TestResourceLabels(t *testing.T) {
	tests := []struct {
		name   string
		node   func(t *testing.T) *inventory.Node
		cfg    resources.Config
		want   Labels
		absent []string
	}{
		{
			name: "dgx-h100 whole GPUs",
			node: func(t *testing.T) *inventory.Node { return simtest.Node(t, "dgx-h100") },
			want: Labels{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8",
				"nvidia.com/gpu.replicas": "1", "nvidia.com/gpu.sharing-strategy": "none", "nvidia.com/gpu.memory": "81559"},
			absent: []string{"nvidia.com/mig.strategy"},
		},
		{
			name: "time-slicing under the usual name adds -SHARED",
			node: func(t *testing.T) *inventory.Node { return simtest.Node(t, "dgx-h100") },
			cfg:  resources.Config{Replicas: 4},
			want: Labels{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED", "nvidia.com/gpu.count": "8",
				"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing"},
		},
		{
			name: "renameByDefault: no -SHARED, replicas still 4 (GFD #732)",
			node: func(t *testing.T) *inventory.Node { return simtest.Node(t, "dgx-h100") },
			cfg:  resources.Config{Replicas: 4, RenameByDefault: true},
			want: Labels{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.replicas": "4",
				"nvidia.com/gpu.sharing-strategy": "time-slicing"},
		},
		{
			name: "rename: no -SHARED",
			node: func(t *testing.T) *inventory.Node { return simtest.Node(t, "dgx-h100") },
			cfg:  resources.Config{Replicas: 2, SharedName: "nvidia.com/shared-gpu"},
			want: Labels{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.replicas": "2"},
		},
		{
			name: "the config file's time-slicing entry for nvidia.com/gpu",
			node: func(t *testing.T) *inventory.Node { return simtest.Node(t, "dgx-h100") },
			cfg:  resources.Config{Shares: []resources.Share{{Name: "nvidia.com/gpu", Replicas: 10}}},
			want: Labels{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED", "nvidia.com/gpu.replicas": "10",
				"nvidia.com/gpu.sharing-strategy": "time-slicing", "nvidia.com/mps.capable": "false"},
		},
		{
			name: "the config file's MPS entry, renamed",
			node: func(t *testing.T) *inventory.Node { return simtest.Node(t, "dgx-h100") },
			cfg:  resources.Config{MPS: true, Shares: []resources.Share{{Name: "nvidia.com/gpu", Rename: "nvidia.com/gpu.mps", Replicas: 4}}},
			want: Labels{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.replicas": "4",
				"nvidia.com/gpu.sharing-strategy": "mps", "nvidia.com/mps.capable": "true"},
		},
		{
			name: "a sharing entry for another resource leaves whole GPUs unshared",
			node: func(t *testing.T) *inventory.Node { return simtest.Node(t, "dgx-h100") },
			cfg:  resources.Config{Shares: []resources.Share{{Name: "nvidia.com/mig-1g.10gb", Replicas: 4}}},
			want: Labels{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.replicas": "1",
				"nvidia.com/gpu.sharing-strategy": "none"},
		},
		{
			name: "replicas 1 is not sharing",
			node: func(t *testing.T) *inventory.Node { return simtest.Node(t, "dgx-h100") },
			cfg:  resources.Config{Replicas: 1},
			want: Labels{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.replicas": "1",
				"nvidia.com/gpu.sharing-strategy": "none"},
		},
		{
			name: "MIG single overloads nvidia.com/gpu",
			node: func(t *testing.T) *inventory.Node { return migNode(t, 7, "1g.10gb", 9856) },
			cfg:  resources.Config{MIGStrategy: resources.MIGSingle},
			want: Labels{"nvidia.com/mig.strategy": "single", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
				"nvidia.com/gpu.count": "56", "nvidia.com/gpu.replicas": "1", "nvidia.com/gpu.memory": "9856",
				"nvidia.com/gpu.multiprocessors": "16", "nvidia.com/gpu.slices.gi": "1", "nvidia.com/gpu.slices.ci": "1",
				"nvidia.com/gpu.engines.copy": "1", "nvidia.com/gpu.engines.decoder": "1", "nvidia.com/gpu.engines.encoder": "0",
				"nvidia.com/gpu.engines.jpeg": "1", "nvidia.com/gpu.engines.ofa": "0", "nvidia.com/gpu.family": "hopper"},
		},
		{
			name: "MIG single with two profiles is INVALID",
			node: func(t *testing.T) *inventory.Node {
				n := migNode(t, 1, "1g.10gb", 9856)
				n.GPUs[3].MIGDevices[0].Profile = "7g.80gb"
				return n
			},
			cfg: resources.Config{MIGStrategy: resources.MIGSingle},
			want: Labels{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-INVALID", "nvidia.com/gpu.count": "0",
				"nvidia.com/gpu.replicas": "0", "nvidia.com/gpu.sharing-strategy": "", "nvidia.com/gpu.memory": "0"},
			absent: []string{"nvidia.com/gpu.multiprocessors"},
		},
		{
			name: "MIG single with a whole GPU is INVALID",
			node: func(t *testing.T) *inventory.Node {
				n := migNode(t, 7, "1g.10gb", 9856)
				n.GPUs[0].MIGEnabled, n.GPUs[0].MIGDevices = false, nil
				return n
			},
			cfg:  resources.Config{MIGStrategy: resources.MIGSingle},
			want: Labels{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-INVALID", "nvidia.com/gpu.count": "0"},
		},
		{
			name: "MIG mixed: one label set per profile, MIG GPUs unshared",
			node: func(t *testing.T) *inventory.Node {
				n := migNode(t, 2, "1g.10gb", 9856)
				n.GPUs[0].MIGDevices[1].Profile = "3g.40gb+me"
				n.GPUs[0].MIGDevices[1].MemoryBytes = 40192 << 20
				n.GPUs[0].MIGDevices[1].Attributes = nil
				return n
			},
			cfg: resources.Config{MIGStrategy: resources.MIGMixed, Replicas: 2},
			want: Labels{"nvidia.com/mig.strategy": "mixed",
				"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8", "nvidia.com/gpu.replicas": "0",
				"nvidia.com/gpu.sharing-strategy": "none",
				"nvidia.com/mig-1g.10gb.product":  "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb-SHARED", "nvidia.com/mig-1g.10gb.count": "15",
				"nvidia.com/mig-1g.10gb.replicas": "2", "nvidia.com/mig-1g.10gb.sharing-strategy": "time-slicing",
				"nvidia.com/mig-1g.10gb.memory": "9856", "nvidia.com/mig-1g.10gb.multiprocessors": "16",
				"nvidia.com/mig-3g.40gb.me.product": "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb.me-SHARED",
				"nvidia.com/mig-3g.40gb.me.count":   "1", "nvidia.com/mig-3g.40gb.me.memory": "40192"},
			absent: []string{"nvidia.com/mig-3g.40gb.me.multiprocessors", "nvidia.com/gpu.multiprocessors"},
		},
		{
			name:   "MIG strategy none on MIG GPUs: GPUs counted, unshared",
			node:   func(t *testing.T) *inventory.Node { return migNode(t, 7, "1g.10gb", 9856) },
			cfg:    resources.Config{Replicas: 3},
			want:   Labels{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8", "nvidia.com/gpu.replicas": "0"},
			absent: []string{"nvidia.com/mig.strategy", "nvidia.com/mig-1g.10gb.count"},
		},
		{
			name: "V100 family and compute capability",
			node: func(t *testing.T) *inventory.Node { return simtest.Node(t, "dgx1-v100") },
			want: Labels{"nvidia.com/gpu.family": "volta", "nvidia.com/gpu.compute.major": "7", "nvidia.com/gpu.compute.minor": "0",
				"nvidia.com/mig.capable": "false"},
		},
		{
			name: "L4 is ada-lovelace",
			node: func(t *testing.T) *inventory.Node { return simtest.Node(t, "pcie-4x-l4") },
			want: Labels{"nvidia.com/gpu.family": "ada-lovelace", "nvidia.com/gpu.count": "4"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Compute(inventory.NewStore(tt.node(t)).Snapshot(), Options{Resources: tt.cfg, Now: fixedNow})
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				if g, ok := got[k]; !ok || g != v {
					t.Errorf("%s = %q (present %v), want %q", k, g, ok, v)
				}
			}
			for _, k := range tt.absent {
				if v, ok := got[k]; ok {
					t.Errorf("%s = %q, want absent", k, v)
				}
			}
		})
	}
}

func TestGPUMode(t *testing.T) {
	sysfs := t.TempDir()
	writeClass := func(bus, class string) {
		dir := filepath.Join(sysfs, "bus", "pci", "devices", bus)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "class"), []byte(class+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeClass("0000:1b:00.0", "0x030000")
	writeClass("0000:43:00.0", "0x030200")
	tests := []struct {
		name    string
		classes []uint32
		buses   []string
		want    string
	}{
		{"all 3D controllers", []uint32{pciClass3D, pciClass3D}, nil, "compute"},
		{"all VGA", []uint32{pciClassVGA}, nil, "graphics"},
		{"mixed classes", []uint32{pciClassVGA, pciClass3D}, nil, "unknown"},
		{"other class", []uint32{0x038000}, nil, "unknown"},
		{"read from sysfs", []uint32{0}, []string{"00000000:1B:00.0"}, "graphics"},
		{"sysfs and backend agree", []uint32{0, pciClass3D}, []string{"00000000:43:00.0", "x"}, "compute"},
		{"no class anywhere", []uint32{0}, []string{"00000000:99:00.0"}, "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := &inventory.Node{}
			for i, c := range tt.classes {
				g := inventory.GPU{PCIClass: c}
				if i < len(tt.buses) {
					g.PCIBusID = tt.buses[i]
				}
				n.GPUs = append(n.GPUs, g)
			}
			got := gpuModeLabels(n, sysfs, discard())["nvidia.com/gpu.mode"]
			if got != tt.want {
				t.Errorf("gpu.mode = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestOptions(t *testing.T) {
	snap := inventory.NewStore(simtest.Node(t, "h200")).Snapshot()
	tests := []struct {
		name    string
		opts    Options
		want    Labels
		absent  []string
		wantErr string
	}{
		{"no machine file is unknown", Options{}, Labels{"nvidia.com/gpu.machine": "unknown"}, nil, ""},
		{"unreadable machine file is unknown", Options{MachineTypeFile: "/nonexistent/product_name"},
			Labels{"nvidia.com/gpu.machine": "unknown"}, nil, ""},
		{"machine name is sanitised", Options{MachineTypeFile: machineFile(t, "DGX H100 (rev #2)\n")},
			Labels{"nvidia.com/gpu.machine": "DGX-H100-rev-2"}, nil, ""},
		{"no timestamp", Options{NoTimestamp: true}, nil, []string{TimestampKey}, ""},
		{"extra wins", Options{Extra: map[string]string{"accelerator": "nvidia", "nvidia.com/gpu.product": "custom"}},
			Labels{"accelerator": "nvidia", "nvidia.com/gpu.product": "custom"}, nil, ""},
		{"invalid extra key", Options{Extra: map[string]string{"bad key": "x"}}, nil, nil, `label key "bad key" is invalid`},
		{"invalid extra value", Options{Extra: map[string]string{"a": "no spaces"}}, nil, nil, `label a="no spaces" has an invalid value`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Now = fixedNow
			got, err := Compute(snap, tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
			for _, k := range tt.absent {
				if _, ok := got[k]; ok {
					t.Errorf("%s present, want absent", k)
				}
			}
		})
	}
}

func TestVersions(t *testing.T) {
	tests := []struct {
		driver, cuda string
		wantRev      string
		wantErr      bool
	}{
		{"550.107.02", "12.5", "02", false},
		{"550.107", "12.5", "", false},
		{"550", "12.5", "", true},
		{"1.2.3.4", "12.5", "", true},
		{"550.107.02", "12", "", true},
		{"550.107.02", "x.y", "", true},
	}
	for _, tt := range tests {
		l, err := versionLabels(&inventory.Node{DriverVersion: tt.driver, CUDADriverVersion: tt.cuda})
		if (err != nil) != tt.wantErr {
			t.Errorf("%s/%s: err = %v, want error %v", tt.driver, tt.cuda, err, tt.wantErr)
			continue
		}
		if err == nil && l["nvidia.com/cuda.driver.rev"] != tt.wantRev {
			t.Errorf("%s: rev = %q, want %q", tt.driver, l["nvidia.com/cuda.driver.rev"], tt.wantRev)
		}
	}
}

func TestNoGPUsOnlyTimestampAndExtra(t *testing.T) {
	got, err := Compute(inventory.NewStore(&inventory.Node{}).Snapshot(), Options{Now: fixedNow, Extra: map[string]string{"accelerator": "nvidia"}})
	if err != nil {
		t.Fatal(err)
	}
	assertLabels(t, got, Labels{TimestampKey: "1724632719", "accelerator": "nvidia"})
}

func TestFormatAndWriteFile(t *testing.T) {
	l := Labels{"nvidia.com/gpu.count": "8", "accelerator": "nvidia", "nvidia.com/gpu.a": ""}
	var buf bytes.Buffer
	if err := l.Format(&buf); err != nil {
		t.Fatal(err)
	}
	want := "accelerator=nvidia\nnvidia.com/gpu.a=\nnvidia.com/gpu.count=8\n"
	if buf.String() != want {
		t.Errorf("Format = %q, want %q", buf.String(), want)
	}
	path := filepath.Join(t.TempDir(), "features.d", "gfd")
	if err := l.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil || string(data) != want {
		t.Fatalf("file = %q, %v; want %q", data, err, want)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("folder holds %d entries, want only the labels file (no temporary left)", len(entries))
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v, want 0644", fi.Mode().Perm())
	}
}

func TestSanitise(t *testing.T) {
	for in, want := range map[string]string{
		"NVIDIA H100 80GB HBM3":  "NVIDIA-H100-80GB-HBM3",
		"Tesla T4":               "Tesla-T4",
		"  A100-SXM4-40GB  ":     "A100-SXM4-40GB",
		"NVIDIA RTX A6000 (tm)!": "NVIDIA-RTX-A6000-tm",
		"1g.10gb":                "1g.10gb",
		"a_b":                    "a_b",
	} {
		if got := sanitise(in); got != want {
			t.Errorf("sanitise(%q) = %q, want %q", in, got, want)
		}
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
