//go:build !nokube

package daemon

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/nodeconfig/nodeconfigtest"
	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
	"github.com/gpulet/gpulet/internal/waittest"
)

func timeSliced(n int) string {
	return fmt.Sprintf("version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: %d\n", n)
}

// resolvedConfig is `gpulet run args` with env, resolved and validated as
// the command does.
func resolvedConfig(t *testing.T, env map[string]string, args ...string) *config.Config {
	t.Helper()
	c := &config.Config{}
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	c.RunFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := c.Resolve(fs, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if err := Validate(c); err != nil {
		t.Fatal(err)
	}
	return c
}

// fakeCluster is a fake API server with one Node whose Events get names
// (the fake does not honour generateName).
func fakeCluster(t *testing.T, node string) *fake.Clientset {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}})
	var n atomic.Int64
	client.PrependReactor("create", "events", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if ev, ok := a.(k8stesting.CreateAction).GetObject().(*corev1.Event); ok && ev.Name == "" {
			ev.Name = fmt.Sprintf("%s%d", ev.GenerateName, n.Add(1))
		}
		return false, nil, nil
	})
	prev := newKubeClient
	newKubeClient = func(string) (kubernetes.Interface, error) { return client, nil }
	t.Cleanup(func() { newKubeClient = prev })
	t.Setenv("KUBERNETES_SERVICE_HOST", "fake")
	return client
}

// deviceCounts reads a ListAndWatch stream and reports each list's size.
func deviceCounts(t *testing.T, dir, endpoint string) <-chan int {
	t.Helper()
	c, closeFn, err := plugin.Dial(dir, endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFn() })
	ctx, cancel := context.WithCancel(context.Background())
	s, err := c.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan int, 64)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			resp, err := s.Recv()
			if err != nil {
				return
			}
			out <- len(resp.Devices)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return out
}

func waitDevices(t *testing.T, counts <-chan int, want int, what string) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	last := -1
	for {
		select {
		case n := <-counts:
			if last = n; n == want {
				return
			}
		case <-deadline:
			t.Fatalf("%s: the stream's last list had %d devices, want %d", what, last, want)
		}
	}
}

