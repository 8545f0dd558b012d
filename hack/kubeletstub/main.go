// Command kubeletstub is the GPU check's helper (hack/gpu-check.sh), so the
// GPU machine needs no Go:
//
//	kubeletstub allocate --dir=D [--count=1] [--hold] [--env-out=F] [--json-out=F]
//
// plays the kubelet: it serves the Registration API on D/kubelet.sock, waits
// for a device plugin (gpulet run --device-plugin-path=D) to register,
// reads its device list, asks for a preferred allocation, calls Allocate
// for --count healthy devices (in each of --containers containers) and
// prints the environment the plugin gives the container, as KEY=VALUE lines
// (with --map-mounts, container paths it mounts name their host paths). With --hold it then keeps the device
// stream open, as a kubelet does, until SIGTERM.
//
//	kubeletstub compare --list=list.json --smi-xml=smi.xml [--smi-csv=q.csv] [--cuda=validate.json]
//
// prints `gpulet list -o json` against `nvidia-smi -q -x` (and
// `nvidia-smi --query-gpu=... --format=csv`, and `gpulet validate -o json`),
// field by field, and exits 1 if any field disagrees.
//
//	kubeletstub scrape [--wait=10s] [--out=F] URL
//
// GETs URL (gpulet's /metrics) and prints the body, for a GPU machine
// without curl; it fails unless the answer is 200.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  kubeletstub allocate --dir=DIR [--resource=nvidia.com/gpu] [--count=1] [--containers=1] [--map-mounts] [--timeout=60s] [--hold] [--env-out=FILE] [--json-out=FILE]
  kubeletstub compare --list=LIST.json --smi-xml=SMI.xml [--smi-csv=QUERY.csv] [--cuda=VALIDATE.json]
  kubeletstub scrape [--wait=0s] [--out=FILE] URL`

// run is the command; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "allocate":
		err = allocateCmd(ctx, args[1:], stdout, stderr)
	case "compare":
		err = compareCmd(args[1:], stdout)
	case "scrape":
		err = scrapeCmd(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "kubeletstub: unknown command %q\n%s\n", args[0], usage)
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "kubeletstub:", err)
		return 1
	}
	return 0
}
