// Package doctor checks a node the way an operator would when GPUs do not
// show up or a pod does not get one: can the driver be read, are the device
// nodes there, is the kubelet's plugin folder right, is gpulet registered and
// serving, is every GPU healthy. Each finding says what to do.
package doctor

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/resources"
)

// Status of one check.
type Status string

const (
	OK   Status = "OK"
	Warn Status = "WARN"
	Fail Status = "FAIL"
)

// Finding is the result of one check.
type Finding struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Input is what the checks look at. Open is called once; a nil backend with
// an error is itself a finding.
type Input struct {
	Open         func() (hardware.Backend, error)
	PluginDir    string
	ResourceName string
	CDI          CDIInput
}

// Run performs every check and returns the findings in order.
func Run(ctx context.Context, in Input) []Finding {
	var out []Finding
	add := func(f Finding) { out = append(out, f) }

	backend, err := in.Open()
	if err != nil {
		add(Finding{"driver", Fail, err.Error(), "see the hint above; `gpulet list --backend=sim` shows what gpulet would do on a simulated node"})
	} else {
		defer backend.Close()
		add(Finding{"driver", OK, "the " + backend.Name() + " backend loaded", ""})
	}
	var node *inventory.Node
	if backend != nil {
		start := time.Now()
		node, err = backend.Discover(ctx)
		if err != nil {
			add(Finding{"discovery", Fail, err.Error(), "check `nvidia-smi -L` on the host"})
		} else {
			add(Finding{"discovery", OK, fmt.Sprintf("%d GPUs, driver %s, CUDA %s, in %s", len(node.GPUs),
				node.DriverVersion, node.CUDADriverVersion, time.Since(start).Round(time.Millisecond)), ""})
		}
	}
	if node != nil {
		add(deviceNodes(node))
		unhealthy := 0
		for _, g := range node.GPUs {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := backend.Probe(pctx, g.UUID)
			cancel()
			if err != nil {
				unhealthy++
				add(Finding{fmt.Sprintf("GPU %d health", g.Index), Fail, fmt.Sprintf("%s: %v", g.UUID, err),
					"the GPU will not be allocated; it needs a reset (nvidia-smi -r) or a reboot if the error persists; check `dmesg | grep -i xid`"})
			}
		}
		if unhealthy == 0 {
			add(Finding{"GPU health", OK, fmt.Sprintf("all %d GPUs pass a probe", len(node.GPUs)), ""})
		}
	}
	add(cdiSpec(node, in.CDI))
	add(cdiDriver(backend, node, in.CDI))
	out = append(out, kubelet(ctx, in)...)
	return out
}

// deviceNodes checks that every /dev node a container will be given exists.
func deviceNodes(node *inventory.Node) Finding {
	var missing []string
	names := []string{"nvidiactl"}
	for _, g := range node.GPUs {
		names = append(names, fmt.Sprintf("nvidia%d", g.Minor))
	}
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(node.DevRoot, n)); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return Finding{"device nodes", Fail, fmt.Sprintf("missing under %s: %s", node.DevRoot, strings.Join(missing, ", ")),
			"the driver creates them when loaded (nvidia-modprobe, or nvidia-persistenced); in a container, mount the host's /dev"}
	}
	return Finding{"device nodes", OK, fmt.Sprintf("%d present under %s", len(names), node.DevRoot), ""}
}

