package main

import (
	"os"
	"path/filepath"
	"strings"
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
	} {
		out, err := gpulet(t, tt.args...)
		if err == nil || !strings.Contains(out, tt.want) {
			t.Errorf("gpulet %v: %v\n%s\nwant %q", tt.args, err, out, tt.want)
		}
	}
}
