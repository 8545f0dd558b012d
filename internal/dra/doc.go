// Package dra is gpulet's Dynamic Resource Allocation kubelet plugin: it
// publishes the GPUs and MIG instances gpulet owns for DRA as ResourceSlices
// (resource.k8s.io/v1) under NVIDIA's driver name, gpu.nvidia.com, with the
// attributes NVIDIA's DRA driver publishes, so DeviceClasses and claims
// written for that driver work unchanged; prepares allocated claims by
// writing one CDI spec per claim and applying their NVIDIA sharing configs
// (time-slice intervals, an MPS control daemon per claim); checkpoints prepared claims so a restart
// neither loses nor repeats one; and feeds gpulet's health into both the
// published slices (an unhealthy device is tainted) and the kubelet's
// DRAResourceHealth stream.
//
// It reads the inventory store it is given and nothing else: which GPUs are
// DRA's and which the device plugin's is decided by the daemon, which hands
// each side a filtered view (inventory.View).
package dra
