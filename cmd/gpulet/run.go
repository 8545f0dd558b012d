package main

import (
	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/daemon"
	"github.com/gpulet/gpulet/internal/hardware/backends"
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
			for _, n := range cfg.Notes {
				log.Warn(n)
			}
			log.Info("gpulet starting", "version", version, "backend", cfg.Backend,
				"device_plugin_path", cfg.DevicePluginPath, "device_list_strategy", cfg.DeviceListStrategy,
				"device_id_strategy", cfg.DeviceIDStrategy, "pass_device_specs", cfg.PassDeviceSpecs,
				"shared_devices_allocation_policy", cfg.SharedDevicesAllocationPolicy)
			return daemon.RunWithVersion(cmd.Context(), cfg, backends.Opener(cfg, log), log, version)
		},
	}
	cfg.RunFlags(cmd.Flags())
	return cmd
}