// kubelet checks the device-plugin folder, kubelet.sock, and gpulet's own
// socket: is it serving, and what does it advertise.
func kubelet(ctx context.Context, in Input) []Finding {
	var out []Finding
	if st, err := os.Stat(in.PluginDir); err != nil || !st.IsDir() {
		return append(out, Finding{"device-plugin folder", Fail, fmt.Sprintf("%s: %v", in.PluginDir, err),
			"mount the kubelet's device-plugins folder (hostPath /var/lib/kubelet/device-plugins) or pass --device-plugin-path"})
	}
	ksock := filepath.Join(in.PluginDir, "kubelet.sock")
	if _, err := os.Stat(ksock); err != nil {
		out = append(out, Finding{"kubelet", Fail, "no kubelet.sock in " + in.PluginDir,
			"the kubelet is not running on this node, or uses another root dir (--root-dir): point --device-plugin-path at <root-dir>/device-plugins"})
	} else {
		out = append(out, Finding{"kubelet", OK, "kubelet.sock present", ""})
	}
	name := in.ResourceName
	if name == "" {
		name = resources.DefaultResourceName
	}
	endpoint := plugin.SocketName(name)
	out = append(out, pluginSockets(ctx, in.PluginDir, name, endpoint)...)
	if _, err := os.Stat(filepath.Join(in.PluginDir, endpoint)); err != nil {
		return append(out, Finding{"gpulet plugin", Fail, "no " + endpoint + " in " + in.PluginDir,
			"`gpulet run` is not running here (kubectl -n gpu-resources get pods -o wide), or it serves another resource name"})
	}
	client, closeFn, err := plugin.Dial(in.PluginDir, endpoint)
	if err != nil {
		return append(out, Finding{"gpulet plugin", Fail, err.Error(), ""})
	}
	defer closeFn()
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	stream, err := client.ListAndWatch(cctx, &pluginapi.Empty{})
	var resp *pluginapi.ListAndWatchResponse
	if err == nil {
		resp, err = stream.Recv()
	}
	if err != nil {
		return append(out, Finding{"gpulet plugin", Fail, fmt.Sprintf("%s does not answer: %v", endpoint, err),
			"a stale socket from a crashed gpulet; restart the gpulet pod"})
	}
	healthy := 0
	var bad []string
	for _, d := range resp.Devices {
		if d.Health == pluginapi.Healthy {
			healthy++
		} else {
			bad = append(bad, d.ID)
		}
	}
	f := Finding{"gpulet plugin", OK, fmt.Sprintf("serving %s: %d devices, %d healthy", name, len(resp.Devices), healthy), ""}
	if len(bad) > 0 {
		f.Status = Warn
		f.Detail += "; unhealthy: " + strings.Join(bad, ", ")
		f.Fix = "the gpulet log names the XID and reason (`device unhealthy`); gpulet re-probes after --health-quiet-period"
	}
	return append(out, f)
}

// pluginSockets lists every device-plugin socket in dir with the resource
// it serves, and flags another live plugin serving gpulet's resource (or
// two serving one resource): the kubelet would then take whichever
// registered last, and capacity could flip at each kubelet restart.
func pluginSockets(ctx context.Context, dir, resource, own string) []Finding {
	peers, err := plugin.ScanPeers(ctx, dir, 2*time.Second)
	if err != nil {
		return []Finding{{"device-plugin sockets", Warn, err.Error(), ""}}
	}
	ents, _ := os.ReadDir(dir)
	var lines []string
	for _, e := range ents {
		if e.Type()&os.ModeSocket != 0 && plugin.IsOwnSocket(e.Name()) {
			what := "gpulet"
			if e.Name() == own {
				what = "gpulet: " + resource
			}
			lines = append(lines, e.Name()+" ("+what+")")
		}
	}
	byResource := map[string][]string{}
	for _, p := range peers {
		lines = append(lines, p.String())
		if p.Live && p.Resource != "" {
			byResource[p.Resource] = append(byResource[p.Resource], p.Socket)
		}
	}
	if reg, err := plugin.RegisteredResources(dir); err == nil && len(reg) > 0 {
		var names []string
		for r, ids := range reg {
			names = append(names, fmt.Sprintf("%s (%d devices)", r, len(ids)))
		}
		sort.Strings(names)
		lines = append(lines, "kubelet checkpoint: "+strings.Join(names, ", "))
	}
	out := []Finding{{"device-plugin sockets", OK, strings.Join(lines, "; "), ""}}
	if len(lines) == 0 {
		out[0].Detail = "none besides kubelet.sock"
	}
	var conflicts []string
	for r, socks := range byResource {
		switch {
		case r == resource:
			conflicts = append(conflicts, fmt.Sprintf("%s is served by %s as well as gpulet", r, strings.Join(socks, ", ")))
		case len(socks) > 1:
			conflicts = append(conflicts, fmt.Sprintf("%s is served by %s", r, strings.Join(socks, " and ")))
		}
	}
	if len(conflicts) > 0 {
		sort.Strings(conflicts)
		c := plugin.Conflict{Resource: resource}
		out = append(out, Finding{"device-plugin conflict", Fail, strings.Join(conflicts, "; ") +
			": the kubelet takes whichever registered last, so capacity and device IDs can change at every kubelet restart", c.Advice()})
	}
	return out
}

// Print writes findings as a table; it reports whether any check failed.
func Print(w io.Writer, fs []Finding) (failed bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL")
	for _, f := range fs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Check, f.Status, f.Detail)
		if f.Fix != "" {
			fmt.Fprintf(tw, "\t\t→ %s\n", f.Fix)
		}
		if f.Status == Fail {
			failed = true
		}
	}
	tw.Flush()
	return failed
}
