package scenarios

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	resourcev1 "k8s.io/api/resource/v1"

	"github.com/gpulet/gpulet/internal/inventory"
)

// migClaimTemplate is a one-device claim of NVIDIA's mig.nvidia.com class
// for a MIG profile.
func migClaimTemplate(name, profile string) *resourcev1.ResourceClaimTemplate {
	t := claimTemplate(name, fmt.Sprintf("device.attributes['gpu.nvidia.com'].profile == '%s'", profile))
	t.Spec.Spec.Devices.Requests[0].Exactly.DeviceClassName = "mig.nvidia.com"
	return t
}

// nodeGPU is GPU index i as `gpulet list` on the node reports it now (its
// MIG mode and instances included; not cached).
func (s *S) nodeGPU(i int) inventory.GPU {
	s.Helper()
	out := s.GpuletOnNode("list", "--backend=sim", "--sim-profile="+s.SimProfile, "--sim-root="+s.SimRoot, "-o", "json")
	var l struct {
		Node *inventory.Node `json:"node"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil || l.Node == nil {
		s.Fatalf("gpulet list -o json: %v\n%s", err, out)
	}
	for _, g := range l.Node.GPUs {
		if g.Index == i {
			return g
		}
	}
	s.Fatalf("the node has no GPU %d", i)
	return inventory.GPU{}
}

// capsRE matches a character device of the pod's /dev/nvidia-caps in the
// hold Job's listing (its glob lists the folder's entries).
var capsRE = regexp.MustCompile(`(?m)^\s*c[-rwx]{9}.* nvidia-cap[0-9]+$`)

// scenarioDRAMIG: dynamic MIG (--dra-dynamic-mig=0) on the simulated H100
// GPU 0: the slice holds the whole GPU and its 25 placements with a counter
// set; a 3g.40gb and a 2g.20gb claim run at once on GPU 0, each with its
// instance's caps nodes; a whole-GPU claim for GPU 0 stays Pending while
// they run; a gpulet restart changes nothing for them; neither the claims
// nor the restart rewrite a ResourceSlice; once they end the instances are
// gone, MIG mode is off and the whole-GPU claim runs.
func scenarioDRAMIG(s *S) {
	s.Cleanup(func() {
		s.DRARestore()
		// Whatever a failure left, the next scenario finds GPU 0 whole.
		s.OnNode("rm", "-f", s.SimRoot+"/mig.json")
	})
	s.DRAOn()
	old := s.MustGpuletPod().Name
	t0 := time.Now()
	s.updateDaemonSet(func(ds *appsv1.DaemonSet) {
		c := &ds.Spec.Template.Spec.Containers[0]
		c.Env = setEnv(c.Env, "GPULET_DRA_DYNAMIC_MIG=0")
	})
	s.Eventually(120*time.Second, "gpulet rolled out with GPULET_DRA_DYNAMIC_MIG=0", s.NewGpuletReady(old))
	want := s.SimGPUs + 25 // GPU 0's placements: 7+7+4+3+2+1+1
	s.Eventually(60*time.Second, fmt.Sprintf("%d devices published", want), s.SliceCountIs(want))
	s.Timing("DRA dynamic MIG on -> slices with every placement (API server)", time.Since(t0))
	d, err := s.SliceDevice("gpu-0-mig-3g40gb-9-4")
	if err != nil {
		s.Fatal(err)
	}
	if len(d.ConsumesCounters) != 1 || d.ConsumesCounters[0].CounterSet != "gpu-0-counter-set" {
		s.Fatalf("gpu-0-mig-3g40gb-9-4 consumes %+v, want gpu-0-counter-set", d.ConsumesCounters)
	}
	if g1, err := s.SliceDevice("gpu-1"); err != nil || len(g1.ConsumesCounters) != 0 {
		s.Fatalf("gpu-1 (not dynamic) is %+v (%v); want it plain", g1, err)
	}

	gpu0 := s.GPUIndex(0)
	rv0, err := s.sliceVersions()
	if err != nil {
		s.Fatal(err)
	}
	s.CreateClaimTemplate(migClaimTemplate("mig-3g", "3g.40gb"))
	s.CreateClaimTemplate(migClaimTemplate("mig-2g", "2g.20gb"))
	s.CreateClaimTemplate(claimTemplate("gpu0-whole", fmt.Sprintf("device.attributes['gpu.nvidia.com'].uuid == '%s'", gpu0.UUID)))
	t0 = time.Now()
	s.DRAHoldJob("dmig-3g", "mig-3g")
	s.DRAHoldJob("dmig-2g", "mig-2g")
	s.Eventually(90*time.Second, "the 3g.40gb claim runs", s.HoldRunning("dmig-3g"))
	s.Eventually(90*time.Second, "the 2g.20gb claim runs", s.HoldRunning("dmig-2g"))
	s.Timing("DRA dynamic MIG: two MIG Jobs created -> both Running", time.Since(t0))
	p3, p2 := s.MustJobPod("dmig-3g"), s.MustJobPod("dmig-2g")
	for _, c := range []struct {
		pod    string
		prefix string
	}{{p3.Name, "gpu-0-mig-3g40gb-"}, {p2.Name, "gpu-0-mig-2g20gb-"}} {
		pod := s.Pod("default", c.pod)
		devs, err := s.ClaimDevices(pod)
		if err != nil {
			s.Fatal(err)
		}
		if len(devs) != 1 || !strings.HasPrefix(devs[0], c.prefix) {
			s.Fatalf("pod %s's claim holds %v, want one %s* device", pod.Name, devs, c.prefix)
		}
		log, err := s.PodLog("default", pod.Name)
		if err != nil {
			s.Fatal(err)
		}
		if got := PodMinors(log); len(got) != 1 || got[0] != gpu0.Minor {
			s.Fatalf("pod %s sees /dev/nvidia%v, want only its parent's /dev/nvidia%d; log:\n%s", pod.Name, got, gpu0.Minor, log)
		}
		if n := len(capsRE.FindAllString(log, -1)); n != 2 {
			s.Fatalf("pod %s has %d /dev/nvidia-caps character devices, want 2 (its GPU and compute instance); log:\n%s", pod.Name, n, log)
		}
		s.Logf("%s: %s, /dev/nvidia%d and two caps nodes", pod.Name, devs[0], gpu0.Minor)
	}
	g := s.nodeGPU(0)
	if !g.MIGEnabled || len(g.MIGDevices) != 2 {
		s.Fatalf("GPU 0 on the node: MIG %v, %d instances; want MIG on with 2", g.MIGEnabled, len(g.MIGDevices))
	}

	s.DRAHoldJob("dmig-whole", "gpu0-whole")
	s.Eventually(60*time.Second, "the whole-GPU claim for GPU 0 unschedulable", func() error {
		p, err := s.JobPod("default", "dmig-whole")
		if err != nil || p == nil {
			return fmt.Errorf("no pod yet (%v)", err)
		}
		return Unschedulable(p, "")
	})

	// A gpulet restart while the MIG claims run changes nothing for them.
	cid := ContainerID(s.Pod("default", p3.Name))
	gp := s.MustGpuletPod()
	s.DeletePod(s.Namespace, gp.Name)
	s.Eventually(120*time.Second, "a new gpulet pod Ready", s.NewGpuletReady(gp.Name))
	s.Eventually(60*time.Second, fmt.Sprintf("%d devices published again", want), s.SliceCountIs(want))
	if c := ContainerID(s.Pod("default", p3.Name)); c != cid {
		s.Fatalf("%s's container changed across the gpulet restart (%s -> %s)", p3.Name, cid, c)
	}
	if g2 := s.nodeGPU(0); len(g2.MIGDevices) != 2 || g2.MIGDevices[0].UUID != g.MIGDevices[0].UUID || g2.MIGDevices[1].UUID != g.MIGDevices[1].UUID {
		s.Fatalf("GPU 0's instances changed across the gpulet restart: %+v -> %+v", g.MIGDevices, g2.MIGDevices)
	}
	if err := Unschedulable(s.MustJobPod("dmig-whole"), ""); err != nil {
		s.Fatalf("after the restart: %v", err)
	}
	rv1, err := s.sliceVersions()
	if err != nil {
		s.Fatal(err)
	}
	if rv1 != rv0 {
		s.Fatalf("gpulet rewrote its ResourceSlices for the MIG claims or its restart: %s -> %s", rv0, rv1)
	}
	s.Timing("DRA dynamic MIG: ResourceSlice writes for 2 MIG claims and a gpulet restart (count)", 0)

	s.Release(s.Pod("default", p3.Name))
	s.Release(s.Pod("default", p2.Name))
	s.Eventually(60*time.Second, "dmig-3g COMPLETIONS 1/1", s.JobComplete("dmig-3g"))
	s.Eventually(60*time.Second, "dmig-2g COMPLETIONS 1/1", s.JobComplete("dmig-2g"))
	t0 = time.Now()
	s.Eventually(90*time.Second, "the whole-GPU claim for GPU 0 runs", s.HoldRunning("dmig-whole"))
	s.Timing("DRA dynamic MIG: MIG pods ended -> whole-GPU claim Running", time.Since(t0))
	g = s.nodeGPU(0)
	if g.MIGEnabled || len(g.MIGDevices) != 0 {
		s.Fatalf("GPU 0 under the whole-GPU claim: MIG %v, %d instances; want MIG off, none", g.MIGEnabled, len(g.MIGDevices))
	}
	if got := s.DRAPodDevices(s.MustJobPod("dmig-whole"), 1); got[0] != fmt.Sprintf("gpu-%d", gpu0.Minor) {
		s.Fatalf("the whole-GPU claim got %v", got)
	}
	s.Release(s.MustJobPod("dmig-whole"))
	s.Eventually(60*time.Second, "dmig-whole COMPLETIONS 1/1", s.JobComplete("dmig-whole"))
}
