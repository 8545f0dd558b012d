package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

const h200Labels = `accelerator=nvidia
nvidia.com/cuda.driver-version.full=580.159.04
nvidia.com/cuda.driver-version.major=580
nvidia.com/cuda.driver-version.minor=159
nvidia.com/cuda.driver-version.revision=04
nvidia.com/cuda.driver.major=580
nvidia.com/cuda.driver.minor=159
nvidia.com/cuda.driver.rev=04
nvidia.com/cuda.runtime-version.full=13.0
nvidia.com/cuda.runtime-version.major=13
nvidia.com/cuda.runtime-version.minor=0
nvidia.com/cuda.runtime.major=13
nvidia.com/cuda.runtime.minor=0
nvidia.com/gpu.compute.major=9
nvidia.com/gpu.compute.minor=0
nvidia.com/gpu.count=1
nvidia.com/gpu.family=hopper
nvidia.com/gpu.machine=Standard_NC40ads_H100_v5
nvidia.com/gpu.memory=143771
nvidia.com/gpu.mode=compute
nvidia.com/gpu.product=NVIDIA-H200
nvidia.com/gpu.replicas=1
nvidia.com/gpu.sharing-strategy=none
nvidia.com/mig.capable=true
nvidia.com/mps.capable=false
nvidia.com/vgpu.present=false
`

func TestLabelsCommand(t *testing.T) {
	dir := t.TempDir()
	machine := filepath.Join(dir, "product_name")
	if err := os.WriteFile(machine, []byte("Standard_NC40ads_H100_v5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	common := []string{"labels", "--backend=sim", "--sim-profile=h200", "--no-timestamp", "--machine-type-file=" + machine, "--extra-labels=accelerator=nvidia"}

	out, err := gpulet(t, common...)
	if err != nil || out != h200Labels {
		t.Fatalf("gpulet labels: %v\n%s\nwant\n%s", err, out, h200Labels)
	}

	file := filepath.Join(dir, "features.d", "gfd")
	if out, err := gpulet(t, append(common, "--output-file="+file)...); err != nil || out != "" {
		t.Fatalf("gpulet labels --output-file: %v\n%s", err, out)
	}
	if data, err := os.ReadFile(file); err != nil || string(data) != h200Labels {
		t.Errorf("labels file: %v\n%s", err, data)
	}

	out, err = gpulet(t, "labels", "--backend=sim", "--sim-profile=dgx-h100", "--replicas=4", "--machine-type-file=")
	if err != nil || !strings.Contains(out, "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3-SHARED\n") ||
		!strings.Contains(out, "nvidia.com/gpu.replicas=4\n") || !strings.Contains(out, "nvidia.com/gfd.timestamp=") ||
		!strings.Contains(out, "nvidia.com/gpu.machine=unknown\n") {
		t.Errorf("dgx-h100 time-sliced: %v\n%s", err, out)
	}
}

func TestLabelsCommandErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"labels", "--remove", "--node-name="}, "--remove needs the node"},
		{[]string{"labels", "--backend=sim", "--extra-labels=bad key=x"}, `label key "bad key" is invalid`},
		{[]string{"labels", "--all-nodes"}, "--all-nodes goes with --remove"},
		{[]string{"labels", "--remove", "--all-nodes", "--kubeconfig=/nonexistent/kubeconfig"}, "nonexistent"},
	} {
		out, err := gpulet(t, tt.args...)
		if err == nil || !strings.Contains(out, tt.want) {
			t.Errorf("gpulet %v: %v\n%s\nwant %q", tt.args, err, out, tt.want)
		}
	}
}

// TestLabelsRemoveNodeFeature: with --use-node-feature-api, --remove
// deletes the node's NodeFeature (and only it) through the API server;
// a second run finds none.
func TestLabelsRemoveNodeFeature(t *testing.T) {
	var mu sync.Mutex
	var calls []string
	exists := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, r.Method+" "+r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodDelete && r.URL.Path == "/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/gpu-resources/nodefeatures/nvidia-features-for-gpu-node-1" && exists {
			exists = false
			fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Success"}`)
			return
		}
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`)
	}))
	defer srv.Close()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "`+srv.URL+`"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"labels", "--remove", "--use-node-feature-api", "--node-name=gpu-node-1", "--namespace=gpu-resources", "--kubeconfig=" + kubeconfig}
	out, err := gpulet(t, args...)
	if err != nil || out != "deleted NodeFeature gpu-resources/nvidia-features-for-gpu-node-1\n" {
		t.Errorf("first remove: %v\n%s", err, out)
	}
	out, err = gpulet(t, args...)
	if err != nil || out != "no NodeFeature gpu-resources/nvidia-features-for-gpu-node-1\n" {
		t.Errorf("second remove: %v\n%s", err, out)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, c := range calls {
		if !strings.HasPrefix(c, "DELETE /apis/nfd.k8s-sigs.io/v1alpha1/namespaces/gpu-resources/nodefeatures/nvidia-features-for-gpu-node-1") {
			t.Errorf("unexpected API call %s (the Node must not be touched)", c)
		}
	}
}
