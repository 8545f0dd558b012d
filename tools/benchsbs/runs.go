package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/kubebin"
	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
)

const devicePlugins = "/var/lib/kubelet/device-plugins" // inside the namespace

func gpuletPlainArgs(bin string) []string {
	return []string{bin, "run", "--backend=nvml", "--device-plugin-path=" + devicePlugins, "--metrics-address=", "--node-labels=off"}
}

// runPlain measures one device plugin alone: start → registered, idle,
// re-registration after a kubelet restart, churn, kill -9 → back.
func runPlain(which string) func(context.Context, *bencher) (sample, error) {
	return func(ctx context.Context, b *bencher) (sample, error) {
		name, argv, env := which, gpuletPlainArgs(b.o.gpulet), append(b.gpuletEnv(), "GPULET_LOG_FORMAT=json")
		switch which {
		case "gpulet-kube":
			argv = gpuletPlainArgs(b.o.kube)
		case "nvidia":
			argv, env = []string{filepath.Join(b.o.nvidiaBin, "nvidia-device-plugin")}, b.baseEnv()
		}
		dir, err := b.runDir(name)
		if err != nil {
			return nil, err
		}
		dp := filepath.Join(dir, "varlib", "kubelet", "device-plugins")
		k, err := plugintest.StartKubelet(dp)
		if err != nil {
			return nil, err
		}
		defer func() { k.Stop() }()
		s := sample{}
		p, err := b.start(name, dir, "-", env, argv)
		if err != nil {
			return nil, err
		}
		defer func() { p.stop() }()
		at, endpoint, err := waitRegistered(ctx, k, p)
		if err != nil {
			return nil, err
		}
		s["start_registered_ms"] = ms(at.Sub(p.execAt))
		if err := b.idleWindow(ctx, s, p); err != nil {
			return nil, err
		}

		// The kubelet restarts: its socket goes and comes back.
		k.Stop()
		if k, err = plugintest.StartKubelet(dp); err != nil {
			return nil, err
		}
		back := time.Now()
		if at, _, err = waitRegistered(ctx, k, p); err != nil {
			return nil, fmt.Errorf("after a kubelet restart: %w", err)
		}
		s["reregister_ms"] = ms(at.Sub(back))

		if b.o.churn {
			before, err := readMem(p.pid())
			if err != nil {
				return nil, err
			}
			done, err := churn(ctx, dp, endpoint, 4000, 500)
			if err != nil {
				return nil, fmt.Errorf("churn: %w", err)
			}
			runtime.GC()
			if err := sleep(ctx, time.Second); err != nil {
				done()
				return nil, err
			}
			after, err := readMem(p.pid())
			done()
			if err != nil {
				return nil, err
			}
			s["churn_growth_mb"], s["churn_peak_mb"] = after.rss-before.rss, after.hwm
		}

		killed := p.kill()
		if p, err = b.start(name, dir, "-", env, argv); err != nil {
			return nil, err
		}
		if at, _, err = waitRegistered(ctx, k, p); err != nil {
			return nil, fmt.Errorf("after kill -9: %w", err)
		}
		s["kill9_back_ms"] = ms(at.Sub(killed))
		return s, nil
	}
}

// churn plays a busy kubelet on the plugin's socket: allocs single-device
// Allocates (round robin over the advertised devices) and streams
// ListAndWatch streams, each opened, read once and closed, while the
// kubelet's own stream stays open, as a kubelet keeps it: a plugin that
// sees the kubelet end its only stream may take it for another plugin's
// registration (gpulet's conflict detection holds back then). done closes
// the kubelet's stream and the connection.
func churn(ctx context.Context, dir, endpoint string, allocs, streams int) (done func(), err error) {
	c, closeConn, err := plugin.Dial(dir, endpoint)
	if err != nil {
		return nil, err
	}
	kctx, cancel := context.WithCancel(ctx)
	done = func() { cancel(); closeConn() }
	defer func() {
		if err != nil {
			done()
		}
	}()
	kubelet, err := c.ListAndWatch(kctx, &pluginapi.Empty{})
	if err == nil {
		_, err = kubelet.Recv()
	}
	if err != nil {
		return nil, fmt.Errorf("the kubelet's stream: %w", err)
	}
	var ids []string
	for i := 0; i < streams; i++ {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := c.ListAndWatch(sctx, &pluginapi.Empty{})
		if err != nil {
			cancel()
			return nil, err
		}
		r, err := st.Recv()
		cancel()
		if err != nil {
			return nil, err
		}
		if ids == nil {
			for _, d := range r.Devices {
				ids = append(ids, d.ID)
			}
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s advertises no devices", endpoint)
	}
	for i := 0; i < allocs; i++ {
		req := &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{ids[i%len(ids)]}}}}
		if _, err := c.Allocate(ctx, req); err != nil {
			return nil, err
		}
	}
	return done, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitFor polls cond every 2 ms for up to 60 s and returns when it held.
