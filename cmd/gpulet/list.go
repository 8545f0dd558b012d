package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/daemon"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// listing is what `gpulet list -o json|yaml` prints.
type listing struct {
	Node      *inventory.Node             `json:"node"`
	Health    map[string]inventory.Health `json:"health"`
	Resources []listedResource            `json:"resources"`
	// Live is each GPU's sampled utilisation, memory and holders (top.go).
	Live map[string]liveDevice `json:"live,omitempty"`
}

type listedResource struct {
	Name    string         `json:"name"`
	Count   int            `json:"count"`
	Healthy int            `json:"healthy"`
	Devices []listedDevice `json:"devices"`
}

type listedDevice struct {
	ID      string `json:"id"`
	Healthy bool   `json:"healthy"`
	Reason  string `json:"reason,omitempty"`
	NUMA    int    `json:"numa"`
}

func newListCmd() *cobra.Command {
	cfg := &config.Config{}
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Show the node's GPUs, their links and health, and what would be advertised",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd, cfg); err != nil {
				return err
			}
			switch output {
			case "table", "json", "yaml":
			default:
				return fmt.Errorf("output %q is not one of table, json, yaml", output)
			}
			l, err := buildListing(cmd.Context(), cfg, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return printListing(cmd.OutOrStdout(), l, output)
		},
	}
	cfg.BackendFlags(cmd.Flags(), "auto")
	cfg.PodResourcesFlag(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json, yaml")
	return cmd
}

// buildListing reads the node as `gpulet run` would see it, probes each GPU,
// and adds live telemetry and the pods holding each GPU where the backend and
// kubelet provide them; warnings about the MIG layout go to warn.
func buildListing(ctx context.Context, cfg *config.Config, warn io.Writer) (listing, error) {
	backend, store, err := probedNode(ctx, cfg)
	if err != nil {
		return listing{}, err
	}
	defer backend.Close()
	node := store.Snapshot().Node
	// Show what `gpulet run` would refuse or warn of, not a list it never serves.
	warnings, err := resources.CheckMIG(node, cfg.MIGStrategy)
	if err != nil {
		return listing{}, fmt.Errorf("gpulet run would refuse this node: invalid MIG configuration: %w", err)
	}
	for _, w := range warnings {
		fmt.Fprintf(warn, "warning: %s\n", w)
	}
	snap := store.Snapshot()
	l := listing{Node: node, Health: snap.Health}
	built := resources.Build(snap, daemon.ResourcesConfig(cfg))
	l.Live = live(ctx, backend, node, built, cfg.PodResourcesSocket)
	for _, r := range built {
		lr := listedResource{Name: r.Name, Count: len(r.Devices)}
		for _, d := range r.Devices {
			if d.Healthy {
				lr.Healthy++
			}
			lr.Devices = append(lr.Devices, listedDevice{ID: d.ID, Healthy: d.Healthy, Reason: d.Reason, NUMA: d.NUMA})
		}
		l.Resources = append(l.Resources, lr)
	}
	return l, nil
}

func printListing(out io.Writer, l listing, output string) error {
	switch output {
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(l)
	case "yaml":
		b, err := yaml.Marshal(l)
		if err != nil {
			return err
		}
		_, err = out.Write(b)
		return err
	}
	return printTable(out, l)
}

func printTable(out io.Writer, l listing) error {
	n := l.Node
	fmt.Fprintf(out, "Backend: %s", n.Backend)
	if n.Profile != "" {
		fmt.Fprintf(out, " (profile %s)", n.Profile)
	}
	fmt.Fprintf(out, "   Driver: %s   CUDA: %s   Devices: %s\n\n", n.DriverVersion, n.CUDADriverVersion, n.DevRoot)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tUUID\tNAME\tMEMORY\tCC\tBUS ID\tNUMA\tMIG\tHEALTH\tUTIL\tMEM USED\tPOD")
	for _, g := range n.GPUs {
		mig := "n/a"
		if g.MIGCapable {
			mig = "disabled"
		}
		if g.MIGEnabled {
			mig = fmt.Sprintf("%d instances", len(g.MIGDevices))
		}
		health := "healthy"
		if h, ok := l.Health[g.UUID]; ok && !h.Healthy {
			health = "UNHEALTHY: " + h.Reason
		}
		numa := "-"
		if g.NUMANode >= 0 {
			numa = fmt.Sprint(g.NUMANode)
		}
		util, used, pod := l.Live[g.UUID].columns()
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d MiB\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.Index, g.UUID, g.Name, g.MemoryBytes>>20,
			g.ComputeCapability, g.PCIBusID, numa, mig, health, util, used, pod)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(n.GPUs) > 1 && len(n.Links) == len(n.GPUs) {
		fmt.Fprintln(out, "\nTopology (NV# = bonded NVLinks, else PCIe level):")
		tw = tabwriter.NewWriter(out, 0, 4, 1, ' ', 0)
		hdr := []string{""}
		for i := range n.GPUs {
			hdr = append(hdr, fmt.Sprintf("GPU%d", i))
		}
		fmt.Fprintln(tw, strings.Join(hdr, "\t"))
		for i := range n.GPUs {
			row := []string{fmt.Sprintf("GPU%d", i)}
			for j := range n.GPUs {
				l := n.Link(i, j)
				switch {
				case i == j:
					row = append(row, "X")
				case l.NVLinks > 0:
					row = append(row, fmt.Sprintf("NV%d", l.NVLinks))
				default:
					row = append(row, l.PCIe.String())
				}
			}
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "\nAdvertised resources:")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tCAPACITY\tALLOCATABLE")
	for _, r := range l.Resources {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", r.Name, r.Count, r.Healthy)
	}
	return tw.Flush()
}
