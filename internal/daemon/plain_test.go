//go:build !nokube

package daemon

import (
	"bytes"
	"regexp"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
	"github.com/gpulet/gpulet/internal/waittest"
)

// kubeFrames are the code that only node labels, DRA or a Kubernetes client
// run: a goroutine in any of them belongs to a feature that is on.
var kubeFrames = []string{
	"k8s.io/client-go/",
	"k8s.io/dynamic-resource-allocation/",
	"github.com/gpulet/gpulet/internal/labels/publish.",
	"github.com/gpulet/gpulet/internal/kube.",
	"github.com/gpulet/gpulet/internal/dra.",
}

var goroutineHeader = regexp.MustCompile(`(?m)^goroutine (\d+) `)

// goroutines returns every goroutine's stack by id.
func goroutines(t *testing.T) map[string]string {
	t.Helper()
	var b bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&b, 2); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, g := range strings.Split(b.String(), "\n\n") {
		if m := goroutineHeader.FindStringSubmatch(g); m != nil {
			out[m[1]] = g
		}
	}
	return out
}

// kubeGoroutines returns the stacks of the goroutines started since before
// that run Kubernetes API code.
func kubeGoroutines(t *testing.T, before map[string]string) []string {
	var found []string
	for id, g := range goroutines(t) {
		if _, old := before[id]; old {
			continue
		}
		for _, f := range kubeFrames {
			if strings.Contains(g, f) {
				found = append(found, g)
				break
			}
		}
	}
	return found
}

// TestPlainPluginStartsNoKubernetesClient: `gpulet run` as a plain device
// plugin (no node labels, no DRA) makes no Kubernetes client and runs no
// labels, DRA or client-go goroutine, registered and serving. The same run
// with node labels on makes one client and runs the labeller, so the check
// can see what it looks for.
func TestPlainPluginStartsNoKubernetesClient(t *testing.T) {
	var made atomic.Int32
	defer func(f func(string) (kubernetes.Interface, error)) { newKubeClient = f }(newKubeClient)
	newKubeClient = func(string) (kubernetes.Interface, error) {
		made.Add(1)
		return fake.NewClientset(), nil
	}
	for _, tc := range []struct {
		name       string
		nodeLabels string
		nodeName   string
		wantKube   bool
	}{
		{"plain", "auto", "", false},
		{"labels off", "off", "n1", false},
		{"labels on", "on", "n1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			made.Store(0)
			dpDir := t.TempDir()
			kubelet, err := plugintest.StartKubelet(dpDir)
			if err != nil {
				t.Fatal(err)
			}
			defer kubelet.Stop()
			cfg := simConfig(t, dpDir)
			cfg.MetricsAddress = freeAddr(t)
			cfg.Labels = config.LabelConfig{NodeLabels: tc.nodeLabels, NodeName: tc.nodeName, NoTimestamp: true}
			before := goroutines(t)
			run := startRun(cfg)
			defer func() {
				if err := run.stop(); err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			if _, err := kubelet.WaitRegistration(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			if !tc.wantKube {
				if n := made.Load(); n != 0 {
					t.Errorf("made %d Kubernetes clients, want none", n)
				}
				if g := kubeGoroutines(t, before); len(g) > 0 {
					t.Errorf("%d goroutines run Kubernetes, labels or DRA code:\n%s", len(g), strings.Join(g, "\n\n"))
				}
				return
			}
			waittest.UntilSays(t, 15*time.Second, "the labeller runs", func() (bool, string) {
				g := kubeGoroutines(t, before)
				return len(g) > 0 && made.Load() == 1, strings.Join(g, "\n\n")
			})
		})
	}
}

// TestNoMetricsServerNoSampler: with --metrics-address= (the seed
// DaemonSet's plain device plugin) nothing would read the samples, so no
// telemetry sampler runs (no NVML sweeps, no PodResources connection); with
// the server on, it runs.
func TestNoMetricsServerNoSampler(t *testing.T) {
	const sampler = "internal/metrics.(*Exporter).Run"
	for _, metricsOn := range []bool{false, true} {
		t.Run(map[bool]string{false: "metrics off", true: "metrics on"}[metricsOn], func(t *testing.T) {
			dpDir := t.TempDir()
			kubelet, err := plugintest.StartKubelet(dpDir)
			if err != nil {
				t.Fatal(err)
			}
			defer kubelet.Stop()
			cfg := simConfig(t, dpDir)
			cfg.MetricsAddress = ""
			if metricsOn {
				cfg.MetricsAddress = freeAddr(t)
			}
			cfg.Labels = config.LabelConfig{NodeLabels: "off"}
			run := startRun(cfg)
			defer func() {
				if err := run.stop(); err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			if _, err := kubelet.WaitRegistration(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			running := func() bool {
				for _, g := range goroutines(t) {
					if strings.Contains(g, sampler) {
						return true
					}
				}
				return false
			}
			if !metricsOn {
				if running() {
					t.Error("the telemetry sampler runs without a metrics server")
				}
				return
			}
			waittest.UntilSays(t, 15*time.Second, "the sampler runs", func() (bool, string) { return running(), "" })
		})
	}
}
