package scenarios

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// capacityClaims is how many claims dra-capacity allocates on the node.
const capacityClaims = 100

// scenarioDRACapacity: with --dra-consumable-capacity, one pod referencing
// 100 ResourceClaims that each ask `capacity.requests.memory: 6Gi` of the
// gpu.nvidia.com class (600Gi of the node's 8 × 81559Mi) is scheduled by
// the real scheduler on the GPU node and runs: every claim is allocated a
// share (a share ID) of a GPU, no GPU holds more memory in shares than it
// has, and the pod sees the GPUs the shares are on. The times from the
// pod's creation to its scheduling (the 100 allocations) and to Running
// (100 claims prepared) go to timings.tsv.
func scenarioDRACapacity(s *S) {
	s.Cleanup(s.DRARestore)
	s.DRAOn()
	s.Kubectl("-n", s.Namespace, "set", "env", "ds/"+s.DaemonSet, "GPULET_DRA_CONSUMABLE_CAPACITY=true")
	s.Eventually(120*time.Second, "DaemonSet rolled out with consumable capacity", s.DaemonSetRolled)
	s.Eventually(60*time.Second, "every GPU published for several claims", func() error {
		devs, err := s.SliceDevices()
		if err != nil {
			return err
		}
		if len(devs) != s.SimGPUs {
			return fmt.Errorf("%d devices published, want %d", len(devs), s.SimGPUs)
		}
		for _, d := range devs {
			if d.AllowMultipleAllocations == nil || !*d.AllowMultipleAllocations {
				return fmt.Errorf("%s is not published with allowMultipleAllocations", d.Name)
			}
		}
		return nil
	})
	devs, err := s.SliceDevices()
	if err != nil {
		s.Fatal(err)
	}
	memory := map[string]int64{}
	for _, d := range devs {
		if d.AllowMultipleAllocations == nil || !*d.AllowMultipleAllocations || d.Capacity["memory"].RequestPolicy == nil {
			s.Fatalf("device %s is not published for several claims (allowMultipleAllocations, a memory request policy)", d.Name)
		}
		q := d.Capacity["memory"].Value
		memory[d.Name] = q.Value()
	}

	const ns = "dra-capacity"
	ctx := context.Background()
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		s.Fatal(err)
	}
	s.Cleanup(func() { s.DeleteNamespace(ns) })
	share := resource.MustParse("6Gi")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hundred-claims", Namespace: ns},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: new(int64(1)),
			Containers: []corev1.Container{{
				Name: "main", Image: "docker.io/library/busybox:e2e", ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"sh", "-c", quickstartScript},
			}},
		},
	}
	for i := range capacityClaims {
		name := fmt.Sprintf("share-%03d", i)
		c := &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{
				Name: "gpu",
				Exactly: &resourceapi.ExactDeviceRequest{
					DeviceClassName: DRADriver,
					Capacity:        &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{"memory": share}},
				},
			}}}},
		}
		if _, err := s.Client.ResourceV1().ResourceClaims(ns).Create(ctx, c, metav1.CreateOptions{}); err != nil {
			s.Fatalf("create claim %s: %v", name, err)
		}
		pod.Spec.ResourceClaims = append(pod.Spec.ResourceClaims, corev1.PodResourceClaim{Name: name, ResourceClaimName: new(name)})
		pod.Spec.Containers[0].Resources.Claims = append(pod.Spec.Containers[0].Resources.Claims, corev1.ResourceClaim{Name: name})
	}

	t0 := time.Now()
	if _, err := s.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		s.Fatal(err)
	}
	s.Cleanup(func() { s.DeletePod(ns, pod.Name) })
	// Polled every 0.2 s: the time is when the poll first saw the pod
	// scheduled (its condition's own time has a resolution of 1 s).
	s.Eventually(180*time.Second, "the pod of 100 claims scheduled", func() error {
		p, err := s.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("pod not scheduled yet (%s)", podWhy(p))
	})
	scheduled := time.Since(t0)
	p := s.quickstartPods(ns, 1, 1)[pod.Name] // Running, its container started
	running := time.Since(t0)
	s.Timing("DRA: 100 consumable-capacity claims (6Gi each) allocated on one node (pod created -> PodScheduled, polled every 0.2 s)", scheduled)
	s.Timing("DRA: 100 consumable-capacity claims (6Gi each): pod created -> Running (100 claims prepared)", running)

	used := map[string]int64{}
	count := map[string]int{}
	for i := range capacityClaims {
		c, err := s.Client.ResourceV1().ResourceClaims(ns).Get(ctx, fmt.Sprintf("share-%03d", i), metav1.GetOptions{})
		if err != nil {
			s.Fatal(err)
		}
		if c.Status.Allocation == nil || len(c.Status.Allocation.Devices.Results) != 1 {
			s.Fatalf("claim %s is not allocated one device: %+v", c.Name, c.Status.Allocation)
		}
		r := c.Status.Allocation.Devices.Results[0]
		consumed := r.ConsumedCapacity["memory"]
		if r.ShareID == nil || consumed.Cmp(share) != 0 {
			s.Fatalf("claim %s got %s without a share of 6Gi (share ID %v, consumed %v)", c.Name, r.Device, r.ShareID, r.ConsumedCapacity)
		}
		used[r.Device] += share.Value()
		count[r.Device]++
	}
	for d, u := range used {
		if u > memory[d] {
			s.Fatalf("%s holds %d bytes in shares, has %d", d, u, memory[d])
		}
	}
	s.Logf("100 shares of 6Gi over %d GPUs: %v", len(count), count)
	v := s.containerSaw(p, "main")
	if len(v.minors) != len(count) {
		s.Fatalf("the pod sees /dev/nvidia%v, its shares are on %d GPUs %v", v.minors, len(count), count)
	}
}
