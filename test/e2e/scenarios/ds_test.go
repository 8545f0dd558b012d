package scenarios

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// scenarioDS: run.sh has applied deploy/ with the test overlay (bash:
// scenario_ds); the DaemonSet becomes Ready on both nodes, neither gpulet
// restarts, and the GPU node shows 8 nvidia.com/gpu under Capacity and
// Allocatable.
func scenarioDS(s *S) {
	if got := len(s.Inventory()); got != s.SimGPUs {
		s.Fatalf("gpulet list on the node has %d GPUs, want %d", got, s.SimGPUs)
	}
	s.Eventually(120*time.Second, "DaemonSet Ready", s.DaemonSetReady)
	if s.DeployedAt != 0 {
		s.Timing("DaemonSet apply -> DaemonSet Ready", time.Since(time.UnixMilli(s.DeployedAt)))
	}
	want := fmt.Sprintf("%d/%d", s.SimGPUs, s.SimGPUs)
	s.Eventually(120*time.Second, "Allocatable nvidia.com/gpu "+want, func() error {
		if err := s.GpuletStable(s.Node); err != nil {
			return err
		}
		return s.NodeGPUsAre(want)()
	})
	if s.DeployedAt != 0 {
		s.Timing("DaemonSet apply -> Allocatable 8", time.Since(time.UnixMilli(s.DeployedAt)))
	}
	if err := s.GpuletStable(s.Node); err != nil {
		s.Fatal(err)
	}
	got, err := s.NodeGPUs(s.Node)
	if err != nil || got != want {
		s.Fatalf("kubectl describe node's Capacity/Allocatable nvidia.com/gpu: %q (%v), want %s", got, err, want)
	}
	s.Logf("node %s: Capacity/Allocatable nvidia.com/gpu %s", s.Node, got)
}

// DSNodes is how many nodes the DaemonSet runs on: the GPU node and the
// CPU-only node (where gpulet waits for a driver, idle and Ready).
const DSNodes = 2

// DaemonSetReady is a condition: the DaemonSet has DSNodes pods, all Ready
// and up to date, the GPU node's gpulet pod is Ready, and neither gpulet
// container restarted (which aborts the wait).
func (s *S) DaemonSetReady() error {
	for _, n := range []string{s.Node, s.Node2} {
		if err := s.GpuletStable(n); err != nil {
			return err
		}
	}
	ds, err := s.Client.AppsV1().DaemonSets(s.Namespace).Get(s.ctx, s.DaemonSet, metav1.GetOptions{})
	if err != nil {
		return err
	}
	st := ds.Status
	if st.DesiredNumberScheduled != DSNodes || st.NumberReady != DSNodes || st.UpdatedNumberScheduled != DSNodes {
		return fmt.Errorf("DaemonSet desired/ready/updated = %d/%d/%d, want %d/%d/%d",
			st.DesiredNumberScheduled, st.NumberReady, st.UpdatedNumberScheduled, DSNodes, DSNodes, DSNodes)
	}
	p, err := s.GpuletPodOn(s.Node)
	if err != nil {
		return err
	}
	if p == nil {
		return fmt.Errorf("no gpulet pod on %s", s.Node)
	}
	if !PodReady(p) {
		return fmt.Errorf("gpulet pod %s on %s is not Ready", p.Name, s.Node)
	}
	return nil
}
