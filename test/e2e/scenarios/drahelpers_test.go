package scenarios

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DRADriver is gpulet's DRA driver name.
const DRADriver = "gpu.nvidia.com"

// SliceDevices is every device gpulet's ResourceSlices publish for the GPU
// node.
func (s *S) SliceDevices() ([]resourcev1.Device, error) {
	l, err := s.Client.ResourceV1().ResourceSlices().List(s.ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []resourcev1.Device
	for _, sl := range l.Items {
		if sl.Spec.Driver == DRADriver && sl.Spec.NodeName != nil && *sl.Spec.NodeName == s.Node {
			out = append(out, sl.Spec.Devices...)
		}
	}
	return out, nil
}

// SliceCountIs is a condition: gpulet publishes n devices for the GPU node.
func (s *S) SliceCountIs(n int) func() error {
	return func() error {
		d, err := s.SliceDevices()
		if err != nil {
			return err
		}
		if len(d) != n {
			return fmt.Errorf("%d devices published, want %d", len(d), n)
		}
		return nil
	}
}

// NoPluginGPUs is a condition: the device plugin advertises no GPU
// (Allocatable nvidia.com/gpu absent or 0).
func (s *S) NoPluginGPUs() error { return s.noPluginGPUs(s.Node)() }

// DRAOn takes the operator's DRA steps (README): the device classes, the
// driver's RBAC (kubectl apply, as written), the DaemonSet patch; it waits
// until gpulet publishes every GPU and the device plugin advertises none.
// Register s.Cleanup(s.DRARestore) before.
func (s *S) DRAOn() {
	s.Helper()
	s.Kubectl("apply", "-f", s.DeployDir+"/dra-deviceclasses.yaml", "-f", s.DeployDir+"/gpulet-dra-rbac.yaml")
	s.PatchDaemonSet("gpulet-dra-daemonset-patch.yaml")
	s.Eventually(60*time.Second, fmt.Sprintf("%d devices in gpulet's ResourceSlice", s.SimGPUs), s.SliceCountIs(s.SimGPUs))
	s.Eventually(60*time.Second, "the device plugin advertises no GPU DRA owns", s.NoPluginGPUs)
}

// DRARestore undoes DRAOn and what a DRA scenario left: the test pods go
// first, while the DRA driver still runs (the kubelet needs it to unprepare
// their claims; a pod whose claim cannot be unprepared stays Terminating),
// then the claim templates and any simulated fault, then the DaemonSet as
// deployed.
func (s *S) DRARestore() {
	s.Helper()
	s.DeleteTestWorkloads()
	if err := s.Client.ResourceV1().ResourceClaimTemplates("default").DeleteCollection(s.ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		s.Errorf("delete the claim templates: %v", err)
	}
	s.GpuletOnNode("sim", "clear", "--all", "--sim-root="+s.SimRoot)
	s.RestoreDaemonSet()
}

// DeleteTestWorkloads deletes the Jobs and pods labelled app=gpulet-e2e and
// waits (bounded) until their pods are gone.
func (s *S) DeleteTestWorkloads() {
	s.Helper()
	bg := metav1.DeletePropagationBackground
	sel := metav1.ListOptions{LabelSelector: "app=gpulet-e2e"}
	if err := s.Client.BatchV1().Jobs("default").DeleteCollection(s.ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, sel); err != nil {
		s.Errorf("delete the test Jobs: %v", err)
	}
	grace := int64(1)
	if err := s.Client.CoreV1().Pods("default").DeleteCollection(s.ctx, metav1.DeleteOptions{GracePeriodSeconds: &grace}, sel); err != nil {
		s.Errorf("delete the test pods: %v", err)
	}
	s.Eventually(90*time.Second, "the test pods are gone", func() error {
		l, err := s.Client.CoreV1().Pods("default").List(s.ctx, sel)
		if err != nil {
			return err
		}
		if len(l.Items) > 0 {
			return fmt.Errorf("%d test pod(s) left, e.g. %s (%s)", len(l.Items), l.Items[0].Name, l.Items[0].Status.Phase)
		}
		return nil
	})
}

// ClaimDevices is the devices (their names in the slice) the pod's first
// claim was allocated, sorted.
func (s *S) ClaimDevices(pod *corev1.Pod) ([]string, error) {
	if len(pod.Status.ResourceClaimStatuses) == 0 || pod.Status.ResourceClaimStatuses[0].ResourceClaimName == nil {
		return nil, fmt.Errorf("pod %s has no claim", pod.Name)
	}
	c, err := s.Client.ResourceV1().ResourceClaims(pod.Namespace).Get(s.ctx, *pod.Status.ResourceClaimStatuses[0].ResourceClaimName, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if c.Status.Allocation == nil {
		return nil, fmt.Errorf("claim %s is not allocated", c.Name)
	}
	var out []string
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver == DRADriver {
			out = append(out, r.Device)
		}
	}
	slices.Sort(out)
	return out, nil
}

// PodMinors is the N of every /dev/nvidiaN the workload's log lists (its
// view of /dev), sorted.
func PodMinors(log string) []int {
	var out []int
	for _, m := range deviceRE.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[2])
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// DRAPodDevices checks that the pod's claim holds want devices gpu-<minor>
// and that the pod sees exactly their /dev/nvidia<minor> (from the claim's
// CDI spec); it returns the device names.
func (s *S) DRAPodDevices(pod *corev1.Pod, want int) []string {
	s.Helper()
	pod = s.Pod(pod.Namespace, pod.Name)
	devs, err := s.ClaimDevices(pod)
	if err != nil {
		s.Fatal(err)
	}
	if len(devs) != want {
		s.Fatalf("pod %s's claim holds %v, want %d device(s)", pod.Name, devs, want)
	}
	var minors []int
	for _, d := range devs {
		n, err := strconv.Atoi(strings.TrimPrefix(d, "gpu-"))
		if err != nil || !strings.HasPrefix(d, "gpu-") {
			s.Fatalf("pod %s's claim holds %q, not a gpu-<minor> device", pod.Name, d)
		}
		minors = append(minors, n)
	}
	slices.Sort(minors)
	log, err := s.PodLog(pod.Namespace, pod.Name)
	if err != nil {
		s.Fatal(err)
	}
	if got := PodMinors(log); !slices.Equal(got, minors) {
		s.Fatalf("pod %s sees /dev/nvidia%v, its claim holds %v; log:\n%s", pod.Name, got, devs, log)
	}
	return devs
}

// CreateClaimTemplate creates a ResourceClaimTemplate in the default
// namespace (DRARestore deletes them all).
func (s *S) CreateClaimTemplate(t *resourcev1.ResourceClaimTemplate) *resourcev1.ResourceClaimTemplate {
	s.Helper()
	if t.Namespace == "" {
		t.Namespace = "default"
	}
	out, err := s.Client.ResourceV1().ResourceClaimTemplates(t.Namespace).Create(s.ctx, t, metav1.CreateOptions{})
	if err != nil {
		s.Fatalf("create ResourceClaimTemplate %s: %v", t.Name, err)
	}
	return out
}
