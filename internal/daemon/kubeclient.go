//go:build !nokube

package daemon

import (
	"k8s.io/client-go/kubernetes"

	"github.com/gpulet/gpulet/internal/kube"
)

// kubeState is what the components that use the Kubernetes API share: one
// client, made on first use. A build with the nokube tag has none
// (nokube.go).
type kubeState struct {
	client kubernetes.Interface
}

// newKubeClient makes a Kubernetes client; a test counts the clients a
// plain device plugin makes (none).
var newKubeClient = kube.Client

// kubeClient is the Kubernetes client of the pod's service account, made
// once for every component that needs the API.
func (g *gpulet) kubeClient() (kubernetes.Interface, error) {
	if g.kube.client == nil {
		c, err := newKubeClient("")
		if err != nil {
			return nil, err
		}
		g.kube.client = c
	}
	return g.kube.client, nil
}
