// Package plugintest is the kubelet's side of the device-plugin protocol
// for tests and tools: a registration server on a real unix socket. No
// production package imports it; the client side is plugin.Dial.
package plugintest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Kubelet serves the Registration API on Dir/kubelet.sock.
type Kubelet struct {
	pluginapi.UnimplementedRegistrationServer
	Dir string
	// Registrations receives every Register call that was accepted.
	Registrations chan *pluginapi.RegisterRequest
	// Refuse, if set, may turn a registration down with an error, as a real
	// kubelet does (e.g. "device plugin already connected"). Set it before
	// plugins register.
	Refuse func(*pluginapi.RegisterRequest) error
	srv    *grpc.Server
}

// StartKubelet listens on dir/kubelet.sock, replacing a stale socket.
func StartKubelet(dir string) (*Kubelet, error) {
	k := &Kubelet{Dir: dir, Registrations: make(chan *pluginapi.RegisterRequest, 64)}
	sock := k.Socket()
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", sock, err)
	}
	k.srv = grpc.NewServer()
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go func() { _ = k.srv.Serve(lis) }() // returns when Stop stops it
	return k, nil
}

// StartKubeletT starts a Kubelet in a folder of its own, short (unix socket
// paths are limited), both gone when t ends.
func StartKubeletT(t testing.TB) *Kubelet {
	t.Helper()
	dir, err := os.MkdirTemp("", "gpulet-dp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	k, err := StartKubelet(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	return k
}

// Socket is the path of kubelet.sock.
func (k *Kubelet) Socket() string { return filepath.Join(k.Dir, "kubelet.sock") }

// Stop stops serving and removes kubelet.sock, as a stopping kubelet does.
func (k *Kubelet) Stop() {
	k.srv.Stop()
	os.Remove(k.Socket())
}

// Register records a plugin's registration.
func (k *Kubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	if k.Refuse != nil {
		if err := k.Refuse(r); err != nil {
			return nil, err
		}
	}
	select {
	case k.Registrations <- r:
	default: // nobody is reading; the registration still succeeds
	}
	return &pluginapi.Empty{}, nil
}

// WaitRegistration returns the next registration, or an error after timeout.
func (k *Kubelet) WaitRegistration(timeout time.Duration) (*pluginapi.RegisterRequest, error) {
	select {
	case r := <-k.Registrations:
		return r, nil
	case <-time.After(timeout):
		return nil, fmt.Errorf("no device plugin registered with %s within %s", k.Socket(), timeout)
	}
}
