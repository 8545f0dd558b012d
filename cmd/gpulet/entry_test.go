package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/kubebin"
	"github.com/gpulet/gpulet/internal/waittest"
)

// fakeKube stands in for the image's full build: it records its PID, its
// arguments and one variable of its environment, answers `version`, and
// records a SIGTERM, so a test sees what the entry point handed over.
const fakeKube = `#!/bin/sh
rec="$(dirname "$0")/record"
if [ "$1" = version ]; then printf 'gpulet vfake-kube\ncommit: c\n'; exit 0; fi
trap 'echo TERM >>"$rec"; exit 0' TERM
printf '%s\n' "$$" "$GPULET_TEST_MARK" "$@" >"$rec.tmp" && mv "$rec.tmp" "$rec"
while :; do sleep 0.05 & wait $!; done
`

// imageRoot lays out the image's two binaries in a folder, as hack/image.sh
// does: the lean build (tag nokube) as usr/bin/gpulet, the fake full build
// as usr/lib/gpulet/gpulet-kube. It returns the entry point and the file
// the fake writes when it runs.
func imageRoot(t *testing.T) (entry, record string) {
	t.Helper()
	binary(t)                                    // -short builds no binaries
	root, err := os.MkdirTemp("", "gpulet-img-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	entry = filepath.Join(root, "usr", "bin", "gpulet")
	kube := filepath.Join(filepath.Dir(entry), kubebin.Rel)
	if err := os.MkdirAll(filepath.Dir(kube), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kube, []byte(fakeKube), 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-tags", "nokube", "-o", entry, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -tags nokube: %v\n%s", err, out)
	}
	return entry, filepath.Join(filepath.Dir(kube), "record")
}

// TestImageEntryPoint: the image's /usr/bin/gpulet (built without the
// Kubernetes API) serves a plain device plugin itself, with NODE_NAME and
// in-cluster variables set, and never runs the full build; with node labels,
// DRA or per-node config on, and for `labels --remove` and `dra`, it
// replaces itself with the full
// build: same PID (a container's PID 1 stays PID 1), same arguments and
// environment, and the kubelet's SIGTERM reaches the full build.
func TestImageEntryPoint(t *testing.T) {
	entry, record := imageRoot(t)
	env := append(os.Environ(), "GPULET_TEST_MARK=passed-through", "NODE_NAME=n1", "KUBERNETES_SERVICE_HOST=10.0.0.1", "KUBERNETES_SERVICE_PORT=443")

	t.Run("plain device plugin stays lean", func(t *testing.T) {
		os.Remove(record)
		d := startGpulet(t, []string{entry}, env, func(d *runningDaemon) []string {
			return []string{"--backend=sim", "--sim-profile=dgx-h100", "--sim-root=" + d.simRoot, "--node-labels=off"}
		})
		if _, err := d.kubelet.WaitRegistration(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		if exe, err := os.Readlink("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/exe"); err != nil || exe != entry {
			t.Errorf("the registered device plugin runs %q (%v), want the entry point %s", exe, err, entry)
		}
		if _, err := os.Stat(record); err == nil {
			t.Error("a plain device plugin ran the full build")
		}
		if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := d.cmd.Wait(); err != nil {
			t.Errorf("SIGTERM: %v", err)
		}
	})

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"node labels on", []string{"run", "--backend=sim", "--node-labels=on", "--metrics-address="}},
		{"node labels auto in a cluster", []string{"run", "--backend=sim", "--metrics-address="}},
		{"DRA", []string{"run", "--backend=sim", "--node-labels=off", "--dra", "--metrics-address="}},
		{"per-node config in a cluster", []string{"run", "--backend=sim", "--node-labels=off", "--config-file-srcdir=" + t.TempDir(), "--metrics-address="}},
		{"labels --remove", []string{"labels", "--remove", "--backend=sim"}},
		{"dra", []string{"dra", "slice", "--node-name=n1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(record)
			cmd := exec.Command(entry, tc.args...)
			cmd.Env = env
			logf, err := os.Create(filepath.Join(t.TempDir(), "log"))
			if err != nil {
				t.Fatal(err)
			}
			defer logf.Close()
			cmd.Stdout, cmd.Stderr = logf, logf
			log := func() string { b, _ := os.ReadFile(logf.Name()); return string(b) }
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if cmd.ProcessState == nil {
					cmd.Process.Kill()
					cmd.Wait()
				}
			}()
			var got []string
			waittest.UntilSays(t, 30*time.Second, "the full build runs", func() (bool, string) {
				b, err := os.ReadFile(record)
				got = strings.Split(strings.TrimSpace(string(b)), "\n")
				return err == nil, log()
			})
			want := append([]string{strconv.Itoa(cmd.Process.Pid), "passed-through"}, tc.args...)
			if !slices.Equal(got, want) {
				t.Errorf("the full build ran as %q, want %q (PID, environment, arguments)", got, want)
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Errorf("after SIGTERM: %v\n%s", err, log())
			}
			if b, _ := os.ReadFile(record); !strings.HasSuffix(string(b), "TERM\n") {
				t.Errorf("the full build did not get the SIGTERM: %q", b)
			}
		})
	}

	t.Run("version names both builds", func(t *testing.T) {
		out, err := exec.Command(entry, "version").CombinedOutput()
		want := "kubernetes API: not in this build; node labels, DRA and Node Events run " +
			filepath.Join(filepath.Dir(entry), kubebin.Rel) + " (gpulet vfake-kube, commit c)\n"
		if err != nil || !strings.HasPrefix(string(out), "gpulet ") || !strings.HasSuffix(string(out), want) {
			t.Errorf("version: %v\n%s\nwant it to end with %q", err, out, want)
		}
	})
}
