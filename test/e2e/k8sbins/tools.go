//go:build tools

// Package k8sbins pins the Kubernetes version whose control-plane and node
// binaries the end-to-end test builds from Go module source (see
// test/e2e/lib/gobins.sh k8s). It is a separate module so that the root module
// of gpulet does not depend on k8s.io/kubernetes.
package k8sbins

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
