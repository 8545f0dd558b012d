// Package smi reads what nvidia-smi says about a node (`nvidia-smi -q -x`,
// `nvidia-smi --query-gpu=... --format=csv`) and compares it, field by field,
// with gpulet's own view of the node: the NVML backend's on a real node, the
// simulator profile that claims to copy one, or CUDA's as `gpulet validate`
// reports it. It is how we check gpulet against NVIDIA's tool.
package smi

import (
	"bytes"
	"encoding/csv"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Node is the part of `nvidia-smi -q -x` gpulet compares against.
type Node struct {
	DriverVersion string
	CUDAVersion   string
	GPUs          []GPU
}

// GPU is one <gpu> of `nvidia-smi -q -x`.
type GPU struct {
	UUID         string
	Name         string
	Architecture string
	PCIBusID     string
	Serial       string
	// MemoryMiB is the framebuffer total.
	MemoryMiB uint64
	// Minor is N of /dev/nvidiaN; -1 when nvidia-smi says N/A.
	Minor int
	// MIGCurrent and MIGPending are Enabled, Disabled, or N/A for a GPU
	// without MIG.
	MIGCurrent string
	MIGPending string
}

// xmlLog mirrors the elements of nvidia_smi_log we read; the DTD is
// nvsmi_device_v13.dtd, and older versions name these the same.
type xmlLog struct {
	XMLName       xml.Name `xml:"nvidia_smi_log"`
	DriverVersion string   `xml:"driver_version"`
	CUDAVersion   string   `xml:"cuda_version"`
	AttachedGPUs  string   `xml:"attached_gpus"`
	GPUs          []xmlGPU `xml:"gpu"`
}

type xmlGPU struct {
	ID           string `xml:"id,attr"`
	ProductName  string `xml:"product_name"`
	Architecture string `xml:"product_architecture"`
	UUID         string `xml:"uuid"`
	Serial       string `xml:"serial"`
	MinorNumber  string `xml:"minor_number"`
	MIGMode      struct {
		Current string `xml:"current_mig"`
		Pending string `xml:"pending_mig"`
	} `xml:"mig_mode"`
	PCI struct {
		BusID string `xml:"pci_bus_id"`
	} `xml:"pci"`
	FBMemory struct {
		Total string `xml:"total"`
	} `xml:"fb_memory_usage"`
}

// ParseXML reads `nvidia-smi -q -x`. It refuses a document that is not an
// nvidia_smi_log, a GPU without a UUID, and values it cannot read, naming
// the GPU and the element.
func ParseXML(data []byte) (*Node, error) {
	var l xmlLog
	d := xml.NewDecoder(bytes.NewReader(data))
	// nvidia-smi writes <?xml version="1.0" ?> without an encoding; refuse
	// any other than UTF-8 instead of failing obscurely.
	d.CharsetReader = func(charset string, r io.Reader) (io.Reader, error) {
		if strings.EqualFold(charset, "utf-8") || strings.EqualFold(charset, "us-ascii") {
			return r, nil
		}
		return nil, fmt.Errorf("unsupported charset %q", charset)
	}
	if err := d.Decode(&l); err != nil {
		return nil, fmt.Errorf("nvidia-smi XML: %w", err)
	}
	n := &Node{DriverVersion: strings.TrimSpace(l.DriverVersion), CUDAVersion: strings.TrimSpace(l.CUDAVersion)}
	if att := strings.TrimSpace(l.AttachedGPUs); att != "" {
		count, err := strconv.Atoi(att)
		if err != nil {
			return nil, fmt.Errorf("nvidia-smi XML: attached_gpus %q is not a number", att)
		}
		if count != len(l.GPUs) {
			return nil, fmt.Errorf("nvidia-smi XML: attached_gpus is %d but %d <gpu> elements follow", count, len(l.GPUs))
		}
	}
	for i, x := range l.GPUs {
		g := GPU{
			UUID:         strings.TrimSpace(x.UUID),
			Name:         strings.TrimSpace(x.ProductName),
			Architecture: strings.TrimSpace(x.Architecture),
			PCIBusID:     strings.TrimSpace(x.PCI.BusID),
			Serial:       strings.TrimSpace(x.Serial),
			MIGCurrent:   strings.TrimSpace(x.MIGMode.Current),
			MIGPending:   strings.TrimSpace(x.MIGMode.Pending),
			Minor:        -1,
		}
		if g.UUID == "" {
			return nil, fmt.Errorf("nvidia-smi XML: gpu %d (%s) has no uuid", i, x.ID)
		}
		if g.PCIBusID == "" {
			g.PCIBusID = strings.TrimSpace(x.ID)
		}
		if g.MIGCurrent == "" {
			g.MIGCurrent = "N/A"
		}
		if g.MIGPending == "" {
			g.MIGPending = "N/A"
		}
		var err error
		if g.MemoryMiB, err = parseMiB(x.FBMemory.Total); err != nil {
			return nil, fmt.Errorf("nvidia-smi XML: gpu %s: fb_memory_usage/total: %w", g.UUID, err)
		}
		if m := strings.TrimSpace(x.MinorNumber); m != "" && m != "N/A" {
			if g.Minor, err = strconv.Atoi(m); err != nil || g.Minor < 0 {
				return nil, fmt.Errorf("nvidia-smi XML: gpu %s: minor_number %q is not a device minor", g.UUID, m)
			}
		}
		n.GPUs = append(n.GPUs, g)
	}
	return n, nil
}

// parseMiB reads "143771 MiB".
func parseMiB(s string) (uint64, error) {
	f := strings.Fields(s)
	if len(f) != 2 || f[1] != "MiB" {
		return 0, fmt.Errorf("%q is not a size in MiB", s)
	}
	v, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size in MiB", s)
	}
	return v, nil
}

// ParseQueryCSV reads `nvidia-smi --query-gpu=... --format=csv` (with its
// header line) into one map per GPU, keyed by the query field names without
// their unit ("memory.total [MiB]" is "memory.total").
func ParseQueryCSV(data []byte) ([]map[string]string, error) {
	r := csv.NewReader(bytes.NewReader(data))
	r.TrimLeadingSpace = true
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("nvidia-smi CSV: %w", err)
	}
	if len(rows) == 0 {
		return nil, errors.New("nvidia-smi CSV: empty (want a header line, as --format=csv prints)")
	}
	header := make([]string, len(rows[0]))
	for i, h := range rows[0] {
		h = strings.TrimSpace(h)
		if j := strings.Index(h, " ["); j > 0 {
			h = h[:j]
		}
		header[i] = h
	}
	out := make([]map[string]string, 0, len(rows)-1)
	for _, row := range rows[1:] {
		m := make(map[string]string, len(row))
		for i, v := range row {
			m[header[i]] = strings.TrimSpace(v)
		}
		out = append(out, m)
	}
	return out, nil
}
