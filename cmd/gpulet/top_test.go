package main

import (
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/podresources/podresourcestest"
)

// TestTopShowsPodsAndLoad: `gpulet top --once` (and list) name the pod
// holding a GPU, read from a PodResources server on a real unix socket, and
// show the simulated GPU it holds busy.
func TestTopShowsPodsAndLoad(t *testing.T) {
	p, err := sim.LoadProfile("pcie-4x-l4")
	if err != nil {
		t.Fatal(err)
	}
	node, err := p.Node()
	if err != nil {
		t.Fatal(err)
	}
	held := node.GPUs[1].UUID
	stub := podresourcestest.Start(t, podresourcestest.Pod{Namespace: "ml", Name: "train-0",
		Containers: map[string]map[string][]string{"trainer": {"nvidia.com/gpu": {held}}}})
	for _, args := range [][]string{{"top", "--once"}, {"list"}} {
		out, err := gpulet(t, append(args, "--backend=sim", "--sim-profile=pcie-4x-l4", "--sim-root="+t.TempDir(),
			"--pod-resources-socket="+stub.Socket)...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if !strings.Contains(line, "GPU-") || !strings.Contains(line, "NVIDIA L4") {
				continue
			}
			isHeld := strings.Contains(line, held)
			if strings.Contains(line, "ml/train-0/trainer") != isHeld {
				t.Errorf("%v: pod column wrong: %s", args, line)
			}
			if strings.Contains(line, " 0%") == isHeld {
				t.Errorf("%v: held GPU should be busy, free ones idle: %s", args, line)
			}
		}
	}
}
