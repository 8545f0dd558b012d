package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/gpulet/gpulet/hack/kubeletstub/smi"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/validate"
)

func compareCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stdout)
	listPath := fs.String("list", "", "`gpulet list -o json` output")
	xmlPath := fs.String("smi-xml", "", "`nvidia-smi -q -x` output")
	csvPath := fs.String("smi-csv", "", "`nvidia-smi --query-gpu=uuid,compute_cap,... --format=csv` output (adds compute capability)")
	cudaPath := fs.String("cuda", "", "`gpulet validate -o json` output, run with every GPU visible (adds CUDA's view)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *listPath == "" || *xmlPath == "" || fs.NArg() > 0 {
		return errors.New("compare needs --list and --smi-xml, and no arguments")
	}
	views, err := loadViews(*listPath, *xmlPath, *csvPath, *cudaPath)
	if err != nil {
		return err
	}
	rows := smi.Compare(views...)
	if err := smi.WriteTable(stdout, views, rows); err != nil {
		return err
	}
	if n := smi.Mismatches(rows); n > 0 {
		return fmt.Errorf("%d fields disagree", n)
	}
	return nil
}

// loadViews reads each source into a view: nvidia-smi first, the
// reference.
func loadViews(listPath, xmlPath, csvPath, cudaPath string) ([]smi.View, error) {
	data, err := os.ReadFile(xmlPath)
	if err != nil {
		return nil, err
	}
	node, err := smi.ParseXML(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", xmlPath, err)
	}
	ref := smi.FromXML(node)
	if csvPath != "" {
		data, err := os.ReadFile(csvPath)
		if err != nil {
			return nil, err
		}
		rows, err := smi.ParseQueryCSV(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", csvPath, err)
		}
		ref.AddQuery(rows)
	}

	data, err = os.ReadFile(listPath)
	if err != nil {
		return nil, err
	}
	var listing struct {
		Node *inventory.Node `json:"node"`
	}
	if err := json.Unmarshal(data, &listing); err != nil {
		return nil, fmt.Errorf("%s: not `gpulet list -o json` output: %w", listPath, err)
	}
	if listing.Node == nil {
		return nil, fmt.Errorf("%s: no node in `gpulet list -o json` output", listPath)
	}
	views := []smi.View{ref, smi.FromInventory("gpulet list ("+listing.Node.Backend+")", listing.Node)}

	if cudaPath != "" {
		data, err := os.ReadFile(cudaPath)
		if err != nil {
			return nil, err
		}
		var r validate.Report
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("%s: not `gpulet validate -o json` output: %w", cudaPath, err)
		}
		views = append(views, cudaView(&r))
	}
	return views, nil
}

// cudaView is what CUDA reported to `gpulet validate`.
func cudaView(r *validate.Report) smi.View {
	v := smi.View{Source: "CUDA (validate)", CUDA: r.DriverVersion}
	for _, d := range r.Devices {
		g := smi.ViewGPU{UUID: d.UUID, Name: d.Name, PCIBusID: d.PCIBusID, ComputeCap: d.ComputeCapability}
		if d.MemoryBytes > 0 {
			g.MemoryMiB = strconv.FormatUint(d.MemoryBytes>>20, 10)
		}
		v.GPUs = append(v.GPUs, g)
	}
	return v
}
