// Package podresourcestest is a stub kubelet PodResources server on a real
// unix socket, for tests. No production package imports it.
package podresourcestest

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// Pod is one pod's containers and the devices each holds:
// container → resource → device IDs.
type Pod struct {
	Namespace, Name string
	Containers      map[string]map[string][]string
}

// Server answers List with Pods, which tests may change with Set.
type Server struct {
	podresourcesv1.UnimplementedPodResourcesListerServer
	Socket string

	mu    sync.Mutex
	pods  []Pod
	calls int
}

// Start serves on a socket in a fresh temporary folder until the test ends.
func Start(t testing.TB, pods ...Pod) *Server {
	t.Helper()
	s := &Server{Socket: filepath.Join(t.TempDir(), "kubelet.sock"), pods: pods}
	lis, err := net.Listen("unix", s.Socket)
	if err != nil {
		t.Fatalf("listen %s: %v", s.Socket, err)
	}
	srv := grpc.NewServer()
	podresourcesv1.RegisterPodResourcesListerServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return s
}

// Set replaces the pods List reports.
func (s *Server) Set(pods ...Pod) {
	s.mu.Lock()
	s.pods = pods
	s.mu.Unlock()
}

// Calls is how many List calls were served.
func (s *Server) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// List is the kubelet's PodResources List.
func (s *Server) List(context.Context, *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	resp := &podresourcesv1.ListPodResourcesResponse{}
	for _, p := range s.pods {
		pr := &podresourcesv1.PodResources{Name: p.Name, Namespace: p.Namespace}
		for cname, byRes := range p.Containers {
			c := &podresourcesv1.ContainerResources{Name: cname}
			for res, ids := range byRes {
				c.Devices = append(c.Devices, &podresourcesv1.ContainerDevices{ResourceName: res, DeviceIds: ids})
			}
			pr.Containers = append(pr.Containers, c)
		}
		resp.PodResources = append(resp.PodResources, pr)
	}
	return resp, nil
}
