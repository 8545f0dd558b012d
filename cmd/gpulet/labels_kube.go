//go:build !nokube

package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/kube"
	"github.com/gpulet/gpulet/internal/labels/publish"
)

func removeLabels(cmd *cobra.Command, cfg *config.Config, kubeconfig string) error {
	if cfg.Labels.NodeName == "" {
		return fmt.Errorf("--remove needs the node: pass --node-name or set NODE_NAME")
	}
	if cfg.Labels.NodeFeatureAPI {
		return removeNodeFeature(cmd, cfg, kubeconfig)
	}
	client, err := kube.Client(kubeconfig)
	if err != nil {
		return err
	}
	removed, err := publish.Remove(cmd.Context(), client, cfg.Labels.NodeName, publish.Removable(cfg.Labels.Extra))
	if err != nil {
		return err
	}
	if len(removed) == 0 {
		fmt.Fprintf(cmd.OutOrStdout(), "node %s carries no labels from gpulet\n", cfg.Labels.NodeName)
		return nil
	}
	fmt.Fprintf(cmd.OutOrStdout(), "removed from node %s: %s\n", cfg.Labels.NodeName, strings.Join(removed, ", "))
	return nil
}

func removeLabelsEverywhere(cmd *cobra.Command, cfg *config.Config, kubeconfig string) error {
	client, err := kube.ClientWithRate(kubeconfig, publish.RemoveAllQPS, publish.RemoveAllBurst)
	if err != nil {
		return err
	}
	removed, err := publish.RemoveAll(cmd.Context(), client, publish.Removable(cfg.Labels.Extra))
	for _, node := range slices.Sorted(maps.Keys(removed)) {
		fmt.Fprintf(cmd.OutOrStdout(), "removed from node %s: %s\n", node, strings.Join(removed[node], ", "))
	}
	if err == nil && len(removed) == 0 {
		fmt.Fprintln(cmd.OutOrStdout(), "no node carries labels from gpulet")
	}
	return err
}

func removeNodeFeature(cmd *cobra.Command, cfg *config.Config, kubeconfig string) error {
	ns, err := kube.Namespace(cfg.Labels.Namespace, "")
	if err != nil {
		return err
	}
	client, err := kube.DynamicClient(kubeconfig)
	if err != nil {
		return err
	}
	name := ns + "/" + publish.NodeFeatureName(cfg.Labels.NodeName)
	removed, err := publish.RemoveNodeFeature(cmd.Context(), client, ns, cfg.Labels.NodeName)
	if err != nil {
		return err
	}
	if !removed {
		fmt.Fprintf(cmd.OutOrStdout(), "no NodeFeature %s\n", name)
		return nil
	}
	fmt.Fprintf(cmd.OutOrStdout(), "deleted NodeFeature %s\n", name)
	return nil
}
