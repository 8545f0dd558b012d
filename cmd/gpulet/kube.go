//go:build !nokube

package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/daemon"
	"github.com/gpulet/gpulet/internal/kube"
)

// handOff: this build has the Kubernetes API and runs everything itself.
func handOff(context.Context, *config.Config, *slog.Logger) (bool, error) { return false, nil }

// kubeAPI is the line `gpulet version` adds.
func kubeAPI(context.Context) string { return "kubernetes API: in this build\n" }

// newNodeEventCmd is what the image's entry point (built without the
// Kubernetes API) runs to post a device-plugin conflict's Node Event
// (internal/daemon/conflict_nokube.go); hidden, not for people.
func newNodeEventCmd() *cobra.Command {
	var node, msg, kubeconfig string
	cmd := &cobra.Command{
		Use:    "node-event",
		Short:  "Post a device-plugin conflict as a Warning Event on a Node (gpulet run does)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if node == "" || msg == "" {
				return fmt.Errorf("node-event needs --node-name and --message")
			}
			c, err := kube.Client(kubeconfig)
			if err != nil {
				return err
			}
			return daemon.PostNodeEvent(cmd.Context(), c, node, "Warning", daemon.ConflictEventReason, msg)
		},
	}
	cmd.Flags().StringVar(&node, "node-name", "", "the Node")
	cmd.Flags().StringVar(&msg, "message", "", "the Event's message")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: the pod's service account)")
	return cmd
}
