package scenarios

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

// scenarioSeedJob: the AKS guide's Job (manifests/samples-gpu-demo.yaml,
// 1 GPU) completes 1/1; its log names exactly one GPU of the node and its
// /dev/nvidiaN, and says "GPUs visible: 1".
func scenarioSeedJob(s *S) {
	job := s.CreateJob(Manifest[*batchv1.Job](s, "samples-gpu-demo.yaml"))
	s.Eventually(90*time.Second, "job samples-gpu-demo COMPLETIONS 1/1", s.JobComplete(job.Name))
	p := s.MustJobPod(job.Name)
	s.PodGPUs(p, 1)
	log, err := s.PodLog(p.Namespace, p.Name)
	if err != nil {
		s.Fatal(err)
	}
	s.Logf("pod %s:\n%s", p.Name, log)
	if !regexp.MustCompile(`(?m)^GPUs visible: 1$`).MatchString(log) {
		s.Fatalf("the Job's log does not say 'GPUs visible: 1':\n%s", log)
	}
}

// scenarioSharing: two 4-GPU Jobs run at once on disjoint GPUs; a third
// asking for 1 stays Pending (Insufficient nvidia.com/gpu) and runs, on a
// freed GPU, once one of them finishes.
func scenarioSharing(s *S) {
	s.HoldJob("gpu4-a", 4)
	s.HoldJob("gpu4-b", 4)
	s.Eventually(90*time.Second, "gpu4-a Running", s.HoldRunning("gpu4-a"))
	s.Eventually(90*time.Second, "gpu4-b Running", s.HoldRunning("gpu4-b"))
	pa, pb := s.MustJobPod("gpu4-a"), s.MustJobPod("gpu4-b")
	ga, gb := s.PodGPUs(pa, 4), s.PodGPUs(pb, 4)
	s.Logf("gpu4-a: %v", ga)
	s.Logf("gpu4-b: %v", gb)
	if both := intersect(ga, gb); len(both) > 0 {
		s.Fatalf("gpu4-a and gpu4-b share GPU(s): %v", both)
	}

	// A 9th GPU does not exist: the scheduler keeps the next Job Pending.
	s.HoldJob("gpu1-c", 1)
	var pc *corev1.Pod
	s.Eventually(60*time.Second, "gpu1-c Pending with Insufficient nvidia.com/gpu", func() error {
		p, err := s.JobPod("default", "gpu1-c")
		if err != nil || p == nil {
			return fmt.Errorf("no pod yet (%v)", err)
		}
		pc = p
		return Unschedulable(p, "Insufficient nvidia.com/gpu")
	})
	s.Consistently(3*time.Second, "gpu1-c stays Pending while 8 GPUs are taken", s.PodPhaseIs("default", pc.Name, corev1.PodPending))

	s.Logf("releasing gpu4-a; gpu1-c must run on one of its GPUs")
	s.Release(pa)
	s.Eventually(60*time.Second, "gpu4-a COMPLETIONS 1/1", s.JobComplete("gpu4-a"))
	s.Eventually(120*time.Second, "gpu1-c Running", s.HoldRunning("gpu1-c"))
	gc := s.PodGPUs(pc, 1)
	s.Logf("gpu1-c: %v", gc)
	if !slices.Contains(ga, gc[0]) {
		s.Fatalf("gpu1-c got %s, which is not one of gpu4-a's freed GPUs %v", gc[0], ga)
	}
	if err := s.PodPhaseIs("default", pb.Name, corev1.PodRunning)(); err != nil {
		s.Fatalf("gpu4-b: %v", err)
	}
	s.Release(pc)
	s.Release(pb)
	s.Eventually(60*time.Second, "gpu1-c COMPLETIONS 1/1", s.JobComplete("gpu1-c"))
	s.Eventually(60*time.Second, "gpu4-b COMPLETIONS 1/1", s.JobComplete("gpu4-b"))
}

// Unschedulable says (nil) when the pod is Pending and its PodScheduled
// condition says the scheduler could not place it, with a message that
// contains want (what `kubectl describe pod` shows under Conditions and
// Events, e.g. "Insufficient nvidia.com/gpu").
func Unschedulable(p *corev1.Pod, want string) error {
	if p.Status.Phase != corev1.PodPending {
		return fmt.Errorf("pod %s is %s, want Pending", p.Name, p.Status.Phase)
	}
	for _, c := range p.Status.Conditions {
		if c.Type != corev1.PodScheduled {
			continue
		}
		if c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable && strings.Contains(c.Message, want) {
			return nil
		}
		return fmt.Errorf("pod %s PodScheduled=%s %s: %q, want Unschedulable with %q", p.Name, c.Status, c.Reason, c.Message, want)
	}
	return fmt.Errorf("pod %s has no PodScheduled condition yet", p.Name)
}

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// scenarioFault: `gpulet sim fault --gpu=3 --xid=48` drops Allocatable to 7
// with Capacity 8; a 7-GPU Job gets every GPU but the faulty one; `gpulet
// sim clear` brings Allocatable back to 8. The times are recorded.
func scenarioFault(s *S) {
	const gpu = 3
	s.Eventually(30*time.Second, "8/8 GPUs before the fault", s.NodeGPUsAre("8/8"))
	uuid := s.GPUIndex(gpu).UUID
	s.Logf("injecting Xid 48 on GPU %d (%s)", gpu, uuid)
	t0 := time.Now()
	s.GpuletOnNode("sim", "fault", "--sim-root="+s.SimRoot, fmt.Sprintf("--gpu=%d", gpu), "--xid=48")
	cleared := false
	s.Cleanup(func() {
		if !cleared {
			s.GpuletOnNode("sim", "clear", "--sim-root="+s.SimRoot, fmt.Sprintf("--gpu=%d", gpu))
		}
	})
	s.Eventually(60*time.Second, "Allocatable 7, Capacity 8", s.NodeGPUsAre("8/7"))
	s.Timing("fault injected -> Allocatable 7 (API server)", time.Since(t0))
	s.GpuletTiming("fault injected -> gpulet marks the GPU unhealthy (its log)", t0, "device unhealthy", uuid)

	// The faulty GPU is not handed out: 7 GPUs fit and exclude it.
	s.HoldJob("gpu7-fault", 7)
	s.Eventually(90*time.Second, "a 7-GPU Job runs on the 7 healthy GPUs", s.HoldRunning("gpu7-fault"))
	p := s.MustJobPod("gpu7-fault")
	if g := s.PodGPUs(p, 7); slices.Contains(g, uuid) {
		s.Fatalf("the faulty GPU %s was allocated to %s", uuid, p.Name)
	}
	s.Release(p)
	s.Eventually(60*time.Second, "gpu7-fault COMPLETIONS 1/1", s.JobComplete("gpu7-fault"))
	s.DeleteJob("default", "gpu7-fault")

	s.Logf("clearing the fault on GPU %d", gpu)
	t0 = time.Now()
	s.GpuletOnNode("sim", "clear", "--sim-root="+s.SimRoot, fmt.Sprintf("--gpu=%d", gpu))
	cleared = true
	s.Eventually(60*time.Second, "Allocatable back to 8", s.NodeGPUsAre("8/8"))
	s.Timing("fault cleared -> Allocatable 8 (API server)", time.Since(t0))
	s.GpuletTiming("fault cleared -> gpulet marks the GPU healthy (its log)", t0, "device healthy again", uuid)
}
