package devicemanager_test

import (
	"context"
	"strings"
	"testing"
	"time"
)

// replicaGPU is the GPU index of a time-sliced device ID (<uuid>::<n>).
func replicaGPU(t *testing.T, byUUID map[string][2]int, id string) int {
	t.Helper()
	uuid, _, ok := strings.Cut(id, "::")
	g, known := byUUID[uuid]
	if !ok || !known {
		t.Fatalf("device %q is not a replica of a GPU of the node", id)
	}
	return g[0]
}

// The kubelet's own device manager drives GetPreferredAllocation for a
// time-sliced node (pcie-4x-l4, 4 replicas per GPU) as it does for pods:
// successive one-replica pods are spread so that no GPU is ever two ahead
// of another, and a two-replica pod gets two different GPUs (NVIDIA's
// "distributed" policy, gpulet's default).
func TestTimeSlicingDistributed(t *testing.T) {
	requireNode(t)
	kubeletLogsOnFailure(t)
	freshNode(t)
	simRoot := t.TempDir()
	startGpulet(t, t, "pcie-4x-l4", simRoot, "--replicas=4")
	k := startKubelet(t, t, nil)
	k.mustCapacity(t, 16, 16, 10*time.Second)
	byUUID := readNode(t, simRoot).byUUID()

	load := map[int]int{}
	admit := func(n int) []int {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a, err := k.admit(ctx, gpuPod(n))
		if err != nil {
			t.Fatal(err)
		}
		var gpus []int
		for _, id := range a.devices {
			g := replicaGPU(t, byUUID, id)
			gpus = append(gpus, g)
			load[g]++
		}
		return gpus
	}
	for p := 0; p < 8; p++ {
		got := admit(1)
		lo, hi := 1<<30, 0
		for g := 0; g < 4; g++ {
			lo, hi = min(lo, load[g]), max(hi, load[g])
		}
		t.Logf("1-replica pod %d -> GPU %v; replicas in use per GPU %v", p, got, load)
		if hi-lo > 1 {
			t.Fatalf("after pod %d the GPUs hold %v replicas: one is two ahead of another", p, load)
		}
	}
	got := admit(2)
	t.Logf("2-replica pod -> GPUs %v", got)
	if len(got) != 2 || got[0] == got[1] {
		t.Errorf("a 2-replica pod got GPUs %v, want two different GPUs", got)
	}
}
