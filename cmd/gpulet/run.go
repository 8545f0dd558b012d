package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/daemon"
	"github.com/gpulet/gpulet/internal/hardware/backends"
	"github.com/gpulet/gpulet/internal/metrics"
	"github.com/gpulet/gpulet/internal/mps"
	"github.com/gpulet/gpulet/internal/version"
)

func newRunCmd() *cobra.Command {
	cfg := &config.Config{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the device plugin daemon (what the DaemonSet runs on each GPU node)",
		Long: `Run discovers the node's GPUs, registers them with the kubelet as
nvidia.com/gpu, keeps their health current and answers the kubelet's
allocation calls. It re-registers by itself when the kubelet restarts and
removes its sockets on SIGTERM.

--backend=nvml (the default) reads real GPUs; --backend=sim simulates the
node of --sim-profile; --backend=auto uses NVML when it loads and simulates
otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd, cfg); err != nil {
				return err
			}
			log := newLogger(cfg)
			// The image's entry point, built without the Kubernetes API, runs
			// the full build when labels or DRA are on (nokube.go).
			if done, err := handOff(cmd.Context(), cfg, log); done || err != nil {
				return err
			}
			for _, n := range cfg.Notes {
				log.Warn(n)
			}
			build := version.Get()
			log.Info("gpulet starting", "version", build.Version, "commit", build.Commit, "backend", cfg.Backend,
				"device_plugin_path", cfg.DevicePluginPath, "device_list_strategy", cfg.DeviceListStrategy,
				"device_id_strategy", cfg.DeviceIDStrategy, "pass_device_specs", cfg.PassDeviceSpecs,
				"shared_devices_allocation_policy", cfg.SharedDevicesAllocationPolicy)
			err := daemon.RunWithVersion(cmd.Context(), cfg, backends.Opener(cfg, log), log, build)
			var refused *mps.HostError
			if errors.As(err, &refused) && cfg.MetricsAddress != "" {
				return waitRefused(cmd.Context(), cfg, log, err)
			}
			return err
		},
	}
	cfg.RunFlags(cmd.Flags())
	return cmd
}

// waitRefused keeps a gpulet whose settings cannot work here (MPS sharing
// without the host's MPS folders and binary) up and unready with the reason
// on /readyz and in its log, serving nothing, until it is stopped: exiting
// would only crash-loop, as no restart changes the pod's mounts.
func waitRefused(ctx context.Context, cfg *config.Config, log *slog.Logger, why error) error {
	log.Error("gpulet refuses these settings and serves nothing until its pod is changed", "err", why)
	build := version.Get()
	exp := metrics.New(metrics.Options{Version: build.Version, Commit: build.Commit, Hostname: cfg.Labels.NodeName, Log: log.With("component", "metrics")})
	exp.SetRefused(why)
	lis, err := metrics.Listen(cfg.MetricsAddress)
	if err != nil {
		return errors.Join(why, err)
	}
	return exp.Serve(ctx, lis)
}
