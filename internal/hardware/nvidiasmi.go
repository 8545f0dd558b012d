package hardware

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// NvidiaSMI changes a GPU's compute policy by running nvidia-smi, as
// NVIDIA's DRA driver does (`nvidia-smi -i <uuid> -c <mode>`,
// `nvidia-smi compute-policy -i <uuid> --set-timeslice <n>`): NVML has no
// call for the time-slice interval.
type NvidiaSMI struct {
	// Path of nvidia-smi; FindNvidiaSMI finds it under a driver root.
	Path string
	// Library, when set, is preloaded (LD_PRELOAD), so nvidia-smi uses the
	// NVML library gpulet loaded, as NVIDIA's driver runs it.
	Library string
	// Timeout bounds each run (default 30 s): a wedged driver fails the
	// call instead of hanging Prepare.
	Timeout time.Duration
}

var _ ComputePolicy = NvidiaSMI{}

// FindNvidiaSMI returns nvidia-smi under driverRoot (usr/bin, bin), else
// the one in $PATH, else "nvidia-smi" (the error comes when it is run).
func FindNvidiaSMI(driverRoot string) string {
	for _, d := range []string{"usr/bin", "bin"} {
		p := filepath.Join(driverRoot, d, "nvidia-smi")
		if st, err := os.Stat(p); err == nil && !st.IsDir() && driverRoot != "" {
			return p
		}
	}
	if p, err := exec.LookPath("nvidia-smi"); err == nil {
		return p
	}
	return "nvidia-smi"
}

func (n NvidiaSMI) SetComputeMode(ctx context.Context, uuid string, mode ComputeMode) error {
	return n.run(ctx, "-i", uuid, "-c", string(mode))
}

func (n NvidiaSMI) SetTimeSlice(ctx context.Context, uuid string, interval int) error {
	return n.run(ctx, "compute-policy", "-i", uuid, "--set-timeslice", strconv.Itoa(interval))
}

func (n NvidiaSMI) run(ctx context.Context, args ...string) error {
	t := n.Timeout
	if t <= 0 {
		t = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	path := n.Path
	if path == "" {
		path = "nvidia-smi"
	}
	cmd := exec.CommandContext(ctx, path, args...)
	if n.Library != "" {
		cmd.Env = append(os.Environ(), "LD_PRELOAD="+n.Library)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", path, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
