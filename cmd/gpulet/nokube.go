//go:build nokube

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/kubebin"
)

// A gpulet built with the nokube tag (make build-lean; the image's entry
// point) links no Kubernetes API client. What needs the API runs the full
// build installed beside it (internal/kubebin): this process replaces itself
// with it. Without one, those commands say so.
var errNoKube = errors.New("this gpulet is built without the Kubernetes API (make build-lean, tag nokube); use the full gpulet")

// execKube replaces this process with the full build: the same arguments,
// environment and PID (a container's PID 1 stays PID 1; the kubelet's
// signals reach the full build). It returns only when it could not (nil
// when a signal to stop came first).
func execKube(ctx context.Context, why string) error {
	path, err := kubebin.Path()
	if err != nil {
		return fmt.Errorf("%s: %w (%w)", why, errNoKube, err)
	}
	// From here SIGTERM and SIGINT are no longer caught: until the full
	// build's runtime catches them they act as before any Go program's
	// signal.Notify (they end the process; a container's PID 1 ignores them).
	signal.Reset(os.Interrupt, syscall.SIGTERM)
	if ctx.Err() != nil {
		return nil // stopped before handing over
	}
	return fmt.Errorf("%s: run %s: %w", why, path, syscall.Exec(path, os.Args, os.Environ()))
}

// handOff runs `gpulet run` in the full build when a feature that needs the
// Kubernetes API is on (node labels, DRA, per-node config in a cluster). It returns done when this process
// must not go on (stopped before the exec). Without the full build it
// returns false: the daemon's components then refuse --node-labels=on and
// --dra and leave auto labels off (internal/daemon/nokube.go).
func handOff(ctx context.Context, cfg *config.Config, log *slog.Logger) (done bool, err error) {
	need, err := kubeFeatures(cfg)
	if err != nil || len(need) == 0 {
		return false, err
	}
	path, err := kubebin.Path()
	if err != nil {
		return false, nil
	}
	log.Info("handing over to the gpulet with the Kubernetes API", "for", need, "binary", path)
	return true, execKube(ctx, "gpulet run")
}

// kubeFeatures lists what of cfg needs the Kubernetes API in `gpulet run`.
// A conflict's Node Event does not count: it is posted by a child
// (internal/daemon/conflict_nokube.go).
func kubeFeatures(cfg *config.Config) ([]string, error) {
	var need []string
	on, err := cfg.PublishNodeLabels(os.Getenv)
	if err != nil {
		return nil, err
	}
	if on {
		need = append(need, "node labels")
	}
	if cfg.DRA.Enabled {
		need = append(need, "DRA")
	}
	if cfg.NodeConfig.Dir != "" && cfg.ClusterNode(os.Getenv) != "" {
		need = append(need, "per-node config (the Node's label)")
	}
	return need, nil
}

// kubeAPI is the line `gpulet version` adds: which binary has the API.
func kubeAPI(ctx context.Context) string {
	path, err := kubebin.Path()
	if err != nil {
		return "kubernetes API: not in this build (make build-lean); node labels, DRA and Node Events need the full gpulet\n"
	}
	v, err := kubebin.Version(ctx, path)
	if err != nil {
		return fmt.Sprintf("kubernetes API: not in this build; %s does not run: %v\n", path, err)
	}
	return fmt.Sprintf("kubernetes API: not in this build; node labels, DRA and Node Events run %s (%s)\n", path, v)
}

// passThrough is a command this build does not have: it runs the full build
// with the same command line, flags and --help included.
func passThrough(use, short string) *cobra.Command {
	_, err := kubebin.Path()
	return &cobra.Command{Use: use, Short: short, Hidden: err != nil, DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, _ []string) error { return execKube(cmd.Context(), "gpulet "+use) }}
}

func newDRACmd() *cobra.Command {
	return passThrough("dra", "Dynamic Resource Allocation: what gpulet's gpu.nvidia.com driver publishes")
}

func newNodeEventCmd() *cobra.Command {
	c := passThrough("node-event", "Post a device-plugin conflict as a Warning Event on a Node (gpulet run does)")
	c.Hidden = true
	return c
}

func removeLabels(cmd *cobra.Command, _ *config.Config, _ string) error {
	return execKube(cmd.Context(), "gpulet labels --remove")
}

func removeLabelsEverywhere(cmd *cobra.Command, _ *config.Config, _ string) error {
	return execKube(cmd.Context(), "gpulet labels --remove --all-nodes")
}
