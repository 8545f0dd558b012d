//go:build cgo && linux

package nvml

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpulet/gpulet/internal/inventory"
)

// Discover reads every GPU, its MIG devices and the links between GPUs.
func (b *Backend) Discover(ctx context.Context) (*inventory.Node, error) {
	return b.discover(ctx, true)
}

// DiscoverDevices is Discover without the link scan, most of its NVML
// calls (hardware.LinkDeferrer); Links reads them afterwards.
func (b *Backend) DiscoverDevices(ctx context.Context) (*inventory.Node, error) {
	return b.discover(ctx, false)
}

// Links reads the links between the GPUs of a node DiscoverDevices returned.
func (b *Backend) Links(ctx context.Context, node *inventory.Node) ([][]inventory.Link, error) {
	handles := make([]nvml.Device, len(node.GPUs))
	for i, g := range node.GPUs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := call(b, fmt.Sprintf("DeviceGetHandleByIndex(%d)", g.Index), func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByIndex(g.Index) })
		if err != nil {
			return nil, fmt.Errorf("GPU %d: %w", g.Index, err)
		}
		handles[i] = h
	}
	links, err := b.links(handles, node.GPUs)
	if err != nil {
		return nil, fmt.Errorf("GPU topology: %w", err)
	}
	return links, nil
}

func (b *Backend) discover(ctx context.Context, withLinks bool) (*inventory.Node, error) {
	n := &inventory.Node{Backend: "nvml", DevRoot: b.devRoot, LinksPending: !withLinks}
	var err error
	if n.DriverVersion, err = call(b, "SystemGetDriverVersion", b.lib.SystemGetDriverVersion); err != nil {
		return nil, err
	}
	cuda, err := call(b, "SystemGetCudaDriverVersion", b.lib.SystemGetCudaDriverVersion)
	if err != nil {
		return nil, err
	}
	n.CUDADriverVersion = fmt.Sprintf("%d.%d", cuda/1000, (cuda%1000)/10)
	count, err := call(b, "DeviceGetCount", b.lib.DeviceGetCount)
	if err != nil {
		return nil, err
	}
	if count == 0 {
		return nil, errors.New("NVML loaded but reports no GPUs: check `nvidia-smi -L` on the node; GPUs excluded by the driver or bound to vfio are not visible")
	}
	handles := make([]nvml.Device, count)
	for i := 0; i < count; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := call(b, fmt.Sprintf("DeviceGetHandleByIndex(%d)", i), func() (nvml.Device, nvml.Return) { return b.lib.DeviceGetHandleByIndex(i) })
		if err != nil {
			return nil, err
		}
		handles[i] = h
		g, err := b.gpu(i, h)
		if err != nil {
			return nil, fmt.Errorf("GPU %d: %w", i, err)
		}
		n.GPUs = append(n.GPUs, g)
	}
	if withLinks {
		if n.Links, err = b.links(handles, n.GPUs); err != nil {
			return nil, fmt.Errorf("GPU topology: %w", err)
		}
	}
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("NVML inventory is inconsistent: %w", err)
	}
	b.mu.Lock()
	b.node = n
	b.mu.Unlock()
	return n, nil
}

