package main

import (
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/cudadriver"
	"github.com/gpulet/gpulet/internal/validate"
)

func newValidateCmd() *cobra.Command {
	var (
		output     string
		sizeMiB    int
		iterations int
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Prove the GPUs this process was given work: run a CUDA kernel and measure copy bandwidth on each",
		Long: `Validate loads the CUDA driver (libcuda.so.1) at run time, and on every GPU
CUDA sees it runs a vector-add kernel (PTX JIT-compiled by the driver),
checks the result, checks that data survives host -> device -> device -> host,
and measures host-to-device, device-to-host and device-to-device bandwidth.
It prints one row per GPU and exits non-zero if any fails.

It also prints how many devices CUDA sees under this environment. In a pod,
the container runtime shows only the allocated GPUs. Run directly on a host,
validate honours NVIDIA_VISIBLE_DEVICES (the device plugin's answer to
Allocate) by setting CUDA_VISIBLE_DEVICES to the same UUIDs before CUDA
starts, and fails unless CUDA then sees exactly those GPUs.

Run it as a Job with nvidia.com/gpu limits (deploy/validate-job.yaml) to
check a node end to end.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("output %q is not one of table, json", output)
			}
			if sizeMiB <= 0 || iterations <= 0 || timeout <= 0 {
				return fmt.Errorf("--size-mib, --iterations and --timeout must be positive")
			}
			// CUDA reads CUDA_VISIBLE_DEVICES once, in cuInit: set it first.
			plan := validate.PlanEnv(os.LookupEnv, validate.ReadDeviceDir)
			if err := plan.Apply(os.Setenv); err != nil {
				return fmt.Errorf("set %s: %w", validate.CUDAVisibleDevices, err)
			}
			var step atomic.Value
			step.Store("start")
			opts := validate.Options{
				CopyBytes:  sizeMiB << 20,
				Iterations: iterations,
				Step:       func(s string) { step.Store(s) },
			}
			done := make(chan *validate.Report, 1)
			// A hung driver call cannot be interrupted; the watchdog below
			// reports it and the process exits, leaving the call behind.
			go func() { done <- validate.Validate(cudadriver.Open, plan, opts) }()
			timer := time.NewTimer(timeout)
			defer timer.Stop()
			var r *validate.Report
			select {
			case r = <-done:
			case <-timer.C:
				r = &validate.Report{Env: plan, Devices: []validate.DeviceResult{},
					Error: fmt.Sprintf("validation did not finish within %s; it was at %q. The GPU or its driver is not responding: check `nvidia-smi` and the kernel log (dmesg) for Xid errors", timeout, step.Load())}
			case <-cmd.Context().Done():
				return fmt.Errorf("interrupted at %q", step.Load())
			}
			out := cmd.OutOrStdout()
			var err error
			if output == "json" {
				err = validate.WriteJSON(out, r)
			} else {
				err = validate.WriteTable(out, r)
			}
			if err != nil {
				return err
			}
			if err := r.Err(); err != nil && output == "table" {
				return fmt.Errorf("validation failed (details above)")
			}
			return r.Err()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json")
	cmd.Flags().IntVar(&sizeMiB, "size-mib", 128, "size of each bandwidth copy, in MiB (host buffers of twice this are allocated)")
	cmd.Flags().IntVar(&iterations, "iterations", 10, "timed copies per direction")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up (and fail) if validation takes longer, as it does on a hung GPU")
	return cmd
}
