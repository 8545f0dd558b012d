package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/hardware/sim"
)

// simDriver is `gpulet sim driver down|up`: unload and reload the simulated
// driver, as a driver upgrade does to a real node.
func simDriver() *cobra.Command {
	var f simFlags
	cmd := &cobra.Command{
		Use:   "driver down|up",
		Short: "Unload (down) or load (up) the simulated driver: every GPU disappears from NVML's view until it is up",
		Long: `With the driver down, discovery, probes and telemetry of the simulated node
fail as NVML does without a driver: a running gpulet marks every GPU
unhealthy and /readyz fails; one that starts then waits for the driver (with
fail-on-init-error=false). Up brings the GPUs back.`,
		Example:   "  gpulet sim driver down\n  gpulet sim driver up",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"down", "up"},
		RunE: func(cmd *cobra.Command, args []string) error {
			var down bool
			switch args[0] {
			case "down":
				down = true
			case "up":
			default:
				return fmt.Errorf("%q: say down or up", args[0])
			}
			err := sim.UpdateFaults(f.rootDir(), func(fs *sim.Faults) error {
				fs.DriverDown = down
				return nil
			})
			if err == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "simulated driver %s\n", args[0])
			}
			return err
		},
	}
	f.add(cmd, false)
	return cmd
}