func waitFor(ctx context.Context, what string, cond func() bool) (time.Time, error) {
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s: not within 60s", what)
		}
		if err := sleep(ctx, 2*time.Millisecond); err != nil {
			return time.Time{}, err
		}
	}
	return time.Now(), nil
}

// runGpuletFull runs gpulet with node labels, metrics and DRA against the
// fake API server, as a DaemonSet pod with the DRA patch would.
func runGpuletFull(ctx context.Context, b *bencher) (sample, error) {
	api := newFakeAPI("n1")
	defer api.Close()
	dir, err := b.runDir("gpulet-full")
	if err != nil {
		return nil, err
	}
	kenv, err := api.writeSecrets(filepath.Join(dir, "secrets"))
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dp := filepath.Join(dir, "varlib", "kubelet", "device-plugins")
	k, err := plugintest.StartKubelet(dp)
	if err != nil {
		return nil, err
	}
	defer k.Stop()
	env := append(b.gpuletEnv(), kenv...)
	env = append(env, "GPULET_LOG_FORMAT=json", "NODE_NAME=n1", "POD_NAMESPACE=gpulet", "GPULET_EXTRA_LABELS=accelerator=nvidia")
	argv := []string{b.o.gpulet, "run", "--backend=nvml", "--device-plugin-path=" + devicePlugins,
		fmt.Sprintf("--metrics-address=127.0.0.1:%d", port), "--node-labels=on", "--dra", "--dra-devices=0,1"}
	s := sample{}
	p, err := b.start("gpulet-full", dir, filepath.Join(dir, "secrets"), env, argv)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	at, _, err := waitRegistered(ctx, k, p)
	if err != nil {
		return nil, err
	}
	s["start_registered_ms"] = ms(at.Sub(p.execAt))
	patched, err := waitFor(ctx, "gpulet-full labels the Node", func() bool { t, _, _ := api.times(); return !t.IsZero() })
	if err != nil {
		return nil, err
	}
	_ = patched
	pt, _, _ := api.times()
	s["start_labels_ms"] = ms(pt.Sub(p.execAt))
	if _, err := waitFor(ctx, "gpulet-full publishes a ResourceSlice", func() bool { _, t, _ := api.times(); return !t.IsZero() }); err != nil {
		return nil, err
	}
	_, st, _ := api.times()
	s["start_slice_ms"] = ms(st.Sub(p.execAt))
	// One scrape, as Prometheus would, so the exporter's work is in the peak.
	if err := scrape(ctx, fmt.Sprintf("http://127.0.0.1:%d/metrics", port)); err != nil {
		return nil, err
	}
	if err := b.idleWindow(ctx, s, p); err != nil {
		return nil, err
	}
	if _, _, unknown := api.times(); len(unknown) > 0 {
		fmt.Fprintf(os.Stderr, "benchsbs: gpulet-full asked the fake API server for what it does not serve: %s\n", strings.Join(unknown, "; "))
	}
	return s, nil
}

func scrape(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, _ := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 || n == 0 {
		return fmt.Errorf("GET %s: %s, %d bytes", url, resp.Status, n)
	}
	return nil
}

