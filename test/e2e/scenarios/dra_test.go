package scenarios

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DRAHoldJob creates the DRA hold Job (manifests/dra-hold-job.yaml): a pod
// that takes the devices of one claim from the ResourceClaimTemplate
// template and holds them until Release.
func (s *S) DRAHoldJob(name, template string) *batchv1.Job {
	s.Helper()
	return s.CreateJob(Manifest[*batchv1.Job](s, "dra-hold-job.yaml", "__NAME__", name, "__TEMPLATE__", template))
}

// claimTemplate is a one-device ResourceClaimTemplate of gpulet's class
// with a CEL selector and the given tolerations.
func claimTemplate(name, cel string, tolerations ...resourcev1.DeviceToleration) *resourcev1.ResourceClaimTemplate {
	return &resourcev1.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: resourcev1.ResourceClaimTemplateSpec{Spec: resourcev1.ResourceClaimSpec{Devices: resourcev1.DeviceClaim{
			Requests: []resourcev1.DeviceRequest{{Name: "gpu", Exactly: &resourcev1.ExactDeviceRequest{
				DeviceClassName: DRADriver,
				Selectors:       []resourcev1.DeviceSelector{{CEL: &resourcev1.CELDeviceSelector{Expression: cel}}},
				Tolerations:     tolerations,
			}}},
		}}},
	}
}

// SliceDevice is the published device of that name.
func (s *S) SliceDevice(name string) (resourcev1.Device, error) {
	ds, err := s.SliceDevices()
	if err != nil {
		return resourcev1.Device{}, err
	}
	for _, d := range ds {
		if d.Name == name {
			return d, nil
		}
	}
	return resourcev1.Device{}, fmt.Errorf("%s is not published", name)
}

// sliceVersions is the resourceVersions of every ResourceSlice of gpulet's driver.
func (s *S) sliceVersions() (string, error) {
	l, err := s.Client.ResourceV1().ResourceSlices().List(s.ctx, metav1.ListOptions{})
	if err != nil {
		return "", err
	}
	var v []string
	for _, sl := range l.Items {
		if sl.Spec.Driver == DRADriver {
			v = append(v, sl.Name+"@"+sl.ResourceVersion)
		}
	}
	slices.Sort(v)
	return strings.Join(v, ","), nil
}

func taintsOf(d resourcev1.Device) string {
	var t []string
	for _, x := range d.Taints {
		t = append(t, fmt.Sprintf("%s=%s:%s", x.Key, x.Value, x.Effect))
	}
	return strings.Join(t, ",")
}

// intAttr is a device's int attribute (absent: ok false).
func intAttr(d resourcev1.Device, name string) (int64, bool) {
	a, ok := d.Attributes[resourcev1.QualifiedName(name)]
	if !ok || a.IntValue == nil {
		return 0, false
	}
	return *a.IntValue, true
}

// intAttrValues is the set of values the published devices named devs have
// for the int attribute name; a device without it fails the scenario.
func (s *S) intAttrValues(devs []string, name string) map[int64]bool {
	s.Helper()
	vals := map[int64]bool{}
	for _, n := range devs {
		d, err := s.SliceDevice(n)
		if err != nil {
			s.Fatal(err)
		}
		v, ok := intAttr(d, name)
		if !ok {
			s.Fatalf("%s has no %s", n, name)
		}
		vals[v] = true
	}
	return vals
}