// TestNodeConfigAppliedLive runs gpulet on a simulated 4-GPU node with a
// ConfigMap of named configs and a fake API server: the Node's label and
// the mounted files pick the config, each change reaches the kubelet's open
// ListAndWatch stream without a new registration, and a missing or broken
// config keeps the last good one serving, reported on the Node (annotations,
// a Warning Event), in the metrics and on /readyz (200, degraded).
func TestNodeConfigAppliedLive(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) }) // after every other cleanup
	kubelet := plugintest.StartKubeletT(t)
	dpDir := kubelet.Dir
	cm := nodeconfigtest.New(t, t.TempDir(), map[string]string{
		"default": "version: v1\n",
		"ts4":     timeSliced(4),
		"bad":     timeSliced(1),
		"far":     "version: v1\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2, devices: [\"7\"]}]}}\n",
	})
	client := fakeCluster(t, "n1")
	addr := freeAddr(t)
	cfg := resolvedConfig(t, map[string]string{"CONFIG_FILE_SRCDIR": cm.Dir, "NODE_NAME": "n1"},
		"--backend=sim", "--sim-profile=pcie-4x-l4", "--sim-root="+t.TempDir(), "--device-plugin-path="+dpDir,
		"--metrics-address="+addr, "--pod-resources-socket=", "--node-labels=off", "--health-quiet-period=1h")
	run := startRun(cfg)
	defer func() {
		if err := run.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
		http.DefaultClient.CloseIdleConnections()
	}()
	reg, err := kubelet.WaitRegistration(15 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	counts := deviceCounts(t, dpDir, reg.Endpoint)
	waitDevices(t, counts, 4, "default")

	ctx := context.Background()
	annotations := func() map[string]string {
		n, err := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n.Annotations
	}
	waitState := func(name, state, says string) {
		t.Helper()
		waittest.UntilSays(t, 15*time.Second, "Node annotations "+name+" "+state, func() (bool, string) {
			a := annotations()
			return a[AnnotationConfig] == name && a[AnnotationConfigState] == state && strings.Contains(a[AnnotationConfigMessage], says), fmt.Sprint(a)
		})
	}
	label := func(v string) {
		t.Helper()
		patch := `{"metadata":{"labels":{"nvidia.com/device-plugin.config":null}}}`
		if v != "" {
			patch = fmt.Sprintf(`{"metadata":{"labels":{"nvidia.com/device-plugin.config":%q}}}`, v)
		}
		if _, err := client.CoreV1().Nodes().Patch(ctx, "n1", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	events := func(reason string) []string {
		l, err := client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range l.Items {
			if e.Reason == reason && e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == "n1" {
				out = append(out, e.Message)
			}
		}
		return out
	}
	metric := func(line string) func() (bool, string) {
		return func() (bool, string) { _, b := get(addr, "/metrics"); return strings.Contains(b, line), b }
	}
	waitState("default", "applied", "fallback named")

	label("ts4")
	waitDevices(t, counts, 16, "ts4")
	waitState("ts4", "applied", "label ts4")
	if r, err := kubelet.WaitRegistration(200 * time.Millisecond); err == nil {
		t.Errorf("%s registered again for a change of replicas", r.ResourceName)
	}
	waittest.Until(t, 5*time.Second, "a ConfigApplied Event", func() bool { return len(events(ConfigAppliedReason)) == 1 })
	waittest.UntilSays(t, 5*time.Second, "metrics", metric(`gpulet_config_applied{name="ts4"} 1`))

	for _, bad := range []struct{ label, says string }{{"nope", `names config "nope"`}, {"bad", "replicas=1"}, {"far", `"7", which is not`}} {
		label(bad.label)
		waitState("ts4", "failed", bad.says)
		waittest.UntilSays(t, 5*time.Second, "a ConfigFailed Event for "+bad.label, func() (bool, string) {
			evs := events(ConfigFailedReason)
			return len(evs) > 0 && strings.Contains(evs[len(evs)-1], bad.says), fmt.Sprint(evs)
		})
		code, body := get(addr, "/readyz")
		if code != 200 || !strings.Contains(body, "degraded") || !strings.Contains(body, bad.says) {
			t.Errorf("/readyz with config %s: %d %q; want 200, degraded and why", bad.label, code, body)
		}
		waittest.UntilSays(t, 5*time.Second, "metrics", metric("gpulet_config_last_reload_success 0"))
		select {
		case n := <-counts:
			t.Fatalf("config %s changed the device list to %d", bad.label, n)
		default:
		}
	}

	label("ts4") // back to the serving config: the failure clears
	waitState("ts4", "applied", "label ts4")
	if code, body := get(addr, "/readyz"); code != 200 || strings.Contains(body, "degraded") {
		t.Errorf("/readyz after recovery: %d %q", code, body)
	}

	// The ConfigMap edited in place: ts4 now shares 2 ways.
	cm.Update(map[string]string{"default": "version: v1\n", "ts4": timeSliced(2), "cdi": "version: v1\ngpulet: {cdiSpecDir: /elsewhere}\n"})
	waitDevices(t, counts, 8, "ts4 edited")

	// A setting that cannot change while gpulet runs: the rest applies,
	// the Node says what needs a restart.
	label("cdi")
	waitDevices(t, counts, 4, "config cdi")
	waitState("cdi", "applied", "need a gpulet restart: cdi-spec-dir")

	label("") // the default: the same 4 devices as config cdi, so no new list
	waitState("default", "applied", "label unset")
	waittest.UntilSays(t, 5*time.Second, "metrics", metric(`gpulet_config_reloads_total{result="failed"} 3`))
}

// A broken config at start (one that fails its checks, one that fails to
// start on this node): gpulet serves with the command line's settings alone
// and says so on the Node; a good label then applies. A file changed where
// the folder's watch does not see it (inside ..data) is read on SIGHUP, as
// NVIDIA's config-manager signals its plugin.
func TestNodeConfigBadAtStartAndSIGHUP(t *testing.T) {
	for _, tc := range []struct{ label, says string }{
		{"bad", "sideways"},
		{"far", `"7", which is not a nvidia.com/gpu device`},
	} {
		t.Run(tc.label, func(t *testing.T) { badAtStart(t, tc.label, tc.says) })
	}
}

func badAtStart(t *testing.T, label, says string) {
	kubelet := plugintest.StartKubeletT(t)
	dpDir := kubelet.Dir
	cm := nodeconfigtest.New(t, t.TempDir(), map[string]string{"ts4": timeSliced(4), "bad": "version: v1\nflags: {migStrategy: sideways}\n",
		"far": "version: v1\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2, devices: [\"7\"]}]}}\n"})
	client := fakeCluster(t, "n1")
	ctx := context.Background()
	if _, err := client.CoreV1().Nodes().Patch(ctx, "n1", types.MergePatchType,
		[]byte(`{"metadata":{"labels":{"nvidia.com/device-plugin.config":"`+label+`"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := resolvedConfig(t, map[string]string{"CONFIG_FILE_SRCDIR": cm.Dir, "NODE_NAME": "n1"},
		"--backend=sim", "--sim-profile=pcie-4x-l4", "--sim-root="+t.TempDir(), "--device-plugin-path="+dpDir,
		"--metrics-address=", "--pod-resources-socket=", "--node-labels=off", "--health-quiet-period=1h")
	// SIGHUP must reach this test's gpulet only, never the default action.
	hup := make(chan os.Signal, 4)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	run := startRun(cfg)
	defer func() {
		if err := run.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	reg, err := kubelet.WaitRegistration(15 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	counts := deviceCounts(t, dpDir, reg.Endpoint)
	waitDevices(t, counts, 4, "the command line's settings")
	state := func() (bool, string) {
		n, err := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		a := n.Annotations
		return a[AnnotationConfig] == "(empty)" && a[AnnotationConfigState] == "failed" && strings.Contains(a[AnnotationConfigMessage], says), fmt.Sprint(a)
	}
	waittest.UntilSays(t, 15*time.Second, "the failure on the Node", state)

	if _, err := client.CoreV1().Nodes().Patch(ctx, "n1", types.MergePatchType,
		[]byte(`{"metadata":{"labels":{"nvidia.com/device-plugin.config":"ts4"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDevices(t, counts, 16, "ts4")

	real, err := filepath.EvalSymlinks(filepath.Join(cm.Dir, "ts4"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(real, []byte(timeSliced(2)), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-counts:
		t.Fatalf("a change inside ..data was applied (%d devices) before SIGHUP", n)
	case <-time.After(300 * time.Millisecond):
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitDevices(t, counts, 8, "after SIGHUP")
}

// The Node's annotations are written only when they differ from the
// Node's: a report that changes nothing (a restart in the same state, a
// repeated failure) makes no API write.
func TestKubeNodeAnnotatesOnlyChanges(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1",
		Annotations: map[string]string{AnnotationConfig: "ts4", AnnotationConfigState: "applied"}}})
	k := &kubeNode{client: client, node: "n1", label: config.DefaultNodeConfigLabel}
	ctx := context.Background()
	if _, err := k.Label(ctx); err != nil {
		t.Fatal(err)
	}
	patches := func() int {
		n := 0
		for _, a := range client.Actions() {
			if a.GetVerb() == "patch" {
				n++
			}
		}
		return n
	}
	same := map[string]string{AnnotationConfig: "ts4", AnnotationConfigState: "applied"}
	for range 3 {
		if err := k.Annotate(ctx, same); err != nil {
			t.Fatal(err)
		}
	}
	if n := patches(); n != 0 {
		t.Fatalf("%d patches for annotations the Node already has", n)
	}
	failed := map[string]string{AnnotationConfig: "ts4", AnnotationConfigState: "failed"}
	for range 3 {
		if err := k.Annotate(ctx, failed); err != nil {
			t.Fatal(err)
		}
	}
	if n := patches(); n != 1 {
		t.Fatalf("%d patches for one change, want 1", n)
	}
}

// The components a change affects follow it: a config with a cdi-*
// device-list strategy has the CDI spec written and the device plugin
// started again (it registers anew); one with MPS sharing starts the MPS
// control daemons, and leaving it quits them.
func TestNodeConfigRestartsAffectedComponents(t *testing.T) {
	kubelet := plugintest.StartKubeletT(t)
	cm := nodeconfigtest.New(t, t.TempDir(), map[string]string{
		"default": "version: v1\n",
		"cdi":     "version: v1\nflags: {plugin: {deviceListStrategy: [envvar, cdi-annotations]}}\n",
		"mps":     "version: v1\nsharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 2}]}}\n",
	})
	client := fakeCluster(t, "n1")
	simRoot, specDir := t.TempDir(), t.TempDir()
	cfg := resolvedConfig(t, map[string]string{"CONFIG_FILE_SRCDIR": cm.Dir, "NODE_NAME": "n1"},
		"--backend=sim", "--sim-profile=pcie-4x-l4", "--sim-root="+simRoot, "--device-plugin-path="+kubelet.Dir,
		"--metrics-address=", "--pod-resources-socket=", "--node-labels=off", "--health-quiet-period=1h",
		"--cdi-spec-dir="+specDir, "--mps-root="+t.TempDir())
	run := startRun(cfg)
	defer func() {
		if err := run.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	if _, err := kubelet.WaitRegistration(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	label := func(v string) {
		t.Helper()
		if _, err := client.CoreV1().Nodes().Patch(context.Background(), "n1", types.MergePatchType,
			[]byte(fmt.Sprintf(`{"metadata":{"labels":{"nvidia.com/device-plugin.config":%q}}}`, v)), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	specs := func() []string { m, _ := filepath.Glob(filepath.Join(specDir, "*")); return m }
	if s := specs(); len(s) != 0 {
		t.Fatalf("a CDI spec with envvar: %v", s)
	}

	label("cdi")
	if r, err := kubelet.WaitRegistration(15 * time.Second); err != nil || r.ResourceName != "nvidia.com/gpu" {
		t.Fatalf("the device plugin did not register again for a new device-list strategy: %v", err)
	}
	waittest.Until(t, 5*time.Second, "the CDI spec written", func() bool { return len(specs()) > 0 })

	mpsLog := func() string { b, _ := os.ReadFile(sim.MPSLogPath(simRoot)); return string(b) }
	label("mps")
	waittest.UntilSays(t, 15*time.Second, "4 MPS control daemons", func() (bool, string) {
		l := mpsLog()
		return strings.Count(l, " -d\n") == 4, l
	})
	label("default")
	waittest.UntilSays(t, 15*time.Second, "the MPS control daemons quit", func() (bool, string) {
		l := mpsLog()
		return strings.Count(l, " quit\n") == 4, l
	})
}

// A config folder that is not there (a ConfigMap not mounted yet) is a
// reported failure, not a stop: gpulet serves with the command line's
// settings and keeps running.
func TestNodeConfigMissingFolder(t *testing.T) {
	kubelet := plugintest.StartKubeletT(t)
	client := fakeCluster(t, "n1")
	cfg := resolvedConfig(t, map[string]string{"CONFIG_FILE_SRCDIR": filepath.Join(t.TempDir(), "absent"), "NODE_NAME": "n1"},
		"--backend=sim", "--sim-profile=pcie-4x-l4", "--sim-root="+t.TempDir(), "--device-plugin-path="+kubelet.Dir,
		"--metrics-address=", "--pod-resources-socket=", "--node-labels=off", "--health-quiet-period=1h")
	run := startRun(cfg)
	if _, err := kubelet.WaitRegistration(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	waittest.UntilSays(t, 15*time.Second, "the failure on the Node", func() (bool, string) {
		n, err := client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		a := n.Annotations
		return a[AnnotationConfigState] == "failed" && strings.Contains(a[AnnotationConfigMessage], "read the config folder"), fmt.Sprint(a)
	})
	select {
	case err := <-run.done:
		t.Fatalf("gpulet stopped: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := run.stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
}
