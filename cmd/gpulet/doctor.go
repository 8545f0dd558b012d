package main

import (
	"encoding/json"
	"errors"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/daemon"
	"github.com/gpulet/gpulet/internal/doctor"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/backends"
	"github.com/gpulet/gpulet/internal/plugin"
)

func newDoctorCmd() *cobra.Command {
	cfg := &config.Config{}
	var output string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this node end to end and explain what is wrong: driver, device nodes, GPU health, kubelet, gpulet's registration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd, cfg); err != nil {
				return err
			}
			log := newLogger(cfg)
			fs := doctor.Run(cmd.Context(), doctor.Input{
				Open:         backends.Opener(cfg, log),
				PluginDir:    cfg.DevicePluginPath,
				ResourceName: cfg.ResourceName,
				CDI: doctor.CDIInput{
					Strategies: cfg.DeviceListStrategy, IDStrategy: cfg.DeviceIDStrategy,
					SpecDir: cfg.CDISpecDir, Resources: daemon.ResourcesConfig(cfg),
					Writer: func(b hardware.Backend) *cdispec.Writer {
						return daemon.NewCDIWriter(cfg, b, cdispec.Options{Kind: cdispec.PluginKind}, log)
					},
				},
			})
			failed := false
			if output == "json" {
				for _, f := range fs {
					failed = failed || f.Status == doctor.Fail
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(fs); err != nil {
					return err
				}
			} else {
				failed = doctor.Print(cmd.OutOrStdout(), fs)
			}
			if failed {
				return errors.New("some checks failed (see FAIL above)")
			}
			return nil
		},
	}
	cfg.BackendFlags(cmd.Flags(), "nvml")
	cmd.Flags().StringVar(&cfg.DevicePluginPath, "device-plugin-path", "/var/lib/kubelet/device-plugins/", "kubelet device-plugin folder [env GPULET_DEVICE_PLUGIN_PATH]")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	cmd.Flags().StringSliceVar(&cfg.DeviceListStrategy, "device-list-strategy", []string{plugin.StrategyEnvvar}, "the device-list strategy gpulet runs with; cdi-* ones get their CDI spec checked [env DEVICE_LIST_STRATEGY]")
	cmd.Flags().StringVar(&cfg.DeviceIDStrategy, "device-id-strategy", plugin.IDStrategyUUID, "the device-ID strategy gpulet runs with: uuid or index [env DEVICE_ID_STRATEGY]")
	cfg.CDIFlags(cmd.Flags())
	return cmd
}
