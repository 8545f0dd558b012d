package scenarios

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ClaimOf is the ResourceClaim the pod's claim reference name resolves to
// (a claim made from a template, or a ResourceClaim named in the pod).
func (s *S) ClaimOf(p *corev1.Pod, ref string) (*resourceapi.ResourceClaim, error) {
	name := ""
	for _, rc := range p.Spec.ResourceClaims {
		if rc.Name == ref && rc.ResourceClaimName != nil {
			name = *rc.ResourceClaimName
		}
	}
	for _, st := range p.Status.ResourceClaimStatuses {
		if st.Name == ref && st.ResourceClaimName != nil {
			name = *st.ResourceClaimName
		}
	}
	if name == "" {
		return nil, fmt.Errorf("pod %s has no claim for %q yet", p.Name, ref)
	}
	return s.Client.ResourceV1().ResourceClaims(p.Namespace).Get(context.Background(), name, metav1.GetOptions{})
}

// AllocatedDevices are the claim's devices of gpulet's driver for request
// ("" for every request), sorted.
func AllocatedDevices(c *resourceapi.ResourceClaim, request string) []string {
	var out []string
	if c.Status.Allocation == nil {
		return nil
	}
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver == DRADriver && (request == "" || r.Request == request) {
			out = append(out, r.Device)
		}
	}
	slices.Sort(out)
	return out
}

// DeviceMinor is the /dev/nvidiaN minor of a published device: gpu-<minor>
// or a MIG instance's parent, gpu-<minor>-mig-....
func DeviceMinor(name string) (int, error) {
	rest, ok := strings.CutPrefix(name, "gpu-")
	if !ok {
		return 0, fmt.Errorf("device %q is not named gpu-<minor>...", name)
	}
	rest, _, _ = strings.Cut(rest, "-")
	return strconv.Atoi(rest)
}

// NamespaceGone is a condition: the namespace no longer exists.
func (s *S) NamespaceGone(ns string) func() error {
	return func() error {
		_, err := s.Client.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("namespace %s still exists", ns)
	}
}

// DeleteNamespace deletes ns and waits (bounded) until it is gone.
func (s *S) DeleteNamespace(ns string) {
	err := s.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		s.Errorf("delete namespace %s: %v", ns, err)
		return
	}
	if err := s.Within(120*time.Second, s.NamespaceGone(ns)); err != nil {
		s.Errorf("namespace %s: %v", ns, err)
	}
}
