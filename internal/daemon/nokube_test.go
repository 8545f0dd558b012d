//go:build nokube

package daemon

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
)

// TestNoKubeBuild: gpulet built without the Kubernetes API (make
// build-lean) refuses --dra and --node-labels=on with what to do, and with
// labels on auto in a pod it serves the device plugin and labels nothing.
func TestNoKubeBuild(t *testing.T) {
	for _, tc := range []struct {
		name       string
		nodeLabels string
		dra        bool
		wantErr    bool
	}{
		{"dra", "off", true, true},
		{"labels on", "on", false, true},
		{"labels auto", "auto", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dpDir := t.TempDir()
			kubelet, err := plugintest.StartKubelet(dpDir)
			if err != nil {
				t.Fatal(err)
			}
			defer kubelet.Stop()
			cfg := simConfig(t, dpDir)
			cfg.Labels = config.LabelConfig{NodeLabels: tc.nodeLabels, NodeName: "n1", NoTimestamp: true}
			cfg.DRA = config.DRAConfig{Enabled: tc.dra, Devices: "all", PluginDir: t.TempDir(), RegistrarDir: t.TempDir()}
			run := startRun(cfg)
			if tc.wantErr {
				select {
				case err := <-run.done:
					if !errors.Is(err, errNoKube) {
						t.Errorf("Run: %v, want the no-Kubernetes-API error", err)
					}
				case <-time.After(30 * time.Second):
					run.stop()
					t.Fatal("Run did not refuse within 30s")
				}
				return
			}
			if _, err := kubelet.WaitRegistration(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			if err := run.stop(); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}

// TestNoKubeBuildPostsConflictEventsThroughTheFullBuild: in a cluster, the
// lean build posts a conflict's Node Event by running the full build beside
// it once (`gpulet-kube node-event`), and says why when that fails; outside
// a cluster, or without the full build, it posts none.
func TestNoKubeBuildPostsConflictEventsThroughTheFullBuild(t *testing.T) {
	dir := t.TempDir()
	record := filepath.Join(dir, "record")
	fake := filepath.Join(dir, "gpulet-kube")
	script := "#!/bin/sh\nprintf '%s\\n' \"$@\" >" + record + "\n[ \"$3\" != --message=fail ] || { echo cannot post >&2; exit 3; }\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	defer func(f func() (string, error)) { kubeBinary = f }(kubeBinary)
	kubeBinary = func() (string, error) { return fake, nil }
	g := &gpulet{cfg: &config.Config{Labels: config.LabelConfig{NodeName: "n1"}}, log: slog.New(slog.DiscardHandler)}

	if send := g.conflictEvents(); send != nil {
		t.Fatal("Events outside a cluster (no KUBERNETES_SERVICE_HOST)")
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
	send := g.conflictEvents()
	if send == nil {
		t.Fatal("no Events in a cluster")
	}
	if err := send(context.Background(), "another plugin serves nvidia.com/gpu"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(record)
	if want := "node-event\n--node-name=n1\n--message=another plugin serves nvidia.com/gpu\n"; string(got) != want {
		t.Errorf("ran the full build as %q, want %q", got, want)
	}
	if err := send(context.Background(), "fail"); err == nil || !strings.Contains(err.Error(), "cannot post") {
		t.Errorf("a failed post: %v, want the full build's error", err)
	}
	kubeBinary = func() (string, error) { return "", errors.New("no full build") }
	if send := g.conflictEvents(); send != nil {
		t.Error("Events without the full build")
	}
}
