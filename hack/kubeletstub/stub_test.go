package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

func TestHostPath(t *testing.T) {
	mounts := []mount{
		{HostPath: "/run/mps/GPU-1/pipe", ContainerPath: "/mps/GPU-1/pipe"},
		{HostPath: "/run/mps/shm", ContainerPath: "/dev/shm"},
		{HostPath: "/host/mps", ContainerPath: "/mps/"},
	}
	for _, tt := range []struct{ in, want string }{
		{"/mps/GPU-1/pipe", "/run/mps/GPU-1/pipe"},     // the longest mount wins
		{"/mps/GPU-1/pipe/x", "/run/mps/GPU-1/pipe/x"}, // under a mount
		{"/mps/GPU-2/pipe", "/host/mps/GPU-2/pipe"},
		{"/mps", "/host/mps"},
		{"/mpsx", "/mpsx"}, // a prefix of the name is not under the mount
		{"GPU-1", "GPU-1"},
		{"25", "25"},
	} {
		if got := hostPath(mounts, tt.in); got != tt.want {
			t.Errorf("hostPath(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	r := response{Envs: map[string]string{"CUDA_MPS_PIPE_DIRECTORY": "/mps/GPU-1/pipe", "NVIDIA_VISIBLE_DEVICES": "GPU-1"}, Mounts: mounts}
	if got, want := envLines(r, true), "CUDA_MPS_PIPE_DIRECTORY=/run/mps/GPU-1/pipe\nNVIDIA_VISIBLE_DEVICES=GPU-1\n"; got != want {
		t.Errorf("envLines with --map-mounts = %q, want %q", got, want)
	}
	if got, want := envLines(r, false), "CUDA_MPS_PIPE_DIRECTORY=/mps/GPU-1/pipe\nNVIDIA_VISIBLE_DEVICES=GPU-1\n"; got != want {
		t.Errorf("envLines = %q, want %q", got, want)
	}
}

// TestAllocateContainers: one Allocate for a pod of two containers, each
// given its own devices and environment file.
func TestAllocateContainers(t *testing.T) {
	dir := shortDir(t)
	startGpulet(t, "dgx-h100", dir)
	envOut := filepath.Join(t.TempDir(), "alloc.env")
	var stdout, stderr syncBuffer
	code := run(context.Background(), []string{"allocate", "--dir", dir, "--count", "2", "--containers", "2", "--timeout", "20s", "--env-out", envOut}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	seen := map[string]bool{}
	for i := 1; i <= 2; i++ {
		b, err := os.ReadFile(fmt.Sprintf("%s.%d", envOut, i))
		if err != nil {
			t.Fatal(err)
		}
		v, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "NVIDIA_VISIBLE_DEVICES=")
		ids := strings.Split(v, ",")
		if !ok || len(ids) != 2 {
			t.Fatalf("container %d env %q, want 2 GPUs", i, b)
		}
		for _, id := range ids {
			if seen[id] {
				t.Errorf("GPU %s given to both containers", id)
			}
			seen[id] = true
		}
		if !strings.Contains(stdout.String(), fmt.Sprintf("# container %d: %s\n%s", i, v, b)) {
			t.Errorf("stdout lacks container %d:\n%s", i, stdout.String())
		}
	}
}

func TestScrape(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) < 3 {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "DCGM_FI_DEV_GPU_UTIL 87")
	}))
	defer srv.Close()
	var stdout, stderr syncBuffer
	if code := run(context.Background(), []string{"scrape", srv.URL}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "503") {
		t.Errorf("scrape of a 503 = exit %d, stderr %q; want 1 and the status", code, stderr.String())
	}
	out := filepath.Join(t.TempDir(), "metrics.txt")
	if code := run(context.Background(), []string{"scrape", "--wait=5s", "--out", out, srv.URL}, &stdout, &stderr); code != 0 {
		t.Fatalf("scrape --wait = exit %d: %s", code, stderr.String())
	}
	if b, _ := os.ReadFile(out); string(b) != "DCGM_FI_DEV_GPU_UTIL 87\n" {
		t.Errorf("scraped %q", b)
	}
}
