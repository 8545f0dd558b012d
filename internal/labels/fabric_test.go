package labels

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/gpulet/gpulet/internal/inventory"
)

// pciTree writes a sysfs bus/pci/devices tree of NVIDIA functions with the
// given config spaces and returns its root.
func pciTree(t *testing.T, configs map[string][]byte) string {
	t.Helper()
	root := t.TempDir()
	for addr, config := range configs {
		dir := filepath.Join(root, "bus", "pci", "devices", addr)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{"vendor": []byte("0x10de\n"), "class": []byte("0x030200\n"), "config": config} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

// pciConfig is a 256-byte config space whose capability list holds one
// vendor-specific capability with body cap (none when cap is nil).
func pciConfig(cap []byte) []byte {
	c := make([]byte, 256)
	if cap == nil {
		return c
	}
	c[pciStatus] = pciStatusCapList
	c[pciCapPointer] = 0x40
	body := append([]byte{pciCapVendor, 0, byte(3 + len(cap))}, cap...)
	copy(c[0x40:], body)
	return c
}

// vgpuCap is NVIDIA's vGPU capability body after id, next and length: the
// "VF" signature, one record to skip, then the host driver record.
func vgpuCap(version, branch string) []byte {
	b := []byte{'V', 'F', 1, 3, 0xaa, 0, 22}
	v := make([]byte, 20)
	copy(v, version)
	copy(v[10:], branch)
	return append(b, v...)
}

func TestVGPULabels(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tests := []struct {
		name string
		root func(t *testing.T) string
		want Labels // nil: no vGPU labels at all
	}{
		{"no PCI bus readable", func(t *testing.T) string { return t.TempDir() }, nil},
		{"GPU without capabilities", func(t *testing.T) string {
			return pciTree(t, map[string][]byte{"0000:07:00.0": pciConfig(nil)})
		}, Labels{"nvidia.com/vgpu.present": "false"}},
		{"vendor capability that is not a vGPU", func(t *testing.T) string {
			return pciTree(t, map[string][]byte{"0000:07:00.0": pciConfig([]byte{'X', 'Y', 0})})
		}, Labels{"nvidia.com/vgpu.present": "false"}},
		{"vGPU guest", func(t *testing.T) string {
			return pciTree(t, map[string][]byte{"0000:07:00.0": pciConfig(vgpuCap("535.54.03", "r535_00"))})
		}, Labels{"nvidia.com/vgpu.present": "true", "nvidia.com/vgpu.host-driver-version": "535.54.03", "nvidia.com/vgpu.host-driver-branch": "r535_00"}},
		{"unprivileged: 64 bytes of config space", func(t *testing.T) string {
			return pciTree(t, map[string][]byte{"0000:07:00.0": make([]byte, 64)})
		}, nil},
		{"simulated node", func(t *testing.T) string {
			return pciTree(t, map[string][]byte{"0000:07:00.0": pciConfig(vgpuCap("535.54.03", "r535_00"))})
		}, Labels{"nvidia.com/vgpu.present": "false"}},
		{"vGPU capability without a host driver record", func(t *testing.T) string {
			return pciTree(t, map[string][]byte{"0000:07:00.0": pciConfig([]byte{'V', 'F', 1, 3, 0})})
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			backend := "nvml"
			if tt.name == "simulated node" {
				backend = "sim"
			}
			got := vgpuLabels(&inventory.Node{Backend: backend}, tt.root(t), log)
			if tt.want == nil {
				if got != nil {
					t.Fatalf("got %v, want no vGPU labels", got)
				}
				return
			}
			assertLabels(t, got, tt.want)
		})
	}
}

func TestCliqueLabels(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a := &inventory.Fabric{ClusterUUID: "00000000-0000-0000-0000-000000000001", CliqueID: 7}
	tests := []struct {
		name    string
		fabrics []*inventory.Fabric
		want    string // "" means no label
	}{
		{"no fabric", []*inventory.Fabric{nil, nil}, ""},
		{"all attached", []*inventory.Fabric{a, a}, "00000000-0000-0000-0000-000000000001.7"},
		{"unattached GPUs do not count", []*inventory.Fabric{nil, a}, "00000000-0000-0000-0000-000000000001.7"},
		{"two cliques", []*inventory.Fabric{a, {ClusterUUID: a.ClusterUUID, CliqueID: 8}}, ""},
		{"two clusters", []*inventory.Fabric{a, {ClusterUUID: "00000000-0000-0000-0000-000000000002", CliqueID: 7}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := &inventory.Node{}
			for i, f := range tt.fabrics {
				n.GPUs = append(n.GPUs, inventory.GPU{Index: i, Fabric: f})
			}
			got := cliqueLabels(n, log)["nvidia.com/gpu.clique"]
			if got != tt.want {
				t.Fatalf("gpu.clique = %q, want %q", got, tt.want)
			}
		})
	}
}