// runNvidiaGFD runs NVIDIA's plugin and GFD (labels to a file) together.
func runNvidiaGFD(ctx context.Context, b *bencher) (sample, error) {
	dir, err := b.runDir("nvidia+gfd")
	if err != nil {
		return nil, err
	}
	dp := filepath.Join(dir, "varlib", "kubelet", "device-plugins")
	if err := os.MkdirAll(filepath.Join(dir, "varlib", "gfd"), 0o755); err != nil {
		return nil, err
	}
	k, err := plugintest.StartKubelet(dp)
	if err != nil {
		return nil, err
	}
	defer k.Stop()
	s := sample{}
	pl, err := b.start("nvidia", dir, "-", b.baseEnv(), []string{filepath.Join(b.o.nvidiaBin, "nvidia-device-plugin")})
	if err != nil {
		return nil, err
	}
	defer pl.stop()
	gfd, err := b.start("gfd", dir, "-", append(b.baseEnv(), "NODE_NAME=n1"),
		[]string{filepath.Join(b.o.nvidiaBin, "gpu-feature-discovery"), "--output-file=/var/lib/gfd/labels", "--use-node-feature-api=false"})
	if err != nil {
		return nil, err
	}
	defer gfd.stop()
	at, _, err := waitRegistered(ctx, k, pl)
	if err != nil {
		return nil, err
	}
	s["start_registered_ms"] = ms(at.Sub(pl.execAt))
	labels := filepath.Join(dir, "varlib", "gfd", "labels")
	lt, err := waitFor(ctx, "GFD writes its labels", func() bool {
		b, err := os.ReadFile(labels)
		return err == nil && strings.Contains(string(b), "nvidia.com/gpu.product")
	})
	if err != nil {
		return nil, err
	}
	s["start_labels_ms"] = ms(lt.Sub(gfd.execAt))
	if err := b.idleWindow(ctx, s, pl, gfd); err != nil {
		return nil, err
	}
	return s, nil
}

var metricsOrder = []struct{ key, desc string }{
	{"start_registered_ms", "start → registered (ms)"},
	{"reregister_ms", "kubelet restart → re-registered (ms)"},
	{"kill9_back_ms", "kill -9 → registered again (ms)"},
	{"start_labels_ms", "start → labels written (ms)"},
	{"start_slice_ms", "start → ResourceSlice created (ms)"},
	{"peak_rss_mb", "peak RSS, VmHWM (MB)"},
	{"idle_rss_mb", "idle RSS, VmRSS (MB)"},
	{"idle_file_mb", "  of which file-backed (MB)"},
	{"idle_anon_mb", "  of which anonymous (MB)"},
	{"cpu_s_per_idle_h", "CPU s per idle hour (extrapolated)"},
	{"churn_growth_mb", "RSS growth after 4,000 Allocates + 500 streams (MB)"},
	{"churn_peak_mb", "peak RSS after the churn (MB)"},
}

func printReport(w io.Writer, o options, cfgs []configuration, results map[string][]sample) {
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(w, "benchsbs: %d alternating runs, mock NVML profile %s, idle window %s, page cache %s, host %s, kernel %s, %d CPUs\n",
		o.runs, o.profile, o.idle, o.cache, host, strings.TrimSpace(string(kernel)), runtime.NumCPU())
	for _, bin := range []string{o.gpulet, filepath.Join(filepath.Dir(o.gpulet), kubebin.Rel), o.kube, filepath.Join(o.nvidiaBin, "nvidia-device-plugin"), filepath.Join(o.nvidiaBin, "gpu-feature-discovery")} {
		if fi, err := os.Stat(bin); err == nil && bin != "" {
			fmt.Fprintf(w, "binary %s: %.1f MB\n", bin, float64(fi.Size())/1e6)
		}
	}
	if len(o.gpuletEnv) > 0 {
		fmt.Fprintf(w, "gpulet's environment adds %s\n", strings.Join(o.gpuletEnv, " "))
	}
	for _, c := range cfgs {
		fmt.Fprintf(w, "  %-12s %s\n", c.name+":", c.desc)
	}
	fmt.Fprintf(w, "\nmedian (min–max) of %d runs\n\n| |", o.runs)
	for _, c := range cfgs {
		fmt.Fprintf(w, " %s |", c.name)
	}
	fmt.Fprint(w, "\n|---|")
	for range cfgs {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w)
	for _, m := range metricsOrder {
		row, any := fmt.Sprintf("| %s |", m.desc), false
		for _, c := range cfgs {
			var v []float64
			for _, s := range results[c.name] {
				if x, ok := s[m.key]; ok {
					v = append(v, x)
				}
			}
			if len(v) == 0 {
				row += " – |"
				continue
			}
			any = true
			slices.Sort(v)
			row += fmt.Sprintf(" %s (%s–%s) |", num(median(v)), num(v[0]), num(v[len(v)-1]))
		}
		if any {
			fmt.Fprintln(w, row)
		}
	}
}

func median(v []float64) float64 {
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func num(x float64) string {
	if x >= 100 || x <= -100 {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.1f", x)
}
