package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/mps"
	"github.com/gpulet/gpulet/internal/waittest"
)

// A gpulet that refuses its settings (MPS without the host's setup) stays
// up: /healthz answers, so the kubelet does not restart it into a
// crash-loop, and /readyz says why it serves nothing; it stops when asked.
func TestWaitRefusedServesTheReason(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	why := &mps.HostError{Problems: []string{"the control binary nvidia-cuda-mps-control is not here"}}
	done := make(chan error, 1)
	go func() {
		done <- waitRefused(ctx, &config.Config{MetricsAddress: addr}, slog.New(slog.NewTextHandler(io.Discard, nil)), why)
	}()
	get := func(path string) (int, string, error) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	waittest.UntilSays(t, 10*time.Second, "/healthz answers 200", func() (bool, string) {
		code, _, err := get("/healthz")
		return err == nil && code == http.StatusOK, fmt.Sprintf("%d %v", code, err)
	})
	code, body, err := get("/readyz")
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "nvidia-cuda-mps-control is not here") {
		t.Errorf("/readyz: %d %q %v, want 503 with the reason", code, body, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("waitRefused returned %v when stopped", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waitRefused did not stop with its context")
	}
}
