package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	Response             response `json:"response"`
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
	count := fs.Int("count", 1, "devices to allocate")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait for the plugin")
	hold := fs.Bool("hold", false, "after allocating, keep the device stream open until SIGTERM")
	envOut := fs.String("env-out", "", "also write the container's environment (KEY=VALUE lines) here")
	jsonOut := fs.String("json-out", "", "write everything found as JSON here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *count <= 0 || fs.NArg() > 0 {
		return errors.New("allocate needs --dir and a positive --count, and no arguments")
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

	a, stream, closeConn, err := allocate(ctx, k, *resource, *count, start, *timeout)
	if closeConn != nil {
		defer closeConn()
	}
	if err != nil {
		return err
	}
	var lines []string
	for key, v := range a.Response.Envs {
		lines = append(lines, key+"="+v)
	}
	sort.Strings(lines)
	env := strings.Join(lines, "\n")
	if env != "" {
		env += "\n"
	}
	if _, err := io.WriteString(stdout, env); err != nil {
		return err
	}
	if *envOut != "" {
		if err := writeAtomic(*envOut, []byte(env)); err != nil {
			return err
		}
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(a, "", "  ")
		if err != nil {
			return err
		}
		if err := writeAtomic(*jsonOut, append(b, '\n')); err != nil {
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

// allocate does what the kubelet does for one container that asks for
// count devices of resource.
func allocate(ctx context.Context, k *plugintest.Kubelet, resource string, count int, start time.Time, timeout time.Duration) (*allocation, pluginapi.DevicePlugin_ListAndWatchClient, func() error, error) {
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
	if len(healthy) < count {
		return a, nil, closeConn, fmt.Errorf("the plugin lists %d healthy of %d %s devices; %d wanted", len(healthy), len(first.Devices), resource, count)
	}
	chosen := healthy[:count]
	if a.PreferredAvailable {
		c, cancel := rpc()
		pr, err := client.GetPreferredAllocation(c, &pluginapi.PreferredAllocationRequest{
			ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: healthy, AllocationSize: int32(count)}},
		})
		cancel()
		if err != nil {
			return a, nil, closeConn, fmt.Errorf("GetPreferredAllocation: %w", err)
		}
		if len(pr.ContainerResponses) != 1 {
			return a, nil, closeConn, fmt.Errorf("GetPreferredAllocation answered %d containers for 1", len(pr.ContainerResponses))
		}
		a.Preferred = pr.ContainerResponses[0].DeviceIDs
		if err := subset(a.Preferred, healthy, count); err != nil {
			return a, nil, closeConn, fmt.Errorf("GetPreferredAllocation: %w", err)
		}
		chosen = a.Preferred
	}
	a.Allocated = chosen
	c, cancel := rpc()
	t1 := time.Now()
	ar, err := client.Allocate(c, &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: chosen}},
	})
	a.AllocateMs = ms(time.Since(t1))
	cancel()
	if err != nil {
		return a, nil, closeConn, fmt.Errorf("Allocate(%s): %w", strings.Join(chosen, ","), err)
	}
	if len(ar.ContainerResponses) != 1 {
		return a, nil, closeConn, fmt.Errorf("Allocate answered %d containers for 1", len(ar.ContainerResponses))
	}
	cr := ar.ContainerResponses[0]
	a.Response = response{Envs: cr.Envs, Annotations: cr.Annotations}
	if a.Response.Envs == nil {
		a.Response.Envs = map[string]string{}
	}
	for _, m := range cr.Mounts {
		a.Response.Mounts = append(a.Response.Mounts, mount{m.HostPath, m.ContainerPath, m.ReadOnly})
	}
	for _, d := range cr.Devices {
		a.Response.DeviceSpecs = append(a.Response.DeviceSpecs, deviceSpec{d.HostPath, d.ContainerPath, d.Permissions})
	}
	for _, d := range cr.CdiDevices {
		a.Response.CDIDevices = append(a.Response.CDIDevices, d.Name)
	}
	if a.PreStartRequired {
		c, cancel := rpc()
		_, err := client.PreStartContainer(c, &pluginapi.PreStartContainerRequest{DevicesIds: chosen})
		cancel()
		if err != nil {
			return a, nil, closeConn, fmt.Errorf("PreStartContainer: %w", err)
		}
	}
	return a, stream, closeConn, nil
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

// writeAtomic writes a file a script may be polling for: it appears whole.
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
