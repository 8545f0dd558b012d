package smi

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/gpulet/gpulet/internal/inventory"
)

// View is one source's account of a node, reduced to the fields the
// sources share. An empty string is a field the source does not report;
// it is shown but not compared.
type View struct {
	Source string
	Driver string
	CUDA   string
	GPUs   []ViewGPU
}

// ViewGPU is one GPU in a View.
type ViewGPU struct {
	UUID       string
	Name       string
	MemoryMiB  string
	PCIBusID   string
	Minor      string
	MIGMode    string // Enabled, Disabled, N/A
	ComputeCap string
}

// FromXML is nvidia-smi's view, from `nvidia-smi -q -x`.
func FromXML(n *Node) View {
	v := View{Source: "nvidia-smi", Driver: n.DriverVersion, CUDA: n.CUDAVersion}
	for _, g := range n.GPUs {
		minor := ""
		if g.Minor >= 0 {
			minor = strconv.Itoa(g.Minor)
		}
		v.GPUs = append(v.GPUs, ViewGPU{
			UUID: g.UUID, Name: g.Name, MemoryMiB: strconv.FormatUint(g.MemoryMiB, 10),
			PCIBusID: g.PCIBusID, Minor: minor, MIGMode: g.MIGCurrent,
		})
	}
	return v
}

// AddQuery fills the fields `nvidia-smi -q -x` lacks (compute capability)
// from `nvidia-smi --query-gpu=uuid,compute_cap,... --format=csv` rows.
func (v *View) AddQuery(rows []map[string]string) {
	for i := range v.GPUs {
		for _, r := range rows {
			if strings.EqualFold(r["uuid"], v.GPUs[i].UUID) && v.GPUs[i].ComputeCap == "" {
				v.GPUs[i].ComputeCap = r["compute_cap"]
			}
		}
	}
}

// FromInventory is gpulet's view: `gpulet list`'s node, or a simulator
// profile's.
func FromInventory(source string, n *inventory.Node) View {
	v := View{Source: source, Driver: n.DriverVersion, CUDA: n.CUDADriverVersion}
	for _, g := range n.GPUs {
		mig := "N/A"
		switch {
		case g.MIGEnabled:
			mig = "Enabled"
		case g.MIGCapable:
			mig = "Disabled"
		}
		v.GPUs = append(v.GPUs, ViewGPU{
			UUID: g.UUID, Name: g.Name, MemoryMiB: strconv.FormatUint(g.MemoryBytes>>20, 10),
			PCIBusID: g.PCIBusID, Minor: strconv.Itoa(g.Minor), MIGMode: mig, ComputeCap: g.ComputeCapability,
		})
	}
	return v
}

// Row is one compared field.
type Row struct {
	GPU    string   // the GPU's UUID; empty for node-wide fields
	Field  string   // uuid, name, memory (MiB), ...
	Values []string // one per view, in Compare's order; "" not reported
	Status string   // ok, MISMATCH, or "-" when fewer than two views report it
}

// OK reports whether the row does not disagree.
func (r Row) OK() bool { return r.Status != StatusMismatch }

// Row statuses.
const (
	StatusOK       = "ok"
	StatusMismatch = "MISMATCH"
	StatusUnknown  = "-"
)

// absent marks a GPU a view does not have at all.
const absent = "(absent)"

type field struct {
	name string
	get  func(ViewGPU) string
	norm func(string) string
}

var fields = []field{
	{"uuid", func(g ViewGPU) string { return g.UUID }, uuidKey},
	{"name", func(g ViewGPU) string { return g.Name }, strings.TrimSpace},
	{"memory (MiB)", func(g ViewGPU) string { return g.MemoryMiB }, strings.TrimSpace},
	{"pci bus id", func(g ViewGPU) string { return g.PCIBusID }, NormalizeBusID},
	{"minor", func(g ViewGPU) string { return g.Minor }, strings.TrimSpace},
	{"mig mode", func(g ViewGPU) string { return g.MIGMode }, strings.ToLower},
	{"compute capability", func(g ViewGPU) string { return g.ComputeCap }, strings.TrimSpace},
}

