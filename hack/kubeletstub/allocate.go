package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/gpulet/gpulet/internal/atomicfile"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
)

// allocation is what `kubeletstub allocate` found, written as JSON.
type allocation struct {
	Resource string `json:"resource"`
	Endpoint string `json:"endpoint"`
	Version  string `json:"version"`
	// RegisteredAtUnixNano lets a script time the plugin's start to its
	// registration; WaitedMs is from this stub's start.
	RegisteredAtUnixNano int64    `json:"registeredAtUnixNano"`
	WaitedMs             float64  `json:"waitedMs"`
	PreferredAvailable   bool     `json:"getPreferredAllocationAvailable"`
	PreStartRequired     bool     `json:"preStartRequired"`
	Devices              []device `json:"devices"`
	FirstListMs          float64  `json:"firstListMs"`
	Preferred            []string `json:"preferred,omitempty"`
	Allocated            []string `json:"allocated"`
	AllocateMs           float64  `json:"allocateMs"`
	Response             response `json:"response"` // the first container's
	// Containers has one entry per container of the request (--containers).
	Containers []container `json:"containers"`
}

// container is one container's share of the Allocate request and answer.
type container struct {
	Preferred []string `json:"preferred,omitempty"`
	Allocated []string `json:"allocated"`
	Response  response `json:"response"`
}

type device struct {
	ID     string  `json:"id"`
	Health string  `json:"health"`
	NUMA   []int64 `json:"numa,omitempty"`
}

