//go:build tools

// Package ctkbins pins the version of NVIDIA's container toolkit whose `nvidia-ctk` the CDI
// side-by-side test builds from Go module source (test/e2e/lib/gobins.sh ctk). A module of its own,
// so gpulet's module does not depend on the toolkit.
package ctkbins

import (
	_ "github.com/NVIDIA/nvidia-container-toolkit/cmd/nvidia-ctk"
)