// scenarioDRA: the operator's DRA steps give a ResourceSlice of 8 GPUs with
// their attributes and no nvidia.com/gpu left to the device plugin; an idle
// driver does not rewrite its slice; the README's templates run with exactly
// their devices, two claims never share; a CEL selector for an H200 stays
// unschedulable; the NVLink pair shares one domain, the NUMA pair one NUMA
// node; a gpulet restart keeps a claimed pod's container and claim; a fault
// taints the GPU (a plain claim gets another, a tolerating claim the faulted
// one), a clear removes the taint; claim CDI specs go when the pods end.
func scenarioDRA(s *S) {
	s.Cleanup(s.DRARestore)
	// What an operator applies (README, DRA): the classes, the driver's RBAC, the DaemonSet patch.
	s.Kubectl("apply", "-f", s.DeployDir+"/dra-deviceclasses.yaml", "-f", s.DeployDir+"/gpulet-dra-rbac.yaml")
	t0 := time.Now()
	s.PatchDaemonSet("gpulet-dra-daemonset-patch.yaml")
	s.Eventually(60*time.Second, "8 devices in gpulet's ResourceSlice", s.SliceCountIs(s.SimGPUs))
	s.Timing("DRA patch applied -> ResourceSlice with 8 GPUs (API server)", time.Since(t0))
	s.Eventually(60*time.Second, "the device plugin advertises no GPU DRA owns", s.NoPluginGPUs)
	g0, err := s.SliceDevice("gpu-0")
	if err != nil {
		s.Fatal(err)
	}
	pn, uuid, mem := g0.Attributes["productName"].StringValue, g0.Attributes["uuid"].StringValue, g0.Capacity["memory"]
	if pn == nil || *pn != "NVIDIA H100 80GB HBM3" || uuid == nil || mem.Value.IsZero() {
		s.Fatalf("gpu-0 lacks the expected attributes (productName NVIDIA H100 80GB HBM3, uuid, memory): %+v", g0)
	}
	s.Logf("gpu-0: productName %s, uuid %s, memory %s, %d attributes", *pn, *uuid, mem.Value.String(), len(g0.Attributes))

	// An idle driver writes nothing: the slices' resourceVersions do not move.
	rv0, err := s.sliceVersions()
	if err != nil {
		s.Fatal(err)
	}
	s.Consistently(20*time.Second, "gpulet does not rewrite its ResourceSlice while nothing changes", func() error {
		rv, err := s.sliceVersions()
		if err != nil {
			return err
		}
		if rv != rv0 {
			return fmt.Errorf("resourceVersions %s -> %s", rv0, rv)
		}
		return nil
	})
	s.Timing("DRA ResourceSlice writes during 20 s idle (count)", 0)

	for _, f := range []string{"one-gpu.yaml", "h100-40gi.yaml", "two-gpus-nvlink.yaml", "two-gpus-same-numa.yaml"} {
		s.CreateClaimTemplate(Manifest[*resourcev1.ResourceClaimTemplate](s, "deploy/examples/dra/"+f))
	}
	// One GPU each, twice at once: exactly the claimed GPU, and never the same one.
	s.DRAHoldJob("dra-a", "one-gpu")
	s.DRAHoldJob("dra-b", "h100-40gi")
	s.Eventually(90*time.Second, "a one-GPU claim runs (dra-a)", s.HoldRunning("dra-a"))
	s.Eventually(90*time.Second, "a claim with a CEL selector on productName and memory runs (dra-b)", s.HoldRunning("dra-b"))
	p1, p2 := s.MustJobPod("dra-a"), s.MustJobPod("dra-b")
	d1, d2 := s.DRAPodDevices(p1, 1), s.DRAPodDevices(p2, 1)
	if d1[0] == d2[0] {
		s.Fatalf("two claims got the same GPU %s", d1[0])
	}
	s.Logf("one-gpu claim: %s; h100-40gi claim (CEL productName + memory): %s", d1[0], d2[0])

	// A selector no GPU of the node matches stays pending.
	s.CreateClaimTemplate(claimTemplate("h200-only", "device.attributes['gpu.nvidia.com'].productName == 'NVIDIA H200'"))
	s.DRAHoldJob("dra-h200", "h200-only")
	s.Eventually(60*time.Second, "the H200-only claim unschedulable", func() error {
		p, err := s.JobPod("default", "dra-h200")
		if err != nil || p == nil {
			return fmt.Errorf("no pod yet (%v)", err)
		}
		return Unschedulable(p, "")
	})
	s.Logf("H200-only claim: %s", podWhy(s.MustJobPod("dra-h200")))
	s.DeleteJob("default", "dra-h200")

	// Two GPUs of one NVLink domain.
	s.DRAHoldJob("dra-pair", "two-gpus-nvlink")
	s.Eventually(90*time.Second, "a 2-GPU NVLink claim runs", s.HoldRunning("dra-pair"))
	dp := s.DRAPodDevices(s.MustJobPod("dra-pair"), 2)
	doms := s.intAttrValues(dp, "gpulet.io/nvlinkDomain")
	if len(doms) != 1 {
		s.Fatalf("the NVLink pair %v spans domains %v", dp, doms)
	}
	if both := intersect(dp, []string{d1[0], d2[0]}); len(both) > 0 {
		s.Fatalf("the pair %v shares a GPU with another claim", dp)
	}
	s.Logf("NVLink pair: %v (domain %v)", dp, doms)

	// Two GPUs of one NUMA node (dgx-h100: GPUs 0-3 on node 0, 4-7 on node 1).
	s.DRAHoldJob("dra-numa", "two-gpus-same-numa")
	s.Eventually(90*time.Second, "a 2-GPU same-NUMA claim runs", s.HoldRunning("dra-numa"))
	pn2 := s.MustJobPod("dra-numa")
	dn := s.DRAPodDevices(pn2, 2)
	numa := s.intAttrValues(dn, "resource.kubernetes.io/numaNode")
	if len(numa) != 1 {
		s.Fatalf("the same-NUMA pair %v spans NUMA nodes %v", dn, numa)
	}
	s.Logf("same-NUMA pair: %v (NUMA node %v)", dn, numa)
	s.Release(pn2)
	s.Eventually(60*time.Second, "dra-numa COMPLETIONS 1/1", s.JobComplete("dra-numa"))

	// gpulet restarted while claims are prepared: pods keep their containers, the slice comes back.
	cid := ContainerID(s.Pod(p1.Namespace, p1.Name))
	gp := s.MustGpuletPod()
	if err := s.Client.CoreV1().Pods(s.Namespace).Delete(s.ctx, gp.Name, metav1.DeleteOptions{}); err != nil {
		s.Fatal(err)
	}
	s.Eventually(120*time.Second, "a new gpulet pod Ready", s.NewGpuletReady(gp.Name))
	s.Eventually(60*time.Second, "8 devices published again", s.SliceCountIs(s.SimGPUs))
	if c := ContainerID(s.Pod(p1.Namespace, p1.Name)); c != cid {
		s.Fatalf("%s's container changed across the gpulet restart (%s -> %s)", p1.Name, cid, c)
	}
	if d := s.DRAPodDevices(p1, 1); d[0] != d1[0] {
		s.Fatalf("%s's claim changed across the gpulet restart (%s -> %s)", p1.Name, d1[0], d[0])
	}
	s.Logf("after the gpulet restart: %s keeps its container and %s", p1.Name, d1[0])

	// A fault taints the GPU in the slice (NVIDIA's key); a new plain claim gets another GPU; a
	// claim that tolerates the taint can have the faulted one; a clear removes the taint.
	var bad string
	var badGPU struct {
		index int
		uuid  string
	}
	for _, g := range s.Inventory() {
		n := "gpu-" + strconv.Itoa(g.Minor)
		if !slices.Contains(d1, n) && !slices.Contains(d2, n) && !slices.Contains(dp, n) && (bad == "" || g.Minor < mustMinor(bad)) {
			bad, badGPU.index, badGPU.uuid = n, g.Index, g.UUID
		}
	}
	taintsAre := func(want string) func() error {
		return func() error {
			d, err := s.SliceDevice(bad)
			if err != nil {
				return err
			}
			if got := taintsOf(d); got != want {
				return fmt.Errorf("%s taints [%s], want [%s]", bad, got, want)
			}
			return nil
		}
	}
	t0 = time.Now()
	s.GpuletOnNode("sim", "fault", "--sim-root="+s.SimRoot, fmt.Sprintf("--gpu=%d", badGPU.index), "--xid=48")
	s.Eventually(60*time.Second, bad+" tainted gpu.nvidia.com/xid=48:NoSchedule", taintsAre("gpu.nvidia.com/xid=48:NoSchedule"))
	s.Timing("DRA fault -> device taint on the API server", time.Since(t0))
	if err := s.SliceCountIs(s.SimGPUs)(); err != nil {
		s.Fatalf("the faulted GPU was withdrawn instead of tainted: %v", err)
	}
	s.DRAHoldJob("dra-after-fault", "one-gpu")
	s.Eventually(90*time.Second, "a one-GPU claim runs during the fault", s.HoldRunning("dra-after-fault"))
	if q := s.DRAPodDevices(s.MustJobPod("dra-after-fault"), 1); q[0] == bad {
		s.Fatalf("the faulted %s was given to a claim that does not tolerate its taint", bad)
	}
	s.CreateClaimTemplate(claimTemplate("tolerate-xid", fmt.Sprintf("device.attributes['gpu.nvidia.com'].uuid == '%s'", badGPU.uuid),
		resourcev1.DeviceToleration{Key: "gpu.nvidia.com/xid", Operator: resourcev1.DeviceTolerationOpExists, Effect: resourcev1.DeviceTaintEffectNoSchedule}))
	s.DRAHoldJob("dra-tolerate", "tolerate-xid")
	s.Eventually(90*time.Second, "a claim tolerating the taint gets the faulted GPU", s.HoldRunning("dra-tolerate"))
	pt := s.MustJobPod("dra-tolerate")
	if d := s.DRAPodDevices(pt, 1); d[0] != bad {
		s.Fatalf("the tolerating claim got %s, not %s", d[0], bad)
	}
	s.Logf("%s faulted and tainted (gpu.nvidia.com/xid=48:NoSchedule); the tolerating claim got it", bad)
	s.Release(pt)
	s.GpuletOnNode("sim", "clear", "--sim-root="+s.SimRoot, fmt.Sprintf("--gpu=%d", badGPU.index))
	s.Eventually(60*time.Second, bad+" untainted", taintsAre(""))
	s.Eventually(60*time.Second, "dra-tolerate COMPLETIONS 1/1", s.JobComplete("dra-tolerate"))

	for _, j := range []string{"dra-a", "dra-b", "dra-pair", "dra-after-fault"} {
		s.Release(s.MustJobPod(j))
	}
	for _, j := range []string{"dra-a", "dra-b", "dra-pair", "dra-after-fault"} {
		s.Eventually(60*time.Second, j+" COMPLETIONS 1/1", s.JobComplete(j))
	}
	s.DeleteTestWorkloads()
	s.Eventually(60*time.Second, "claim CDI specs removed (Unprepare)", func() error {
		if out := s.OnNode("sh", "-c", "ls /var/run/cdi/ | grep '^k8s.gpu.nvidia.com-claim_' || true"); strings.TrimSpace(out) != "" {
			return fmt.Errorf("claim CDI specs left after the pods ended: %s", out)
		}
		return nil
	})
}

