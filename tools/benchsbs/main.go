// Command benchsbs runs gpulet and NVIDIA's own device plugin (and GPU
// Feature Discovery) side by side on the same NVIDIA mock NVML, alternating
// them, and prints medians (`make bench-sbs`; results in docs/benchmarks.md):
//
//   - start → registered: from the exec of the binary to the Register call
//     on a kubelet Registration stub (a real gRPC server on a unix socket);
//   - re-register: from a restarted stub's socket appearing to the Register;
//   - kill -9 → back: from SIGKILL to the new process's Register (restarted
//     at once, as the kubelet would without back-off);
//   - idle and peak RSS (VmRSS, VmHWM) and the idle RSS split into file and
//     anonymous pages (smaps_rollup);
//   - CPU seconds per idle hour: utime+stime over a bounded idle window,
//     extrapolated to an hour;
//   - with -churn, RSS growth after 4,000 Allocates and 500 ListAndWatch
//     stream openings and closings.
//
// Each process runs in its own mount namespace with the bench's temp folder
// bound over /var/lib (NVIDIA's plugin puts its socket in the hard-coded
// /var/lib/kubelet/device-plugins) and a tmpfs over /run (CDI specs,
// in-cluster credentials), so nothing is written to the host and both
// binaries start through the same helper.
//
// gpulet's "full" mode (node labels, metrics, DRA) talks to a fake API
// server in this process (TLS, in-cluster credentials): it answers the Node
// GET/PATCH the labeller makes and the ResourceSlice list/watch/create the
// DRA helper library makes, and nothing else. It is compared with NVIDIA's
// plugin plus GFD (--use-node-feature-api=false, labels to a file), summed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/gpulet/gpulet/internal/kubebin"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == nsexecArg {
		nsexec(os.Args[2:]) // does not return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "benchsbs:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("benchsbs", flag.ContinueOnError)
	o := options{}
	fs.StringVar(&o.gpulet, "gpulet", "_output/image/usr/bin/gpulet", "the image's entry point, with its full build at "+kubebin.Rel+" from its folder (make bench-sbs lays them out as hack/image.sh does)")
	fs.StringVar(&o.kube, "gpulet-kube", "", "the full build alone (make build-release's), run as a plain device plugin too")
	fs.StringVar(&o.cache, "cache", cacheRead, "how the binaries come into the page cache before each start: "+cacheRead+" (dropped, read back whole), "+cacheExtract+" (written afresh in 32 KiB writes, as containerd unpacks a layer) or "+cacheCold+" (dropped)")
	fs.StringVar(&o.nvidiaBin, "nvidia-bin", os.Getenv("GPULET_NVIDIA_BIN"), "folder with NVIDIA's nvidia-device-plugin and gpu-feature-discovery (test/e2e/lib/gobins.sh nvidia)")
	fs.StringVar(&o.mock, "nvml-mock", os.Getenv("GPULET_NVML_MOCK"), "NVIDIA's mock NVML folder (hack/nvml-mock.sh)")
	fs.StringVar(&o.profile, "profile", "h100", "mock NVML profile")
	fs.IntVar(&o.runs, "runs", 3, "alternations (each runs every configuration once)")
	fs.DurationVar(&o.idle, "idle", 20e9, "idle window for CPU and idle RSS")
	fs.BoolVar(&o.churn, "churn", true, "4,000 Allocates and 500 ListAndWatch churns after the idle window")
	fs.StringVar(&o.only, "only", "", "comma-separated configurations to run (default all): "+configNames())
	fs.Func("gpulet-env", "NAME=VALUE added to gpulet's environment (repeatable), e.g. GOGC=50", func(v string) error {
		if !strings.Contains(v, "=") {
			return fmt.Errorf("want NAME=VALUE")
		}
		o.gpuletEnv = append(o.gpuletEnv, v)
		return nil
	})
	fs.BoolVar(&o.verbose, "v", false, "print each run's numbers and keep the processes' logs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.nvidiaBin == "" || o.mock == "" {
		return fmt.Errorf("need -nvidia-bin and -nvml-mock (or GPULET_NVIDIA_BIN, GPULET_NVML_MOCK): run through make bench-sbs")
	}
	return bench(ctx, o)
}