func (b *Backend) gpu(i int, h nvml.Device) (inventory.GPU, error) {
	g := inventory.GPU{Index: i, NUMANode: -1}
	var err error
	if g.UUID, err = call(b, "GetUUID", h.GetUUID); err != nil {
		return g, err
	}
	if g.Name, err = call(b, "GetName", h.GetName); err != nil {
		return g, err
	}
	if g.Minor, err = call(b, "GetMinorNumber", h.GetMinorNumber); err != nil {
		return g, err
	}
	mem, err := call(b, "GetMemoryInfo", h.GetMemoryInfo)
	if err != nil {
		return g, err
	}
	g.MemoryBytes = mem.Total
	cc, err := call(b, "GetCudaComputeCapability", func() ([2]int, nvml.Return) {
		major, minor, ret := h.GetCudaComputeCapability()
		return [2]int{major, minor}, ret
	})
	if err != nil {
		return g, err
	}
	g.ComputeCapability = fmt.Sprintf("%d.%d", cc[0], cc[1])
	pci, err := call(b, "GetPciInfo", h.GetPciInfo)
	if err != nil {
		return g, err
	}
	g.PCIBusID = busID(pci)
	numa, err := call(b, "GetNumaNodeId", h.GetNumaNodeId)
	switch {
	case hung(err) != nil:
		return g, err
	case err == nil && numa >= 0:
		g.NUMANode = numa
	default:
		g.NUMANode = b.sysfsNUMA(g.PCIBusID)
	}
	s, err := call(b, "GetSerial", h.GetSerial)
	if hung(err) != nil {
		return g, err
	} else if err == nil {
		g.Serial = s
	}
	a, err := call(b, "GetArchitecture", h.GetArchitecture)
	if hung(err) != nil {
		return g, err
	} else if err == nil {
		g.Architecture = archName(a)
	}
	brand, err := call(b, "GetBrand", h.GetBrand)
	if hung(err) != nil {
		return g, err
	} else if err == nil {
		g.Brand = brandName(brand)
	}
	// The addressing-mode query is newer than some drivers: only where
	// the library has it (as NVIDIA's go-nvlib checks), best effort.
	if ext, ok := b.lib.(interface{ Extensions() nvml.ExtendedInterface }); ok {
		if ext.Extensions().LookupSymbol("nvmlDeviceGetAddressingMode") == nil {
			am, err := call(b, "GetAddressingMode", h.GetAddressingMode)
			if hung(err) != nil {
				return g, err
			} else if err == nil {
				g.AddressingMode = addressingModeName(am.Value)
			}
		}
	}
	mode, err := call(b, "GetMigMode", func() (int, nvml.Return) {
		cur, _, ret := h.GetMigMode()
		return cur, ret
	})
	switch {
	case err == nil:
		g.MIGCapable = true
		g.MIGEnabled = mode == nvml.DEVICE_MIG_ENABLE
	case !unsupported(err):
		return g, err
	}
	if g.MIGEnabled {
		if g.MIGDevices, err = b.migDevices(h, g.MemoryBytes); err != nil {
			return g, err
		}
	}
	if g.Fabric, err = b.fabric(h); err != nil {
		return g, err
	}
	return g, nil
}

// fabric reads the GPU's NVLink fabric membership. A GPU counts as attached,
// as NVIDIA's go-nvlib decides it, only when the fabric manager finished
// (state completed, status success) and named a cluster; anything else,
// drivers without the query included, is no fabric. Only a wedged driver
// fails it.
func (b *Backend) fabric(h nvml.Device) (*inventory.Fabric, error) {
	type info struct {
		cluster       [16]uint8
		status, state uint32
		clique        uint32
	}
	var query func() (info, nvml.Return)
	switch {
	case b.hasSymbol("nvmlDeviceGetGpuFabricInfo"):
		query = func() (info, nvml.Return) {
			i, ret := h.GetGpuFabricInfo()
			return info{i.ClusterUuid, i.Status, uint32(i.State), i.CliqueId}, ret
		}
	case b.hasSymbol("nvmlDeviceGetGpuFabricInfoV"):
		query = func() (info, nvml.Return) {
			i, ret := h.GetGpuFabricInfoV().V2()
			return info{i.ClusterUuid, i.Status, uint32(i.State), i.CliqueId}, ret
		}
	default:
		return nil, nil
	}
	i, err := call(b, "GetGpuFabricInfo", query)
	if err != nil {
		return nil, hung(err)
	}
	if i.state != nvml.GPU_FABRIC_STATE_COMPLETED || nvml.Return(i.status) != nvml.SUCCESS || i.cluster == [16]uint8{} {
		return nil, nil
	}
	u := i.cluster
	return &inventory.Fabric{
		ClusterUUID: fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]),
		CliqueID:    i.clique,
	}, nil
}

// hasSymbol says whether the loaded library exports an NVML function:
// calling one it lacks would crash the process.
func (b *Backend) hasSymbol(name string) bool {
	ext := b.lib.Extensions()
	return ext != nil && ext.LookupSymbol(name) == nil
}