func mustMinor(dev string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(dev, "gpu-"))
	return n
}

// ExtClaim is the ResourceClaim the scheduler made for the pod's extended
// resources (DRA), or "".
func ExtClaim(p *corev1.Pod) string {
	if p.Status.ExtendedResourceClaimStatus == nil {
		return ""
	}
	return p.Status.ExtendedResourceClaimStatus.ResourceClaimName
}

// scenarioDRAExt: with DRA on, a Job asking limits nvidia.com/gpu: 2 runs
// through DRA (extendedResourceName on the class): its pod has
// extendedResourceClaimStatus, the claim holds 2 devices and the pod sees
// exactly their /dev/nvidiaN; with GPULET_DRA_DEVICES=0,1 the slice holds 2
// GPUs, Allocatable is 6, a 1-GPU pod is served by the device plugin (no
// claim, not one of DRA's GPUs) and a 7-GPU pod stays Pending.
func scenarioDRAExt(s *S) {
	s.Cleanup(s.DRARestore)
	s.DRAOn()
	// A plain nvidia.com/gpu pod, as written for the device plugin, on a node whose GPUs are all DRA's.
	s.HoldJob("ext-two", 2)
	s.Eventually(90*time.Second, "a pod asking nvidia.com/gpu: 2 runs on a DRA-owned node", s.HoldRunning("ext-two"))
	p := s.Pod("default", s.MustJobPod("ext-two").Name)
	c := ExtClaim(p)
	if c == "" {
		s.Fatalf("pod %s has no extendedResourceClaimStatus: not served through DRA", p.Name)
	}
	claim, err := s.Client.ResourceV1().ResourceClaims("default").Get(s.ctx, c, metav1.GetOptions{})
	if err != nil || claim.Status.Allocation == nil {
		s.Fatalf("the extended-resource claim %s: %v (allocated: %v)", c, err, claim != nil && claim.Status.Allocation != nil)
	}
	var minors []int
	var devs []string
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver == DRADriver {
			devs = append(devs, r.Device)
			minors = append(minors, mustMinor(r.Device))
		}
	}
	slices.Sort(minors)
	if len(devs) != 2 {
		s.Fatalf("the extended-resource claim %s holds %v, want 2 devices", c, devs)
	}
	log, err := s.PodLog(p.Namespace, p.Name)
	if err != nil {
		s.Fatal(err)
	}
	if got := PodMinors(log); !slices.Equal(got, minors) {
		s.Fatalf("pod %s sees /dev/nvidia%v, its claim %s holds %v", p.Name, got, c, devs)
	}
	s.Logf("nvidia.com/gpu: 2 through DRA: claim %s, %v, pod sees /dev/nvidia%v", c, devs, minors)
	s.Release(p)
	s.Eventually(60*time.Second, "ext-two COMPLETIONS 1/1", s.JobComplete("ext-two"))
	s.DeleteJob("default", "ext-two")

	// DRA owns GPUs 0 and 1 only: the device plugin advertises the other 6, so the scheduler serves
	// nvidia.com/gpu from the device plugin on this node and never from DRA's two.
	s.updateDaemonSet(func(ds *appsv1.DaemonSet) {
		for i := range ds.Spec.Template.Spec.Containers {
			ds.Spec.Template.Spec.Containers[i].Env = setEnv(ds.Spec.Template.Spec.Containers[i].Env, "GPULET_DRA_DEVICES=0,1")
		}
	})
	s.Eventually(120*time.Second, "DaemonSet rolled out with GPULET_DRA_DEVICES=0,1", s.DaemonSetRolled)
	s.Eventually(60*time.Second, "2 devices in the slice", s.SliceCountIs(2))
	s.Eventually(60*time.Second, "Allocatable nvidia.com/gpu 6", s.NodeGPUsAre("6/6"))
	s.HoldJob("ext-one", 1)
	s.Eventually(90*time.Second, "a pod asking nvidia.com/gpu: 1 runs with 6 GPUs in the device plugin", s.HoldRunning("ext-one"))
	p = s.Pod("default", s.MustJobPod("ext-one").Name)
	if c := ExtClaim(p); c != "" {
		s.Fatalf("pod %s was served through DRA (claim %s) although the device plugin advertises nvidia.com/gpu", p.Name, c)
	}
	g := s.PodGPUs(p, 1)
	gpu, _ := s.GPU(g[0])
	if _, err := s.SliceDevice("gpu-" + strconv.Itoa(gpu.Minor)); err == nil {
		s.Fatalf("pod %s got DRA's gpu-%d from the device plugin", p.Name, gpu.Minor)
	}
	s.Logf("with GPULET_DRA_DEVICES=0,1: nvidia.com/gpu: 1 served by the device plugin (/dev/nvidia%d)", gpu.Minor)
	// 7 > the device plugin's 6: Pending, not made up from DRA's GPUs.
	s.HoldJob("ext-seven", 7)
	s.Eventually(60*time.Second, "ext-seven unschedulable", func() error {
		q, err := s.JobPod("default", "ext-seven")
		if err != nil || q == nil {
			return fmt.Errorf("no pod yet (%v)", err)
		}
		return Unschedulable(q, "")
	})
	s.Logf("nvidia.com/gpu: 7 with 6 in the device plugin and 2 in DRA: %s", podWhy(s.MustJobPod("ext-seven")))
	s.Release(p)
}
