package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// nsexecArg is the hidden first argument that makes benchsbs the helper
// every measured process starts through: started in a new mount namespace
// (SysProcAttr.Unshareflags, which also makes / private), it binds the
// run's folder over /var/lib, mounts a tmpfs over /run, puts in-cluster
// credentials there when asked, writes the time to fd 3 and execs the
// program, so start-up is timed from the exec.
//
//	benchsbs __nsexec VARLIB SECRETS|- PROGRAM ARGS...
const nsexecArg = "__nsexec"

func nsexec(args []string) {
	if err := nsexecErr(args); err != nil {
		fmt.Fprintln(os.Stderr, "benchsbs nsexec:", err)
		os.Exit(127)
	}
}

func nsexecErr(args []string) error {
	if len(args) < 3 {
		return fmt.Errorf("usage: %s VARLIB SECRETS|- PROGRAM ARGS", nsexecArg)
	}
	varlib, secrets, argv := args[0], args[1], args[2:]
	if err := syscall.Mount(varlib, "/var/lib", "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s over /var/lib: %w", varlib, err)
	}
	if err := syscall.Mount("tmpfs", "/run", "tmpfs", 0, "size=64m,mode=0755"); err != nil {
		return fmt.Errorf("tmpfs over /run: %w", err)
	}
	if secrets != "-" {
		dst := "/run/secrets/kubernetes.io/serviceaccount"
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		for _, f := range []string{"token", "ca.crt", "namespace"} {
			b, err := os.ReadFile(filepath.Join(secrets, f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dst, f), b, 0o644); err != nil {
				return err
			}
		}
	}
	ts := os.NewFile(3, "exec-time")
	_, _ = ts.WriteString(strconv.FormatInt(time.Now().UnixNano(), 10))
	ts.Close()
	return syscall.Exec(argv[0], argv, os.Environ())
}
