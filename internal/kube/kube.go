// Package kube is gpulet's connection to the Kubernetes API and who it is
// there: the clients (from a kubeconfig or the pod's service account), and
// the node, pod and namespace gpulet runs as. The label publisher and the
// DRA driver both use it.
package kube

import (
	"context"
	"fmt"
	"os"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ServiceAccountNamespaceFile holds the pod's namespace.
const ServiceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Identity is who gpulet is in the cluster: its node (NODE_NAME), and the
// pod and namespace it runs in (downward API). Any may be empty outside a
// pod.
type Identity struct {
	Node      string
	Pod       string
	Namespace string
}

// Client returns a Kubernetes client from kubeconfig, or from the pod's
// service account when kubeconfig is "".
func Client(kubeconfig string) (kubernetes.Interface, error) {
	return ClientWithRate(kubeconfig, 0, 0)
}

// ClientWithRate is Client with its own client-side rate limit (qps
// requests a second, bursts of burst); 0 keeps client-go's defaults.
func ClientWithRate(kubeconfig string, qps float32, burst int) (kubernetes.Interface, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	if qps > 0 {
		cfg.QPS, cfg.Burst = qps, burst
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create Kubernetes client: %w", err)
	}
	return c, nil
}

// DynamicClient returns a dynamic client from kubeconfig, or from the pod's
// service account when kubeconfig is "".
func DynamicClient(kubeconfig string) (dynamic.Interface, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	c, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create Kubernetes dynamic client: %w", err)
	}
	return c, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		if kubeconfig == "" {
			return nil, fmt.Errorf("no in-cluster Kubernetes config (not running in a pod?); pass --kubeconfig: %w", err)
		}
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.UserAgent = "gpulet"
	return cfg, nil
}

// Namespace is configured when set (--namespace, POD_NAMESPACE, ...), else
// the namespace of the pod's service account read from file (""
// means ServiceAccountNamespaceFile).
func Namespace(configured, file string) (string, error) {
	if configured != "" {
		return configured, nil
	}
	if file == "" {
		file = ServiceAccountNamespaceFile
	}
	b, err := os.ReadFile(file)
	if ns := strings.TrimSpace(string(b)); err == nil && ns != "" {
		return ns, nil
	}
	return "", fmt.Errorf("gpulet's namespace is unknown: set POD_NAMESPACE (downward API metadata.namespace) or --namespace (no service account namespace in %s)", file)
}

// DaemonSetOwner is the owner reference to the DaemonSet that runs pod: an
// object it owns is deleted by the garbage collector when the DaemonSet is
// deleted (gpulet uninstalled), not when a pod restarts. It reads the pod
// (RBAC: get pods in its namespace); nil when the pod has no DaemonSet.
func DaemonSetOwner(ctx context.Context, c kubernetes.Interface, namespace, pod string) (*metav1.OwnerReference, error) {
	p, err := c.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read pod %s/%s for its DaemonSet (gpulet's service account needs get on pods in its namespace): %w", namespace, pod, err)
	}
	for _, o := range p.OwnerReferences {
		if o.Kind == "DaemonSet" {
			controller := true
			return &metav1.OwnerReference{APIVersion: o.APIVersion, Kind: o.Kind, Name: o.Name, UID: o.UID, Controller: &controller}, nil
		}
	}
	return nil, nil
}