type response struct {
	Envs        map[string]string `json:"envs"`
	Mounts      []mount           `json:"mounts,omitempty"`
	DeviceSpecs []deviceSpec      `json:"deviceSpecs,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	CDIDevices  []string          `json:"cdiDevices,omitempty"`
}

type mount struct {
	HostPath      string `json:"hostPath"`
	ContainerPath string `json:"containerPath"`
	ReadOnly      bool   `json:"readOnly"`
}

type deviceSpec struct {
	HostPath      string `json:"hostPath"`
	ContainerPath string `json:"containerPath"`
	Permissions   string `json:"permissions"`
}

func allocateCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("allocate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "device-plugin folder to serve kubelet.sock in (the plugin's --device-plugin-path)")
	resource := fs.String("resource", "nvidia.com/gpu", "resource to allocate from")
	count := fs.Int("count", 1, "devices to allocate, per container")
	containers := fs.Int("containers", 1, "containers in the Allocate request (a pod's), each given --count distinct devices")
	mapMounts := fs.Bool("map-mounts", false, "in the printed environment, replace container paths the answer mounts (e.g. an MPS pipe folder) with their host paths, to run a process on the host as the container would")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait for the plugin")
	hold := fs.Bool("hold", false, "after allocating, keep the device stream open until SIGTERM")
	envOut := fs.String("env-out", "", "also write the container's environment (KEY=VALUE lines) here; with --containers=N>1, to FILE.1 ... FILE.N")
	jsonOut := fs.String("json-out", "", "write everything found as JSON here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *count <= 0 || *containers <= 0 || fs.NArg() > 0 {
		return errors.New("allocate needs --dir, a positive --count and --containers, and no arguments")
	}
	start := time.Now()
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	k, err := plugintest.StartKubelet(*dir)
	if err != nil {
		return err
	}
	defer k.Stop()
	fmt.Fprintf(stderr, "kubeletstub: serving %s; waiting up to %s for %s\n", k.Socket(), *timeout, *resource)

	a, stream, closeConn, err := allocate(ctx, k, *resource, *count, *containers, start, *timeout)
	if closeConn != nil {
		defer closeConn()
	}
	if err != nil {
		return err
	}
	for i, c := range a.Containers {
		env := envLines(c.Response, *mapMounts)
		if len(a.Containers) > 1 {
			fmt.Fprintf(stdout, "# container %d: %s\n", i+1, strings.Join(c.Allocated, ","))
		}
		if _, err := io.WriteString(stdout, env); err != nil {
			return err
		}
		if *envOut != "" {
			path := *envOut
			if len(a.Containers) > 1 {
				path = fmt.Sprintf("%s.%d", path, i+1)
			}
			if err := atomicfile.Write(path, []byte(env), 0o644); err != nil {
				return err
			}
		}
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(a, "", "  ")
		if err != nil {
			return err
		}
		if err := atomicfile.Write(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(stderr, "kubeletstub: allocated %s from %s\n", strings.Join(a.Allocated, ","), a.Endpoint)
	if !*hold {
		return nil
	}
	fmt.Fprintln(stderr, "kubeletstub: holding the device stream open until SIGTERM")
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				if ctx.Err() == nil {
					fmt.Fprintf(stderr, "kubeletstub: ListAndWatch stream ended: %v\n", err)
				}
				return
			}
			healthy := 0
			for _, d := range r.Devices {
				if d.Health == pluginapi.Healthy {
					healthy++
				}
			}
			fmt.Fprintf(stderr, "kubeletstub: ListAndWatch update: %d devices, %d healthy\n", len(r.Devices), healthy)
		}
	}()
	<-ctx.Done()
	fmt.Fprintln(stderr, "kubeletstub: stopping")
	return nil
}

// envLines is a container's environment as sorted KEY=VALUE lines. With
// mapMounts, a value that is a mount's container path, or under one, names
// the host path instead: what a process on the host needs to act as the
// container (the MPS pipe folder is mounted at /mps/<uuid>/pipe).
func envLines(r response, mapMounts bool) string {
	var lines []string
	for key, v := range r.Envs {
		if mapMounts {
			v = hostPath(r.Mounts, v)
		}
		lines = append(lines, key+"="+v)
	}
	sort.Strings(lines)
	env := strings.Join(lines, "\n")
	if env != "" {
		env += "\n"
	}
	return env
}

// hostPath maps a container path to the host through the longest mount
// that holds it; other values are returned as they are.
func hostPath(mounts []mount, v string) string {
	best := -1
	for i, m := range mounts {
		c := strings.TrimSuffix(m.ContainerPath, "/")
		if c == "" || (v != c && !strings.HasPrefix(v, c+"/")) {
			continue
		}
		if best < 0 || len(c) > len(strings.TrimSuffix(mounts[best].ContainerPath, "/")) {
			best = i
		}
	}
	if best < 0 {
		return v
	}
	return mounts[best].HostPath + strings.TrimPrefix(v, strings.TrimSuffix(mounts[best].ContainerPath, "/"))
}

// allocate does what the kubelet does for a pod of containers containers,
// each asking for count devices of resource: a preferred allocation per
// container from what is still free, then one Allocate for them all.
func allocate(ctx context.Context, k *plugintest.Kubelet, resource string, count, containers int, start time.Time, timeout time.Duration) (*allocation, pluginapi.DevicePlugin_ListAndWatchClient, func() error, error) {
	deadline := start.Add(timeout)
	var reg *pluginapi.RegisterRequest
	for reg == nil {
		r, err := k.WaitRegistration(time.Until(deadline))
		if err != nil {
			return nil, nil, nil, fmt.Errorf("no device plugin registered %s with %s within %s: is `gpulet run --device-plugin-path=%s` running, and did it find GPUs?",
				resource, k.Socket(), timeout, k.Dir)
		}
		if r.ResourceName == resource {
			reg = r
		}
	}
	a := &allocation{
		Resource: reg.ResourceName, Endpoint: reg.Endpoint, Version: reg.Version,
		RegisteredAtUnixNano: time.Now().UnixNano(), WaitedMs: ms(time.Since(start)),
	}
	if reg.Options != nil {
		a.PreferredAvailable = reg.Options.GetPreferredAllocationAvailable
		a.PreStartRequired = reg.Options.PreStartRequired
	}
	if reg.Version != pluginapi.Version {
		return a, nil, nil, fmt.Errorf("plugin registered API version %q, want %q", reg.Version, pluginapi.Version)
	}
	client, closeConn, err := plugin.Dial(k.Dir, reg.Endpoint)
	if err != nil {
		return a, nil, nil, err
	}
	rpc := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 10*time.Second) }

	t0 := time.Now()
	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		return a, nil, closeConn, fmt.Errorf("ListAndWatch: %w", err)
	}
	first, err := recvWithin(stream, time.Until(deadline))
	if err != nil {
		return a, nil, closeConn, fmt.Errorf("ListAndWatch: %w", err)
	}
	a.FirstListMs = ms(time.Since(t0))
	var healthy []string
	for _, d := range first.Devices {
		dv := device{ID: d.ID, Health: d.Health}
		if d.Topology != nil {
			for _, n := range d.Topology.Nodes {
				dv.NUMA = append(dv.NUMA, n.ID)
			}
		}
		a.Devices = append(a.Devices, dv)
		if d.Health == pluginapi.Healthy {
			healthy = append(healthy, d.ID)
		}
	}
	if len(healthy) < count*containers {
		return a, nil, closeConn, fmt.Errorf("the plugin lists %d healthy of %d %s devices; %d wanted", len(healthy), len(first.Devices), resource, count*containers)
	}
	free := healthy
	req := &pluginapi.AllocateRequest{}
	for i := 0; i < containers; i++ {
		ct := container{Allocated: free[:count]}
		if a.PreferredAvailable {
			c, cancel := rpc()
			pr, err := client.GetPreferredAllocation(c, &pluginapi.PreferredAllocationRequest{
				ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: free, AllocationSize: int32(count)}},
			})
			cancel()
			if err != nil {
				return a, nil, closeConn, fmt.Errorf("GetPreferredAllocation: %w", err)
			}
			if len(pr.ContainerResponses) != 1 {
				return a, nil, closeConn, fmt.Errorf("GetPreferredAllocation answered %d containers for 1", len(pr.ContainerResponses))
			}
			ct.Preferred = pr.ContainerResponses[0].DeviceIDs
			if err := subset(ct.Preferred, free, count); err != nil {
				return a, nil, closeConn, fmt.Errorf("GetPreferredAllocation: %w", err)
			}
			ct.Allocated = ct.Preferred
		}
		free = without(free, ct.Allocated)
		a.Containers = append(a.Containers, ct)
		a.Preferred = append(a.Preferred, ct.Preferred...)
		a.Allocated = append(a.Allocated, ct.Allocated...)
		req.ContainerRequests = append(req.ContainerRequests, &pluginapi.ContainerAllocateRequest{DevicesIds: ct.Allocated})
	}
	c, cancel := rpc()
	t1 := time.Now()
	ar, err := client.Allocate(c, req)
	a.AllocateMs = ms(time.Since(t1))
	cancel()
	if err != nil {
		return a, nil, closeConn, fmt.Errorf("Allocate(%s): %w", strings.Join(a.Allocated, ","), err)
	}
	if len(ar.ContainerResponses) != containers {
		return a, nil, closeConn, fmt.Errorf("Allocate answered %d containers for %d", len(ar.ContainerResponses), containers)
	}
	for i, cr := range ar.ContainerResponses {
		r := response{Envs: cr.Envs, Annotations: cr.Annotations}
		if r.Envs == nil {
			r.Envs = map[string]string{}
		}
		for _, m := range cr.Mounts {
			r.Mounts = append(r.Mounts, mount{m.HostPath, m.ContainerPath, m.ReadOnly})
		}
		for _, d := range cr.Devices {
			r.DeviceSpecs = append(r.DeviceSpecs, deviceSpec{d.HostPath, d.ContainerPath, d.Permissions})
		}
		for _, d := range cr.CdiDevices {
			r.CDIDevices = append(r.CDIDevices, d.Name)
		}
		a.Containers[i].Response = r
	}
	a.Response = a.Containers[0].Response
	if a.PreStartRequired {
		for _, ct := range a.Containers {
			c, cancel := rpc()
			_, err := client.PreStartContainer(c, &pluginapi.PreStartContainerRequest{DevicesIds: ct.Allocated})
			cancel()
			if err != nil {
				return a, nil, closeConn, fmt.Errorf("PreStartContainer: %w", err)
			}
		}
	}
	return a, stream, closeConn, nil
}

// without returns the IDs of from that are not in taken.
func without(from, taken []string) []string {
	out := make([]string, 0, len(from))
	for _, id := range from {
		if !slices.Contains(taken, id) {
			out = append(out, id)
		}
	}
	return out
}

// recvWithin reads one ListAndWatch message, or fails after d.
func recvWithin(s pluginapi.DevicePlugin_ListAndWatchClient, d time.Duration) (*pluginapi.ListAndWatchResponse, error) {
	type result struct {
		r   *pluginapi.ListAndWatchResponse
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := s.Recv()
		ch <- result{r, err}
	}()
	select {
	case res := <-ch:
		return res.r, res.err
	case <-time.After(d):
		return nil, fmt.Errorf("no device list within %s", d.Round(time.Millisecond))
	}
}

// subset checks that ids are n distinct members of from.
func subset(ids, from []string, n int) error {
	in := map[string]bool{}
	for _, id := range from {
		in[id] = true
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if !in[id] || seen[id] {
			return fmt.Errorf("chose %v, which is not %d distinct devices of %v", ids, n, from)
		}
		seen[id] = true
	}
	if len(ids) != n {
		return fmt.Errorf("chose %d devices (%v), want %d", len(ids), ids, n)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
