package scenarios

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// PluginCDISpec is where gpulet's device plugin writes its CDI spec on the node.
const PluginCDISpec = "/var/run/cdi/k8s.device-plugin.nvidia.com-gpu.json"

// CheckpointGPUs is the GPUs the kubelet itself records for the pod (its
// device-manager checkpoint on the node), sorted: what the device plugin
// allocated, whatever the pod sees.
func (s *S) CheckpointGPUs(pod *corev1.Pod) []string {
	s.Helper()
	out := s.OnNode("cat", "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint")
	var cp struct {
		Data struct {
			PodDeviceEntries []struct {
				PodUID       string
				ResourceName string
				DeviceIDs    map[string][]string
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &cp); err != nil {
		s.Fatalf("the kubelet's checkpoint: %v", err)
	}
	var ids []string
	for _, e := range cp.Data.PodDeviceEntries {
		if e.PodUID != string(pod.UID) || e.ResourceName != "nvidia.com/gpu" {
			continue
		}
		for _, l := range e.DeviceIDs {
			ids = append(ids, l...)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// CDIPod checks a pod of the device plugin in a CDI mode: it sees exactly
// the /dev/nvidiaN of the want GPUs the kubelet gave it, as character
// devices, the control node from the spec, and NVIDIA_VISIBLE_DEVICES=void
// from the spec.
func (s *S) CDIPod(pod *corev1.Pod, want int) {
	s.Helper()
	log, err := s.PodLog(pod.Namespace, pod.Name)
	if err != nil {
		s.Fatal(err)
	}
	uuids := s.CheckpointGPUs(pod)
	if len(uuids) != want {
		s.Fatalf("the kubelet's checkpoint gives %s %v, want %d GPU(s)", pod.Name, uuids, want)
	}
	var minors []int
	for _, u := range uuids {
		g, ok := s.GPU(u)
		if !ok {
			s.Fatalf("pod %s: %s is not a GPU of the node", pod.Name, u)
		}
		minors = append(minors, g.Minor)
	}
	slices.Sort(minors)
	if got := PodMinors(log); !slices.Equal(got, minors) {
		s.Fatalf("pod %s sees /dev/nvidia%v, want %v (its GPUs %v); log:\n%s", pod.Name, got, minors, uuids, log)
	}
	for _, m := range deviceRE.FindAllStringSubmatch(log, -1) {
		if m[1] != "c" {
			s.Fatalf("pod %s: /dev/nvidia%s is not a character device; log:\n%s", pod.Name, m[2], log)
		}
	}
	if !regexp.MustCompile(`(?m)^device: c.* /dev/nvidiactl$`).MatchString(log) {
		s.Fatalf("pod %s: no /dev/nvidiactl from the CDI spec; log:\n%s", pod.Name, log)
	}
	if !regexp.MustCompile(`(?m)^NVIDIA_VISIBLE_DEVICES=void$`).MatchString(log) {
		s.Fatalf("pod %s: NVIDIA_VISIBLE_DEVICES is not void; log:\n%s", pod.Name, log)
	}
	s.Logf("pod %s: /dev/nvidia%v for %v, nvidiactl, NVIDIA_VISIBLE_DEVICES=void", pod.Name, minors, uuids)
}

// scenarioCDI: gpulet switched with deploy/gpulet-cdi-daemonset-patch.yaml to
// cdi-cri (then cdi-annotations) writes its CDI spec to the node's
// /var/run/cdi, which resolves every GPU; containerd injects exactly the
// pod's GPUs; a gpulet restart leaves the pod's container, devices and the
// spec as they were.
func scenarioCDI(s *S) {
	s.Cleanup(s.RestoreDaemonSet)
	// cdi-cri: the kubelet passes CDI names to containerd in the CRI request; no device specs.
	s.PatchDaemonSet("gpulet-cdi-daemonset-patch.yaml")
	s.SetGpuletEnv("PASS_DEVICE_SPECS=false")
	s.OnNode("test", "-s", PluginCDISpec)
	n := 0
	for l := range strings.Lines(s.GpuletOnNode("cdi", "list", "--spec-dirs=/var/run/cdi")) {
		if strings.HasPrefix(l, "k8s.device-plugin.nvidia.com/gpu=GPU-") {
			n++
		}
	}
	if n != s.SimGPUs {
		s.Fatalf("the CDI spec on the node resolves %d GPU names, want %d", n, s.SimGPUs)
	}
	s.Logf("CDI spec %s resolves %d GPUs by UUID", PluginCDISpec, n)

	s.HoldJob("gpu2-cdi", 2)
	s.Eventually(90*time.Second, "a 2-GPU Job runs with cdi-cri", s.HoldRunning("gpu2-cdi"))
	p := s.MustJobPod("gpu2-cdi")
	s.CDIPod(p, 2)
	cid0 := ContainerID(p)
	log0, _ := s.PodLog(p.Namespace, p.Name)

	// gpulet restarted while the pod runs: the spec stays, the pod keeps its container and devices.
	gp := s.MustGpuletPod()
	if err := s.Client.CoreV1().Pods(s.Namespace).Delete(s.ctx, gp.Name, metav1.DeleteOptions{}); err != nil {
		s.Fatal(err)
	}
	s.Eventually(120*time.Second, "a new gpulet pod Ready", s.NewGpuletReady(gp.Name))
	s.Eventually(90*time.Second, "Allocatable 8 after the gpulet restart", s.GPUs8AndStable)
	if cid := ContainerID(s.Pod(p.Namespace, p.Name)); cid != cid0 {
		s.Fatalf("%s's container changed across the gpulet restart (%s -> %s)", p.Name, cid0, cid)
	}
	var ls string
	s.Eventually(60*time.Second, "exec into "+p.Name, func() (err error) {
		ls, err = s.KubectlErr("exec", p.Name, "--", "ls", "/dev")
		return err
	})
	var devs []string
	for l := range strings.Lines(ls) {
		if m := regexp.MustCompile(`^nvidia([0-9]+)$`).FindStringSubmatch(strings.TrimSpace(l)); m != nil {
			devs = append(devs, m[1])
		}
	}
	if got, had := fmt.Sprint(sortedInts(devs)), fmt.Sprint(PodMinors(log0)); got != had {
		s.Fatalf("%s sees /dev/nvidia%s after the gpulet restart, had %s", p.Name, got, had)
	}
	s.OnNode("test", "-s", PluginCDISpec)
	s.Logf("after the gpulet restart: %s still runs in the same container with the same devices", p.Name)
	s.Release(p)
	s.Eventually(60*time.Second, "gpu2-cdi COMPLETIONS 1/1", s.JobComplete("gpu2-cdi"))

	// cdi-annotations: the names travel as container annotations that containerd resolves.
	s.SetGpuletEnv("DEVICE_LIST_STRATEGY=cdi-annotations")
	s.HoldJob("gpu1-cdiann", 1)
	s.Eventually(90*time.Second, "a 1-GPU Job runs with cdi-annotations", s.HoldRunning("gpu1-cdiann"))
	p = s.MustJobPod("gpu1-cdiann")
	s.CDIPod(p, 1)
	s.Release(p)
	s.Eventually(60*time.Second, "gpu1-cdiann COMPLETIONS 1/1", s.JobComplete("gpu1-cdiann"))
}

func sortedInts(ss []string) []int {
	var out []int
	for _, v := range ss {
		var n int
		fmt.Sscan(v, &n)
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// videoLibs are the libraries a pod with NVIDIA_DRIVER_CAPABILITIES=
// compute,utility,video reads from the driver root (the simulated driver's
// files say their own name and version).
var videoLibs = []string{"libnvcuvid", "libnvidia-encode", "libnvidia-opticalflow", "libcuda", "libnvidia-ml"}

// videoJob is a Job whose pod asks NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
// and one GPU (device plugin) or the one-gpu claim (DRA), and prints what it
// finds at the sonames of the video and compute libraries.
func videoJob(name string, claim bool) *batchv1.Job {
	script := "for f in"
	for _, l := range videoLibs {
		script += " " + l + ".so.1"
	}
	script += `; do echo "lib $f: $(cat /usr/lib/x86_64-linux-gnu/$f 2>&1)"; done`
	c := corev1.Container{
		Name: "main", Image: "docker.io/library/busybox:e2e", ImagePullPolicy: corev1.PullIfNotPresent,
		Env:     []corev1.EnvVar{{Name: "NVIDIA_DRIVER_CAPABILITIES", Value: "compute,utility,video"}},
		Command: []string{"sh", "-c", script},
	}
	spec := corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, TerminationGracePeriodSeconds: ptr.To[int64](1)}
	if claim {
		spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "gpus", ResourceClaimTemplateName: ptr.To("one-gpu")}}
		c.Resources.Claims = []corev1.ResourceClaim{{Name: "gpus"}}
	} else {
		c.Resources.Limits = corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")}
	}
	spec.Containers = []corev1.Container{c}
	labels := map[string]string{"app": "gpulet-e2e"}
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: batchv1.JobSpec{
			BackoffLimit: ptr.To[int32](0),
			Template:     corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
}

// VideoPod checks that the pod read each video and compute library from
// the simulated driver root.
func (s *S) VideoPod(pod *corev1.Pod, driverVersion string) {
	s.Helper()
	log, err := s.PodLog(pod.Namespace, pod.Name)
	if err != nil {
		s.Fatal(err)
	}
	for _, f := range videoLibs {
		want := fmt.Sprintf("lib %s.so.1: simulated NVIDIA driver file %s.so.%s", f, f, driverVersion)
		if !slices.Contains(strings.Split(log, "\n"), want) {
			s.Fatalf("pod %s does not see %s.so.1 from the simulated driver root (want %q); log:\n%s", pod.Name, f, want, log)
		}
	}
	s.Logf("pod %s (NVIDIA_DRIVER_CAPABILITIES=compute,utility,video): %v from the simulated driver root", pod.Name, videoLibs)
}

// scenarioCDIVideo: the device plugin's CDI spec (cdi-cri) mounts files of
// the simulator's driver root (hook-free); a pod with
// NVIDIA_DRIVER_CAPABILITIES=compute,utility,video and, with DRA on, a pod
// of the one-gpu claim each read the video and compute libraries from that
// root; the DaemonSet is restored.
func scenarioCDIVideo(s *S) {
	drv := s.DriverVersion()
	s.Cleanup(s.DRARestore)
	s.PatchDaemonSet("gpulet-cdi-daemonset-patch.yaml")
	s.SetGpuletEnv("PASS_DEVICE_SPECS=false")
	var spec struct {
		ContainerEdits struct {
			Mounts []struct {
				HostPath string `json:"hostPath"`
			} `json:"mounts"`
		} `json:"containerEdits"`
	}
	if err := json.Unmarshal([]byte(s.OnNode("cat", PluginCDISpec)), &spec); err != nil {
		s.Fatalf("%s: %v", PluginCDISpec, err)
	}
	n := 0
	for _, m := range spec.ContainerEdits.Mounts {
		if strings.HasPrefix(m.HostPath, s.SimRoot+"/driver/") {
			n++
		}
	}
	if n == 0 {
		s.Fatalf("gpulet's CDI spec mounts nothing from the simulated driver root %s/driver", s.SimRoot)
	}
	s.Logf("the device plugin's CDI spec mounts %d files of the simulated driver root (hook-free)", n)
	s.CreateJob(videoJob("video-cdi", false))
	s.Eventually(90*time.Second, "video-cdi COMPLETIONS 1/1 (cdi-cri)", s.JobComplete("video-cdi"))
	s.VideoPod(s.MustJobPod("video-cdi"), drv)
	s.DeleteJob("default", "video-cdi")
	s.RestoreDaemonSet()

	// A DRA claim: its per-claim spec carries the same driver files.
	s.DRAOn()
	s.CreateClaimTemplate(Manifest[*resourcev1.ResourceClaimTemplate](s, "deploy/examples/dra/one-gpu.yaml"))
	s.CreateJob(videoJob("video-claim", true))
	s.Eventually(90*time.Second, "video-claim COMPLETIONS 1/1 (DRA claim)", s.JobComplete("video-claim"))
	s.VideoPod(s.MustJobPod("video-claim"), drv)
}

// DriverVersion is the simulated node's driver version (gpulet list).
func (s *S) DriverVersion() string {
	s.Helper()
	v := s.ListNode(s.SimArgs()...).DriverVersion
	if v == "" {
		s.Fatal("no driverVersion in gpulet list -o json")
	}
	return v
}
