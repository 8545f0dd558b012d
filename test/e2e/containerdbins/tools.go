//go:build tools

// Package containerdbins pins the containerd 2 release the end-to-end test
// builds from Go module source (see test/e2e/lib/gobins.sh): the runtime with
// CDI that gpulet's CDI specs are tested through. A module of its own, so the
// root module does not depend on containerd.
package containerdbins

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
