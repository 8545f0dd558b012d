package devicemanager_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	v1helper "k8s.io/kubernetes/pkg/apis/core/v1/helper"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
)

// migNode is the part of node.json the MIG test reads.
type migNode struct {
	GPUs []struct {
		UUID       string `json:"uuid"`
		Index      int    `json:"index"`
		Minor      int    `json:"minor"`
		MIGDevices []struct {
			UUID    string `json:"uuid"`
			Index   int    `json:"index"`
			Profile string `json:"profile"`
			GI      int    `json:"gi"`
			CI      int    `json:"ci"`
		} `json:"migDevices"`
	} `json:"gpus"`
}

var capsNode = regexp.MustCompile(`^/dev/nvidia-caps/nvidia-cap[0-9]+$`)

// TestMIGMixed runs the kubelet's device manager against `gpulet run
// --mig-strategy=mixed` on dgx-h100-mig-mixed: GPUs 0-3 whole, GPUs 4-7
// each a 3g.40gb, 2g.20gb, 1g.10gb+me and 1g.10gb. The kubelet must accept
// every resource name (the +me one included), count 4 of each, and a pod
// asking for one nvidia.com/mig-1g.10gb.me must get exactly one such
// instance with its GPU and its two /dev/nvidia-caps nodes.
func TestMIGMixed(t *testing.T) {
	requireNode(t)
	kubeletLogsOnFailure(t)
	freshNode(t)
	simRoot := t.TempDir()
	g := startGpulet(t, t, "dgx-h100-mig-mixed", simRoot, "--mig-strategy=mixed")
	k := startKubelet(t, t, nil)

	want := map[string]int64{
		"nvidia.com/gpu": 4, "nvidia.com/mig-3g.40gb": 4, "nvidia.com/mig-2g.20gb": 4,
		"nvidia.com/mig-1g.10gb.me": 4, "nvidia.com/mig-1g.10gb": 4,
	}
	var got map[string]int64
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, a, _ := k.m.GetCapacity(k.logger)
		got = map[string]int64{}
		ok := true
		for name, n := range want {
			cq, aq := c[v1.ResourceName(name)], a[v1.ResourceName(name)]
			got[name] = cq.Value()
			ok = ok && cq.Value() == n && aq.Value() == n
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("capacity %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("capacity %v, %v after gpulet's start", got, time.Since(g.started).Round(time.Millisecond))
	for name := range want {
		if !v1helper.IsExtendedResourceName(v1.ResourceName(name)) {
			t.Errorf("%s is not an extended resource name to the kubelet", name)
		}
	}

	data, err := os.ReadFile(filepath.Join(simRoot, "node.json"))
	if err != nil {
		t.Fatal(err)
	}
	var n migNode
	if err := json.Unmarshal(data, &n); err != nil {
		t.Fatal(err)
	}
	meUUIDs := map[string]int{} // UUID -> parent minor
	for _, gpu := range n.GPUs {
		for _, m := range gpu.MIGDevices {
			if m.Profile == "1g.10gb+me" {
				meUUIDs[m.UUID] = gpu.Minor
			}
		}
	}
	if len(meUUIDs) != 4 {
		t.Fatalf("node.json has %d 1g.10gb+me instances, want 4", len(meUUIDs))
	}

	const res = "nvidia.com/mig-1g.10gb.me"
	pod := gpuPod(1)
	q := resource.MustParse("1")
	pod.Spec.Containers[0].Resources = v1.ResourceRequirements{
		Limits: v1.ResourceList{res: q}, Requests: v1.ResourceList{res: q},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = klog.NewContext(ctx, k.logger)
	k.pods.add(pod)
	c := &pod.Spec.Containers[0]
	if err := k.m.Allocate(ctx, pod, c, lifecycle.AddOperation); err != nil {
		t.Fatalf("Allocate %s: %v", res, err)
	}
	opts, err := k.m.GetDeviceRunContainerOptions(ctx, pod, c)
	if err != nil || opts == nil {
		t.Fatalf("GetDeviceRunContainerOptions: %v %v", opts, err)
	}
	ids := sets.List(sets.KeySet(k.m.GetDevices(string(pod.UID), c.Name)[res]))
	t.Logf("allocated %v; envs=%v devices=%v cdi=%v", ids, opts.Envs, opts.Devices, opts.CDIDevices)
	if len(ids) != 1 {
		t.Fatalf("kubelet allocated %v, want one %s", ids, res)
	}
	minor, ok := meUUIDs[ids[0]]
	if !ok {
		t.Fatalf("allocated %s is not a 1g.10gb+me instance of node.json", ids[0])
	}
	for _, e := range opts.Envs {
		if e.Name == "NVIDIA_VISIBLE_DEVICES" && e.Value != ids[0] {
			t.Errorf("NVIDIA_VISIBLE_DEVICES=%s, want the MIG UUID %s", e.Value, ids[0])
		}
	}
	var gpus, caps []string
	for _, d := range opts.Devices {
		switch {
		case nvidiaN.MatchString(d.PathInContainer):
			gpus = append(gpus, d.PathInContainer)
		case capsNode.MatchString(d.PathInContainer):
			caps = append(caps, d.PathInContainer)
			if !exists(d.PathOnHost) {
				t.Errorf("caps node %s: host path %s does not exist", d.PathInContainer, d.PathOnHost)
			}
		}
	}
	if len(gpus) != 1 || gpus[0] != "/dev/nvidia"+strconv.Itoa(minor) {
		t.Errorf("GPU device nodes %v, want the parent's /dev/nvidia%d only", gpus, minor)
	}
	if len(caps) != 2 {
		t.Errorf("caps device nodes %v, want the GI and CI access nodes", caps)
	}
	if len(opts.CDIDevices) != 1 || !strings.HasSuffix(opts.CDIDevices[0].Name, "="+ids[0]) {
		t.Errorf("CDI devices %v, want %s=%s", opts.CDIDevices, cdiKind, ids[0])
	}
}
