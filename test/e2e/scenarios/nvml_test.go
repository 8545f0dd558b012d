package scenarios

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// NVIDIA's mock NVML as the node's driver, laid out as NVIDIA's DRA driver
// CI lays it: a driver root holding usr/lib64/libnvidia-ml.so.1,
// config/config.yaml (the profile, found by the library from where it was
// loaded), config/overrides.yaml (faults from nvml-mock-ctl) and dev/nvidia*.
const (
	nvmlRoot    = "/var/lib/nvml-mock/driver"
	nvmlProfile = "h100"
	// nvmlMockDriver is the driver version the mock's H100 profile reports.
	nvmlMockDriver = "550.163.01"
)

// nvmlMock builds (cached) NVIDIA's mock NVML with hack/nvml-mock.sh and
// returns its folder.
func (s *S) nvmlMock() string {
	s.Helper()
	out, err := exec.CommandContext(s.ctx, "../../../hack/nvml-mock.sh").Output()
	if err != nil {
		s.Fatalf("could not build NVIDIA's mock NVML (hack/nvml-mock.sh): %v", err)
	}
	return strings.TrimSpace(string(out))
}

// scenarioNVML: gpulet's real NVML backend on NVIDIA's mock libnvidia-ml.so
// (H100 profile) mounted as the driver root: Allocatable 8 with the mock's
// UUIDs and driver in /metrics; the seed's Job gets exactly one GPU and its
// /dev/nvidiaN; `nvml-mock-ctl fail --gpu 3 --mode ecc_uncorrectable --xid
// 48` on the node: Allocatable 7, DCGM_FI_DEV_XID_ERRORS 48 and
// gpulet_device_healthy 0 for that GPU; the DaemonSet is restored to the
// simulator.
func scenarioNVML(s *S) {
	mock := s.nvmlMock()
	s.Cleanup(s.RestoreDaemonSet)
	s.OnNode("sh", "-ec", `
		mkdir -p "$1/usr/lib64" "$1/config" "$1/dev"
		cp "$2/lib/libnvidia-ml.so.1" "$1/usr/lib64/libnvidia-ml.so.1"
		cp "$2/configs/mock-nvml-config-$3.yaml" "$1/config/config.yaml"
		rm -f "$1/config/overrides.yaml"
		mk() { [ -e "$1/dev/$2" ] || mknod -m 666 "$1/dev/$2" c "$3" "$4"; }
		mk "$1" nvidiactl 195 255
		mk "$1" nvidia-uvm 511 0
		mk "$1" nvidia-uvm-tools 511 1
		for i in 0 1 2 3 4 5 6 7; do mk "$1" "nvidia$i" 195 "$i"; done`, "sh", nvmlRoot, mock, nvmlProfile)
	ctl := func(args ...string) string {
		s.Helper()
		return s.OnNode(append([]string{mock + "/nvml-mock-ctl", "--file", nvmlRoot + "/config/overrides.yaml",
			"--config", nvmlRoot + "/config/config.yaml"}, args...)...)
	}
	s.Cleanup(func() { ctl("reset", "--gpu", "all") })
	node := s.ListNode("--backend=nvml", "--nvidia-driver-root="+nvmlRoot)
	if len(node.GPUs) != 8 {
		s.Fatalf("the mock's inventory has %d GPUs, want 8", len(node.GPUs))
	}
	s.inv = node.GPUs // the workloads' GPUs are judged against the mock's
	s.Logf("mock inventory: %d GPUs, GPU 0 %s", len(s.inv), s.inv[0].UUID)

	// The DaemonSet on the NVML backend with the mock's driver root mounted where it is on the node.
	t0 := time.Now()
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{
		"containers":[{"name":"gpulet",
			"env":[{"name":"GPULET_BACKEND","value":"nvml"},{"name":"NVIDIA_DRIVER_ROOT","value":%[1]q}],
			"volumeMounts":[{"name":"nvml-mock-driver","mountPath":%[1]q}]}],
		"volumes":[{"name":"nvml-mock-driver","hostPath":{"path":%[1]q,"type":"DirectoryOrCreate"}}]}}}}`, nvmlRoot)
	if _, err := s.Client.AppsV1().DaemonSets(s.Namespace).Patch(s.ctx, s.DaemonSet, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		s.Fatalf("could not switch the DaemonSet to the NVML backend: %v", err)
	}
	s.Eventually(120*time.Second, "DaemonSet rolled to the NVML backend", s.DaemonSetRolled)
	s.Eventually(120*time.Second, "Allocatable nvidia.com/gpu 8 from the mock", s.GPUs8AndStable)
	s.Timing("nvml: set backend nvml -> Allocatable 8", time.Since(t0))
	var m []Series
	s.Eventually(30*time.Second, "gpulet's /metrics", func() (err error) { m, err = s.Metrics(); return err })
	util := Select(m, "DCGM_FI_DEV_GPU_UTIL", map[string]string{"DCGM_FI_DRIVER_VERSION": nvmlMockDriver})
	if len(util) != 8 {
		s.Fatalf("/metrics has %d DCGM_FI_DEV_GPU_UTIL series of the mock's driver %s, want 8", len(util), nvmlMockDriver)
	}
	for _, g := range s.inv {
		if len(Select(util, "DCGM_FI_DEV_GPU_UTIL", map[string]string{"UUID": g.UUID})) != 1 {
			s.Fatalf("/metrics has no series for the mock's GPU %s", g.UUID)
		}
	}
	s.Logf("/metrics: 8 GPUs of the mock (driver %s)", nvmlMockDriver)

	// The seed's Job gets one of the mock's GPUs and its device node.
	job := s.CreateJob(Manifest[*batchv1.Job](s, "samples-gpu-demo.yaml"))
	s.Eventually(90*time.Second, "job samples-gpu-demo COMPLETIONS 1/1", s.JobComplete(job.Name))
	p := s.MustJobPod(job.Name)
	s.PodGPUs(p, 1)
	if log, err := s.PodLog(p.Namespace, p.Name); err != nil || !regexp.MustCompile(`(?m)^GPUs visible: 1$`).MatchString(log) {
		s.Fatalf("the Job's log does not say 'GPUs visible: 1' (%v):\n%s", err, log)
	}
	s.DeleteJob(job.Namespace, job.Name)

	// An XID through the mock's NVML event set: GPU 3 leaves Allocatable, /metrics shows it.
	uuid := s.GPUIndex(3).UUID
	s.Logf("nvml-mock-ctl: Xid 48 (uncorrectable ECC) on GPU 3 (%s)", uuid)
	t0 = time.Now()
	ctl("fail", "--gpu", "3", "--mode", "ecc_uncorrectable", "--xid", "48")
	s.Eventually(60*time.Second, "Allocatable 7, Capacity 8", s.NodeGPUsAre("8/7"))
	s.Timing("nvml: XID injected with nvml-mock-ctl -> Allocatable 7 (API server)", time.Since(t0))
	s.GpuletTiming("nvml: XID injected with nvml-mock-ctl -> gpulet marks the GPU unhealthy (its log)", t0, "device unhealthy", uuid)
	byUUID := map[string]string{"UUID": uuid}
	s.Eventually(60*time.Second, "XID 48 on GPU 3 in /metrics", func() error {
		if err := s.MetricIs("DCGM_FI_DEV_XID_ERRORS", byUUID, "48")(); err != nil {
			return err
		}
		return s.MetricIs("gpulet_device_healthy", byUUID, "0")()
	})
}