// Compare lines the views up field by field: node-wide fields first, then
// every GPU any view has, matched by UUID.
func Compare(views ...View) []Row {
	var rows []Row
	node := func(name string, get func(View) string) {
		r := Row{Field: name}
		for _, v := range views {
			r.Values = append(r.Values, get(v))
		}
		r.Status = status(r.Values, strings.TrimSpace)
		rows = append(rows, r)
	}
	node("driver version", func(v View) string { return v.Driver })
	node("cuda version", func(v View) string { return v.CUDA })
	node("gpu count", func(v View) string { return strconv.Itoa(len(v.GPUs)) })

	var order []string
	seen := map[string]bool{}
	for _, v := range views {
		for _, g := range v.GPUs {
			k := uuidKey(g.UUID)
			if !seen[k] {
				seen[k] = true
				order = append(order, g.UUID)
			}
		}
	}
	for _, id := range order {
		gs := make([]*ViewGPU, len(views))
		for i, v := range views {
			for j := range v.GPUs {
				if uuidKey(v.GPUs[j].UUID) == uuidKey(id) {
					gs[i] = &v.GPUs[j]
					break
				}
			}
		}
		for _, f := range fields {
			r := Row{GPU: id, Field: f.name}
			for _, g := range gs {
				switch {
				case g == nil && f.name == "uuid":
					r.Values = append(r.Values, absent)
				case g == nil:
					r.Values = append(r.Values, "")
				default:
					r.Values = append(r.Values, f.get(*g))
				}
			}
			r.Status = status(r.Values, f.norm)
			rows = append(rows, r)
		}
	}
	return rows
}

func status(values []string, norm func(string) string) string {
	var first string
	n := 0
	for _, v := range values {
		if v == "" {
			continue
		}
		if v == absent {
			return StatusMismatch
		}
		nv := norm(v)
		if n > 0 && nv != first {
			return StatusMismatch
		}
		first = nv
		n++
	}
	if n < 2 {
		return StatusUnknown
	}
	return StatusOK
}

// uuidKey compares UUIDs without their GPU-/MIG- prefix or case.
func uuidKey(id string) string {
	id = strings.ToLower(strings.TrimSpace(id))
	for _, p := range []string{"gpu-", "mig-"} {
		id = strings.TrimPrefix(id, p)
	}
	return id
}

// NormalizeBusID writes a PCI bus ID the one way: NVML and nvidia-smi give
// an 8-digit domain (00000000:00:06.0), CUDA a 4-digit one (0000:00:06.0).
func NormalizeBusID(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	dom, rest, ok := strings.Cut(s, ":")
	if !ok {
		return s
	}
	d, err := strconv.ParseUint(dom, 16, 32)
	if err != nil {
		return s
	}
	return fmt.Sprintf("%04x:%s", d, rest)
}

// Mismatches counts the rows that disagree.
func Mismatches(rows []Row) int {
	n := 0
	for _, r := range rows {
		if !r.OK() {
			n++
		}
	}
	return n
}

// WriteTable prints the comparison, one row per field.
func WriteTable(w io.Writer, views []View, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	hdr := []string{"GPU", "FIELD"}
	for _, v := range views {
		hdr = append(hdr, v.Source)
	}
	hdr = append(hdr, "STATUS")
	fmt.Fprintln(tw, strings.Join(hdr, "\t"))
	// GPUs are named gpuN in the order they first appear; the uuid row
	// gives the full UUID.
	label := map[string]string{}
	for _, r := range rows {
		if _, ok := label[r.GPU]; !ok && r.GPU != "" {
			label[r.GPU] = fmt.Sprintf("gpu%d", len(label))
		}
	}
	for _, r := range rows {
		gpu := "node"
		if r.GPU != "" {
			gpu = label[r.GPU]
		}
		cols := []string{gpu, r.Field}
		for _, v := range r.Values {
			if v == "" {
				v = "-"
			}
			cols = append(cols, v)
		}
		cols = append(cols, r.Status)
		fmt.Fprintln(tw, strings.Join(cols, "\t"))
	}
	return tw.Flush()
}
