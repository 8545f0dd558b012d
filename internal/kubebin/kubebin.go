// Package kubebin finds the gpulet that links the Kubernetes API from the
// one that does not. The image ships two builds of the same code: its entry
// point /usr/bin/gpulet is built without the Kubernetes API (tag nokube, the
// binary of make build-lean), so a plain device plugin loads and initialises
// no client-go, API scheme or DRA helper; the full build beside it,
// /usr/lib/gpulet/gpulet-kube, runs whatever needs the API (node labels,
// DRA, per-node config in a cluster, `labels --remove`, `dra`, a conflict's
// Node Event). The entry point replaces itself with it (exec: same PID,
// arguments and environment) or, for a one-off Event, runs it as a child.
package kubebin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Rel is where the full build lies relative to the folder of the entry
// point: /usr/bin/gpulet → /usr/lib/gpulet/gpulet-kube.
const Rel = "../lib/gpulet/gpulet-kube"

// executable is this process's binary; a test points it elsewhere.
var executable = os.Executable

// Path returns the full build installed beside this binary, or an error
// saying where it looked.
func Path() (string, error) {
	self, err := executable()
	if err != nil {
		return "", fmt.Errorf("cannot tell where this gpulet is installed: %w", err)
	}
	if resolved, err := filepath.EvalSymlinks(self); err == nil {
		self = resolved
	}
	p := filepath.Join(filepath.Dir(self), Rel)
	fi, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("no gpulet with the Kubernetes API beside this one (%s): %w", p, err)
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s is not an executable file", p)
	}
	return p, nil
}

// Version is what `gpulet-kube version` says it is: "gpulet v1.2.3,
// commit <hash>".
func Version(ctx context.Context, path string) (string, error) {
	out, err := exec.CommandContext(ctx, path, "version").Output()
	if err != nil {
		return "", fmt.Errorf("%s version: %w", path, err)
	}
	lines := strings.Split(string(out), "\n")
	v := lines[0]
	for _, l := range lines[1:] {
		if c, ok := strings.CutPrefix(l, "commit: "); ok {
			v += ", commit " + c
		}
	}
	return v, nil
}
