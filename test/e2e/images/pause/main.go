// Command pause is the pod sandbox ("infra") container of the e2e cluster, and the init process
// (PID 1) of the cluster's private PID namespace: it sleeps, reaps orphaned children and exits on
// SIGINT or SIGTERM. It stands in for registry.k8s.io/pause, which cannot be pulled offline.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
