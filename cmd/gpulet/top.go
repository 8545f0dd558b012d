package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/podresources"
	"github.com/gpulet/gpulet/internal/resources"
)

// liveDevice is what `gpulet list` and `gpulet top` show beside a GPU.
type liveDevice struct {
	Util      *float64             `json:"utilPercent,omitempty"`
	FBUsedMiB *float64             `json:"memoryUsedMiB,omitempty"`
	Pods      []podresources.Owner `json:"pods,omitempty"`
}

func (d liveDevice) columns() (util, used, pod string) {
	util, used, pod = "-", "-", "-"
	if d.Util != nil {
		util = fmt.Sprintf("%.0f%%", *d.Util)
	}
	if d.FBUsedMiB != nil {
		used = fmt.Sprintf("%.0f MiB", *d.FBUsedMiB)
	}
	var pods []string
	for _, o := range d.Pods {
		pods = append(pods, o.Namespace+"/"+o.Pod+"/"+o.Container)
	}
	if len(pods) > 0 {
		pod = strings.Join(pods, ",")
	}
	return util, used, pod
}

// live samples each GPU once and asks the kubelet (when its PodResources
// socket exists) which container holds it.
func live(ctx context.Context, backend hardware.Backend, node *inventory.Node, built []resources.Resource, socket string) map[string]liveDevice {
	out := map[string]liveDevice{}
	var owners map[string][]podresources.Owner
	if _, err := os.Stat(socket); socket != "" && err == nil {
		if c, err := podresources.Dial(socket); err == nil {
			var names []string
			for _, r := range built {
				names = append(names, r.Name)
			}
			if asg, err := c.List(ctx, names...); err == nil {
				owners = podresources.ByDevice(asg, built)
			}
			c.Close()
		}
	}
	if ua, ok := backend.(hardware.UsageAware); ok {
		var inUse []string
		for u := range owners {
			inUse = append(inUse, u)
		}
		ua.SetInUse(inUse)
	}
	tel, _ := backend.(hardware.Telemetry)
	for _, g := range node.GPUs {
		d := liveDevice{Pods: owners[g.UUID]}
		for _, m := range g.MIGDevices {
			d.Pods = append(d.Pods, owners[m.UUID]...)
		}
		if tel != nil {
			if s, err := tel.Sample(ctx, g.UUID); err == nil {
				if s.Has(hardware.FieldGPUUtil) {
					d.Util = &s.GPUUtil
				}
				if s.Has(hardware.FieldFB) {
					d.FBUsedMiB = &s.FBUsedMiB
				}
			}
		}
		out[g.UUID] = d
	}
	return out
}

func newTopCmd() *cobra.Command {
	cfg := &config.Config{}
	var interval time.Duration
	var once bool
	cmd := &cobra.Command{
		Use:   "top",
		Short: "gpulet list, refreshed: each GPU's health, utilisation, memory and the pod holding it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd, cfg); err != nil {
				return err
			}
			if interval <= 0 {
				return fmt.Errorf("--interval must be positive, got %s", interval)
			}
			return top(cmd.Context(), cmd.OutOrStdout(), cfg, interval, once)
		},
	}
	cfg.BackendFlags(cmd.Flags(), "auto")
	cfg.PodResourcesFlag(cmd.Flags())
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "refresh interval")
	cmd.Flags().BoolVar(&once, "once", false, "print one view without clearing the screen and exit")
	return cmd
}

func top(ctx context.Context, out io.Writer, cfg *config.Config, interval time.Duration, once bool) error {
	for {
		l, err := buildListing(ctx, cfg, io.Discard) // a refreshing screen has no room for warnings
		if err != nil {
			return err
		}
		if !once {
			fmt.Fprint(out, "\x1b[H\x1b[2J") // home and clear: plain ANSI
		}
		fmt.Fprintf(out, "gpulet top — %s (every %s, Ctrl-C quits)\n", time.Now().Format(time.TimeOnly), interval)
		if err := printTable(out, l); err != nil || once {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}
