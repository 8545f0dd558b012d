// Command gpulet is the GPU node agent for Kubernetes: a device plugin for
// the kubelet (drop-in for NVIDIA's), plus the commands people use to see
// and test what it does.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/daemon"
	"github.com/gpulet/gpulet/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "gpulet:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "gpulet",
		Short:         "GPU node agent for Kubernetes: device plugin, health, topology-aware placement, simulator",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRunCmd(), newListCmd(), newTopCmd(), newSimCmd(), newVersionCmd(), newValidateCmd(), newDoctorCmd(), newCDICmd(), newLabelsCmd(), newDRACmd(), newNodeEventCmd())
	return root
}

// resolve applies env and config file to a command's flags, then validates.
func resolve(cmd *cobra.Command, cfg *config.Config) error {
	if err := cfg.Resolve(cmd.Flags(), os.Getenv); err != nil {
		return err
	}
	return daemon.Validate(cfg)
}

func newLogger(cfg *config.Config) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToUpper(cfg.LogLevel))); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print gpulet's version, commit, Go version, platform and which binary has the Kubernetes API",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprint(cmd.OutOrStdout(), version.Get(), kubeAPI(cmd.Context()))
		},
	}
}
