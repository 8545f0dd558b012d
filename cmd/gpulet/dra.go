//go:build !nokube

package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/daemon"
	"github.com/gpulet/gpulet/internal/dra"
	"github.com/gpulet/gpulet/internal/hardware"
)

func newDRACmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "dra",
		Short: "Dynamic Resource Allocation: what gpulet's gpu.nvidia.com driver publishes",
	}
	root.AddCommand(newDRASliceCmd())
	return root
}

func newDRASliceCmd() *cobra.Command {
	cfg := &config.Config{}
	var nodeName, dynamicMIG string
	cmd := &cobra.Command{
		Use:   "slice",
		Short: "Print the ResourceSlice gpulet's DRA driver would publish for this node (YAML; no cluster needed)",
		Long: `Slice reads the node as 'gpulet run --dra' does and prints the ResourceSlice
its DRA driver (gpu.nvidia.com) would publish: one device per GPU or MIG
instance with NVIDIA's names, attributes and capacities, plus gpulet's NUMA
and NVLink attributes. A GPU a probe finds unhealthy now carries a NoSchedule
taint (gpulet.io/unhealthy: a probe does not tell which XID; the daemon's
event watch publishes NVIDIA's gpu.nvidia.com/xid=<XID>). A node with more than 128 devices is published as
several slices; this prints them as one. With --dra-dynamic-mig it prints the
pool's slices as the driver publishes them: counter sets, whole GPUs, then each
GPU's MIG placements (docs/dra-mig.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd, cfg); err != nil {
				return err
			}
			if nodeName == "" {
				return fmt.Errorf("no node name: pass --node-name (the hostname could not be read)")
			}
			backend, store, err := probedNode(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer backend.Close()
			opts := dra.DeviceOptions{PCIeRoot: daemon.PCIeRoot(backend)}
			snap := store.Snapshot()
			cfg.DRA.DynamicMIG = dynamicMIG
			want, err := daemon.DynamicMIGWants(cfg, snap.Node)
			if err != nil {
				return err
			}
			if want != nil {
				mig, _ := backend.(hardware.DynamicMIG)
				opts.DynamicMIG = dra.LoadDynamicMIG(cmd.Context(), mig, snap.Node, want, slog.New(slog.DiscardHandler))
			}
			pool := dra.Pool(snap, opts)
			var out []byte
			for i, s := range pool.Slices {
				if len(pool.Slices) == 1 {
					s.Devices = dra.Devices(snap, opts) // one slice, however many devices
				}
				slice := resourceapi.ResourceSlice{
					TypeMeta:   metav1.TypeMeta{APIVersion: "resource.k8s.io/v1", Kind: "ResourceSlice"},
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%s-%d", nodeName, dra.DriverName, i)},
					Spec: resourceapi.ResourceSliceSpec{
						Driver:         dra.DriverName,
						NodeName:       &nodeName,
						Pool:           resourceapi.ResourcePool{Name: nodeName, ResourceSliceCount: int64(len(pool.Slices))},
						Devices:        s.Devices,
						SharedCounters: s.SharedCounters,
					},
				}
				if len(pool.Slices) == 1 {
					slice.Name = nodeName + "-" + dra.DriverName
				}
				y, err := yaml.Marshal(slice)
				if err != nil {
					return fmt.Errorf("write the slice as YAML: %w", err)
				}
				if i > 0 {
					out = append(out, "---\n"...)
				}
				out = append(out, y...)
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	cfg.BackendFlags(cmd.Flags(), "auto")
	host, _ := os.Hostname()
	cmd.Flags().StringVar(&nodeName, "node-name", host, "the node's name in the slice (its pool and nodeName)")
	cmd.Flags().StringVar(&dynamicMIG, "dra-dynamic-mig", "", "publish these GPUs for dynamic MIG as --dra-dynamic-mig does: all, or GPU indexes; prints the pool's slices (counter sets first) as YAML documents")
	return cmd
}