// busID is the GPU's PCI address as NVML writes it (00000000:07:00.0).
func busID(p nvml.PciInfo) string {
	for _, s := range [][]int8{p.BusId[:], p.BusIdLegacy[:]} {
		var sb strings.Builder
		for _, c := range s {
			if c == 0 {
				break
			}
			sb.WriteByte(byte(c))
		}
		if sb.Len() > 0 {
			return sb.String()
		}
	}
	return fmt.Sprintf("%08X:%02X:%02X.0", p.Domain, p.Bus, p.Device)
}

// normBusID writes a PCI address as sysfs names it: lower case, the domain
// in at least four hex digits (NVML's 00000000:07:00.0 is 0000:07:00.0).
func normBusID(bus string) string {
	id := strings.ToLower(strings.TrimSpace(bus))
	dom, rest, ok := strings.Cut(id, ":")
	if !ok || !strings.Contains(rest, ":") {
		return id // no domain
	}
	d, err := strconv.ParseUint(dom, 16, 32)
	if err != nil {
		return id
	}
	return fmt.Sprintf("%04x:%s", d, rest)
}

// sysfsNUMA reads the NUMA node from sysfs when NVML does not know it.
func (b *Backend) sysfsNUMA(bus string) int {
	data, err := os.ReadFile(filepath.Join(b.sysRoot, "sys/bus/pci/devices", normBusID(bus), "numa_node"))
	if err != nil {
		return -1
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || v < 0 {
		return -1
	}
	return v
}

// brandName spells NVML's brand as NVIDIA's go-nvlib does (the value of
// the brand attribute NVIDIA's DRA driver publishes); "" when unknown.
func brandName(b nvml.BrandType) string {
	names := map[nvml.BrandType]string{
		nvml.BRAND_UNKNOWN: "Unknown", nvml.BRAND_QUADRO: "Quadro", nvml.BRAND_TESLA: "Tesla", nvml.BRAND_NVS: "NVS",
		nvml.BRAND_GRID: "Grid", nvml.BRAND_GEFORCE: "GeForce", nvml.BRAND_TITAN: "Titan",
		nvml.BRAND_NVIDIA_VAPPS: "NvidiaVApps", nvml.BRAND_NVIDIA_VPC: "NvidiaVPC", nvml.BRAND_NVIDIA_VCS: "NvidiaVCS",
		nvml.BRAND_NVIDIA_VWS: "NvidiaVWS", nvml.BRAND_NVIDIA_CLOUD_GAMING: "NvidiaCloudGaming",
		nvml.BRAND_QUADRO_RTX: "QuadroRTX", nvml.BRAND_NVIDIA_RTX: "NvidiaRTX", nvml.BRAND_NVIDIA: "Nvidia",
		nvml.BRAND_GEFORCE_RTX: "GeForceRTX", nvml.BRAND_TITAN_RTX: "TitanRTX",
	}
	return names[b]
}

// addressingModeName spells NVML's addressing mode as go-nvlib does.
func addressingModeName(v uint32) string {
	switch nvml.DeviceAddressingModeType(v) {
	case nvml.DEVICE_ADDRESSING_MODE_ATS:
		return "ATS"
	case nvml.DEVICE_ADDRESSING_MODE_HMM:
		return "HMM"
	case nvml.DEVICE_ADDRESSING_MODE_NONE:
		return "None"
	}
	return ""
}

func archName(a nvml.DeviceArchitecture) string {
	names := map[nvml.DeviceArchitecture]string{
		nvml.DEVICE_ARCH_KEPLER: "Kepler", nvml.DEVICE_ARCH_MAXWELL: "Maxwell", nvml.DEVICE_ARCH_PASCAL: "Pascal",
		nvml.DEVICE_ARCH_VOLTA: "Volta", nvml.DEVICE_ARCH_TURING: "Turing", nvml.DEVICE_ARCH_AMPERE: "Ampere",
		nvml.DEVICE_ARCH_ADA: "Ada Lovelace", nvml.DEVICE_ARCH_HOPPER: "Hopper", nvml.DEVICE_ARCH_BLACKWELL: "Blackwell",
		nvml.DEVICE_ARCH_RUBIN: "Rubin",
	}
	if s, ok := names[a]; ok {
		return s
	}
	return fmt.Sprintf("arch-%d", a)
}
