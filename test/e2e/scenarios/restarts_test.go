package scenarios

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// scenarioRestarts: a kubelet restart (gpulet re-registers by itself: same
// pod, no container restart; capacity returns) and the gpulet pod deleted
// (the DaemonSet recreates it; capacity returns); a running 2-GPU pod keeps
// its container and GPUs throughout, and a 6-GPU pod started after gets the
// 6 others.
func scenarioRestarts(s *S) {
	s.HoldJob("gpu2-hold", 2)
	s.Eventually(90*time.Second, "gpu2-hold Running", s.HoldRunning("gpu2-hold"))
	hold := s.MustJobPod("gpu2-hold")
	g0 := s.PodGPUs(hold, 2)
	cid0 := ContainerID(hold)
	s.Logf("running pod %s holds %v", hold.Name, g0)

	// keepsGPUs: the running pod was not restarted and still sees the same GPUs.
	keepsGPUs := func(after string) {
		s.Helper()
		p := s.Pod("default", hold.Name)
		if p.Status.Phase != corev1.PodRunning {
			s.Fatalf("%s is %s after %s", p.Name, p.Status.Phase, after)
		}
		if cid := ContainerID(p); cid != cid0 {
			s.Fatalf("%s's container changed after %s (%s -> %s)", p.Name, after, cid0, cid)
		}
		// The kubelet serves exec only once it has taken the pod back (after its own restart
		// it answers "pod does not exist" for a moment): wait for that, bounded, then check.
		var env string
		s.Eventually(60*time.Second, "the kubelet serves exec into "+p.Name+" after "+after, func() (err error) {
			env, err = s.KubectlErr("exec", p.Name, "--", "sh", "-c", `echo "$NVIDIA_VISIBLE_DEVICES"`)
			return err
		})
		if got := VisibleGPUs("NVIDIA_VISIBLE_DEVICES=" + env); !slices.Equal(got, g0) {
			s.Fatalf("%s sees GPUs %v after %s, had %v", p.Name, got, after, g0)
		}
		s.Exec("default", p.Name, "ls", "/dev")
		s.Logf("after %s: %s still Running in container %.25s..., same GPUs", after, p.Name, cid0)
	}

	// --- kubelet restart: gpulet re-registers by itself.
	gp := s.MustGpuletPod()
	rc0 := gp.Status.ContainerStatuses[0].RestartCount
	n0 := s.KubeletRegistrations("kubelet.log")
	s.Logf("restarting the kubelet")
	t0 := time.Now()
	s.ClusterOp("restart-kubelet")
	registeredAgain := func(logName string, n0 int) func() error {
		return func() error {
			if n := s.KubeletRegistrations(logName); n <= n0 {
				return fmt.Errorf("no new nvidia.com/gpu registration in %s (%d)", logName, n)
			}
			return nil
		}
	}
	s.Eventually(90*time.Second, "gpulet registered with the new kubelet", registeredAgain("kubelet.log", n0))
	s.Eventually(90*time.Second, "node Ready with 8/8 from the new kubelet", func() error {
		// A node status posted by the new kubelet (a heartbeat after its start) showing 8/8.
		ready, hb, err := s.NodeReady(s.Node)
		if err != nil {
			return err
		}
		if hb.Before(t0.Add(-time.Second)) {
			return fmt.Errorf("last heartbeat %v is from the old kubelet", hb)
		}
		if !ready {
			return fmt.Errorf("node %s is not Ready", s.Node)
		}
		return s.NodeGPUsAre("8/8")()
	})
	s.Timing("kubelet restart -> Allocatable 8 (API server)", time.Since(t0))
	s.GpuletTiming("kubelet restart -> gpulet registered again (its log)", t0, "registered with kubelet", "")
	gp2 := s.MustGpuletPod()
	if gp2.Name != gp.Name || gp2.UID != gp.UID {
		s.Fatalf("the gpulet pod was recreated during the kubelet restart (%s %s -> %s %s)", gp.Name, gp.UID, gp2.Name, gp2.UID)
	}
	if rc := gp2.Status.ContainerStatuses[0].RestartCount; rc != rc0 {
		s.Fatalf("the gpulet container restarted during the kubelet restart (restartCount %d -> %d)", rc0, rc)
	}
	keepsGPUs("the kubelet restart")

	// --- gpulet pod deleted: the DaemonSet recreates it.
	n0 = s.KubeletRegistrations("kubelet.log")
	if l, err := s.PodLog(s.Namespace, gp.Name); err == nil {
		_ = os.WriteFile(s.Logs+"/gpulet-"+gp.Name+".log", []byte(l), 0o644)
	}
	s.Logf("deleting the gpulet pod %s (its log: %s/gpulet-%s.log)", gp.Name, s.Logs, gp.Name)
	t0 = time.Now()
	if err := s.Client.CoreV1().Pods(s.Namespace).Delete(s.ctx, gp.Name, metav1.DeleteOptions{}); err != nil {
		s.Fatal(err)
	}
	s.Eventually(120*time.Second, "a new gpulet pod Ready", s.NewGpuletReady(gp.Name))
	s.Eventually(90*time.Second, "gpulet registered again", registeredAgain("kubelet.log", n0))
	s.Eventually(90*time.Second, "Allocatable 8 after the gpulet pod was recreated", s.NodeGPUsAre("8/8"))
	s.Timing("gpulet pod deleted -> new pod Ready and Allocatable 8", time.Since(t0))
	s.Logf("new gpulet pod: %s", s.MustGpuletPod().Name)
	keepsGPUs("the gpulet pod deletion")

	// The kubelet still accounts the running pod's GPUs: 6 more are handed out, all different.
	s.HoldJob("gpu6-after", 6)
	s.Eventually(90*time.Second, "a 6-GPU Job runs next to the 2-GPU pod", s.HoldRunning("gpu6-after"))
	p6 := s.MustJobPod("gpu6-after")
	if both := intersect(g0, s.PodGPUs(p6, 6)); len(both) > 0 {
		s.Fatalf("GPUs of the running pod were handed out again: %v", both)
	}
	s.Release(p6)
	s.Release(hold)
	s.Eventually(60*time.Second, "gpu6-after COMPLETIONS 1/1", s.JobComplete("gpu6-after"))
	s.Eventually(60*time.Second, "gpu2-hold COMPLETIONS 1/1", s.JobComplete("gpu2-hold"))
}

