package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/daemon"
	"github.com/gpulet/gpulet/internal/labels"
)

func newLabelsCmd() *cobra.Command {
	cfg := &config.Config{}
	var remove, allNodes bool
	var kubeconfig string
	cmd := &cobra.Command{
		Use:   "labels",
		Short: "Print the node's GPU labels (GPU Feature Discovery's), write them to a file, or remove them from the Node",
		Long: `Labels computes the labels NVIDIA's GPU Feature Discovery would put on this
node, plus --extra-labels, and prints them as GFD's features file does
(key=value, one a line, sorted). With --output-file it writes them there once,
atomically, like GFD's --oneshot (point it at NFD's features.d folder).

The daemon (gpulet run) keeps them on the Node itself. --remove deletes from
the Node the labels gpulet put there (listed in its gpulet.io/labels
annotation), for uninstalling, but only nvidia.com/* labels and the keys of
--extra-labels, whatever the annotation lists; other labels are left alone. With
--use-node-feature-api (USE_NODE_FEATURE_API, flags.useNodeFeatureAPI) the
daemon publishes them as NFD's NodeFeature nvidia-features-for-<node> in its
namespace instead, and --remove deletes that object (nfd-master then takes
the labels off the Node); --namespace names it outside a pod.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd, cfg); err != nil {
				return err
			}
			if allNodes && !remove {
				return fmt.Errorf("--all-nodes goes with --remove")
			}
			if remove && allNodes {
				return removeLabelsEverywhere(cmd, cfg, kubeconfig)
			}
			if remove {
				return removeLabels(cmd, cfg, kubeconfig)
			}
			backend, store, err := probedNode(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer backend.Close()
			opts := daemon.LabelOptions(cfg)
			opts.Log = newLogger(cfg)
			l, err := labels.Compute(store.Snapshot(), opts)
			if err != nil {
				return err
			}
			if cfg.Labels.OutputFile != "" {
				return l.WriteFile(cfg.Labels.OutputFile)
			}
			return l.Format(cmd.OutOrStdout())
		},
	}
	cfg.BackendFlags(cmd.Flags(), "auto")
	cfg.LabelFlags(cmd.Flags(), false)
	cmd.Flags().BoolVar(&remove, "remove", false, "remove the labels gpulet put on the Node --node-name, or its NodeFeature with --use-node-feature-api (uninstall)")
	cmd.Flags().BoolVar(&allNodes, "all-nodes", false, "with --remove: remove gpulet's labels from every node that carries them (the Helm chart's uninstall hook)")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig for --remove (default: $KUBECONFIG, else the pod's service account)")
	return cmd
}
