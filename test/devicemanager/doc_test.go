// Package devicemanager_test is proof against code no one here wrote: it
// runs the kubelet's real device manager
// (k8s.io/kubernetes/pkg/kubelet/cm/devicemanager, v1.37.2) in-process
// against the real `gpulet run` process on a simulated node, and checks
// what the kubelet itself ends up with:
//
//   - TestDGXH100 (dgx-h100 profile): (a) capacity and allocatable 8;
//     (b) a fault injected with `gpulet sim fault` makes allocatable 7 with
//     capacity 8, `gpulet sim clear` brings 8 back; (c) a container asking
//     for 2 gets, from GetDeviceRunContainerOptions, NVIDIA_VISIBLE_DEVICES,
//     /dev/nvidiaN device specs and CDI names of exactly two healthy GPUs;
//     (d) a kubelet restart (graceful, or a crash leaving kubelet.sock
//     behind) brings 8/8 back without touching gpulet, timed, with no
//     registration refused; (d2) the kubelet then still notices gpulet
//     dying.
//   - TestGpuletRestart (e): SIGTERM removes gpulet's socket and only it; a
//     restarted gpulet comes back, keeps an injected fault, and after
//     SIGKILL (socket left behind) comes back twice in a row.
//   - TestDGX1PreferredAllocation (f, dgx1-v100 profile): 2-GPU requests go
//     through the kubelet's GetPreferredAllocation call and get NVLink NV2
//     pairs.
//   - BenchmarkKubeletRestartReRegistration, BenchmarkGpuletStartToCapacity.
//
// It is its own module so that gpulet's module does not depend on
// k8s.io/kubernetes. The device manager always serves
// /var/lib/kubelet/device-plugins/kubelet.sock, so TestMain re-executes the
// test binary in a private mount namespace with a tmpfs on /var/lib: it
// needs root, and skips everything otherwise.
//
// Run (as root), from the repository root:
//
//	make test-kubelet
//
// or here, building gpulet from ../../cmd/gpulet unless GPULET_BIN names a
// binary (CGO_ENABLED=0 -trimpath shares the e2e Kubernetes build cache):
//
//	CGO_ENABLED=0 go test -trimpath -count=1 -v ./...
//	CGO_ENABLED=0 go test -trimpath -run '^$' -bench . -benchtime 20x ./...
//
// GPULET_DM_VERBOSE=1 streams gpulet's log; failures print the kubelet's
// and gpulet's logs.
package devicemanager_test
