//go:build tools

// Package nvidiabins pins the version of NVIDIA's device plugin and GPU Feature Discovery that the
// side-by-side tests and benchmarks build from Go module source (test/e2e/lib/gobins.sh nvidia) and
// run beside gpulet on NVIDIA's mock NVML. A module of its own, so gpulet's module does not depend on
// NVIDIA's.
package nvidiabins

import (
	_ "github.com/NVIDIA/k8s-device-plugin/cmd/gpu-feature-discovery"
	_ "github.com/NVIDIA/k8s-device-plugin/cmd/nvidia-device-plugin"
)
