package labels

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gpulet/gpulet/internal/inventory"
)

// cliqueLabels names the node's NVLink clique (GFD's IMEX label),
// <cluster UUID>.<clique ID>, when every fabric-attached GPU agrees on both;
// GPUs outside a fabric are not counted. No attached GPU, or GPUs that
// disagree, give no label, as GFD.
func cliqueLabels(n *inventory.Node, log *slog.Logger) Labels {
	clusters, cliques := map[string]bool{}, map[uint32]bool{}
	var f *inventory.Fabric
	for _, g := range n.GPUs {
		if g.Fabric == nil {
			continue
		}
		f = g.Fabric
		clusters[f.ClusterUUID] = true
		cliques[f.CliqueID] = true
	}
	if f == nil {
		return nil
	}
	if len(clusters) > 1 || len(cliques) > 1 {
		log.Warn("the GPUs are in different NVLink clusters or cliques; no gpu.clique label", "clusters", len(clusters), "cliques", len(cliques))
		return nil
	}
	return Labels{"nvidia.com/gpu.clique": f.ClusterUUID + "." + strconv.FormatUint(uint64(f.CliqueID), 10)}
}

// PCI config space offsets and IDs the vGPU check reads.
const (
	pciStatus          = 0x06
	pciStatusCapList   = 0x10
	pciCapPointer      = 0x34
	pciCapVendor       = 0x09
	nvidiaVendor       = "0x10de"
	vgpuRecordsStart   = 5  // first record in NVIDIA's vendor capability
	vgpuVersionLength  = 10 // bytes of the host driver version
	vgpuBranchLength   = 10 // bytes of the host driver branch
	pciConfigFullBytes = 256
)

// vgpuLabels says whether this machine is a vGPU guest, as GFD decides it:
// an NVIDIA PCI function whose vendor-specific capability carries the "VF"
// signature is a vGPU, and its capability records name the host's driver.
// GFD leaves the labels out when it cannot read the PCI bus (an unprivileged
// container sees only 64 bytes of config space), and so does this. The
// simulator's GPUs are not on the host's bus, and are not vGPUs.
func vgpuLabels(n *inventory.Node, sysfsRoot string, log *slog.Logger) Labels {
	if n.Backend == "sim" {
		return Labels{"nvidia.com/vgpu.present": "false"}
	}
	if sysfsRoot == "" {
		sysfsRoot = "/sys"
	}
	caps, err := nvidiaVendorCaps(filepath.Join(sysfsRoot, "bus", "pci", "devices"))
	if err != nil {
		log.Warn("cannot read the PCI bus to tell whether this is a vGPU guest; no vgpu.present label", "err", err)
		return nil
	}
	out := Labels{"nvidia.com/vgpu.present": "false"}
	for addr, c := range caps {
		if len(c) < 5 || c[3] != 'V' || c[4] != 'F' {
			continue
		}
		out["nvidia.com/vgpu.present"] = "true"
		version, branch, ok := vgpuHostDriver(c)
		if !ok {
			log.Warn("vGPU capability names no host driver", "device", addr)
			return nil // GFD fails its vGPU labels here
		}
		out["nvidia.com/vgpu.host-driver-version"] = version
		out["nvidia.com/vgpu.host-driver-branch"] = branch
	}
	return out
}

// nvidiaVendorCaps reads the vendor-specific PCI capability of every NVIDIA
// function on the bus (absent ones are left out).
func nvidiaVendorCaps(dir string) (map[string][]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, e := range entries {
		vendor, err := os.ReadFile(filepath.Join(dir, e.Name(), "vendor"))
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(string(vendor)) != nvidiaVendor {
			continue
		}
		config, err := os.ReadFile(filepath.Join(dir, e.Name(), "config"))
		if err != nil {
			return nil, err
		}
		c, err := vendorCapability(config)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.Name(), err)
		}
		if c != nil {
			out[e.Name()] = c
		}
	}
	return out, nil
}

// vendorCapability walks the PCI capability list of a config space to the
// vendor-specific capability; nil when there is none.
func vendorCapability(config []byte) ([]byte, error) {
	if len(config) < pciConfigFullBytes {
		return nil, fmt.Errorf("only %d bytes of PCI config space are readable (run privileged to read all %d)", len(config), pciConfigFullBytes)
	}
	if config[pciStatus]&pciStatusCapList == 0 {
		return nil, nil
	}
	var seen [pciConfigFullBytes]bool
	for pos := config[pciCapPointer]; pos != 0 && !seen[pos]; pos = config[pos+1] {
		seen[pos] = true
		id := config[pos]
		if id == 0xff {
			break
		}
		if int(pos)+2 >= len(config) {
			return nil, errors.New("PCI capability list runs past the config space")
		}
		if id == pciCapVendor {
			end := int(pos) + int(config[pos+2])
			if end > len(config) {
				return nil, errors.New("vendor capability runs past the config space")
			}
			return config[pos:end], nil
		}
	}
	return nil, nil
}

// vgpuHostDriver finds the host driver record (id 0) among the records of
// NVIDIA's vGPU capability: 10 bytes of version, then 10 of branch.
func vgpuHostDriver(c []byte) (version, branch string, ok bool) {
	pos := vgpuRecordsStart
	for pos+1 < len(c) && c[pos] != 0 {
		if c[pos+1] == 0 {
			return "", "", false // a record of no length would loop
		}
		pos += int(c[pos+1])
	}
	start := pos + 2
	if pos >= len(c) || start+vgpuVersionLength+vgpuBranchLength > len(c) {
		return "", "", false
	}
	trim := func(b []byte) string { return string(bytes.Trim(b, "\x00")) }
	return trim(c[start : start+vgpuVersionLength]), trim(c[start+vgpuVersionLength : start+vgpuVersionLength+vgpuBranchLength]), true
}