// scenarioNoGPU: a pod that requests no GPU has no NVIDIA_VISIBLE_DEVICES
// naming a device and no /dev/nvidia* (manifests/no-gpu-pod.yaml).
func scenarioNoGPU(s *S) {
	p := s.CreatePod(Manifest[*corev1.Pod](s, "no-gpu-pod.yaml"))
	s.Eventually(60*time.Second, "pod no-gpu Succeeded", s.PodPhaseIs(p.Namespace, p.Name, corev1.PodSucceeded))
	log, err := s.PodLog(p.Namespace, p.Name)
	if err != nil {
		s.Fatal(err)
	}
	s.Logf("pod %s:\n%s", p.Name, log)
	env := ""
	for l := range strings.Lines(log) {
		if v, ok := strings.CutPrefix(strings.TrimRight(l, "\n"), "NVIDIA_VISIBLE_DEVICES="); ok {
			env = v
			break
		}
	}
	switch env {
	case "<unset>", "", "void", "none":
	default:
		s.Fatalf("a pod without a GPU request has NVIDIA_VISIBLE_DEVICES=%s", env)
	}
	for l := range strings.Lines(log) {
		if v, ok := strings.CutPrefix(strings.TrimRight(l, "\n"), "dev nodes:"); ok && strings.TrimSpace(v) != "" {
			s.Fatalf("a pod without a GPU request sees GPU device nodes: %s", v)
		}
	}
	if !strings.Contains(log, "\ndev nodes:") {
		s.Fatalf("the pod did not list its device nodes:\n%s", log)
	}
}
