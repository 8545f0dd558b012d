package main

import (
	"github.com/gpulet/gpulet/internal/cudadriver/cudadrivertest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// gpuCheck runs hack/gpu-check.sh with env (and a PATH of the system's
// tools plus extraPath) and returns its exit code and combined output.
func gpuCheck(t *testing.T, env []string, extraPath string) (int, string, string) {
	t.Helper()
	out := t.TempDir()
	cmd := exec.Command("bash", "../gpu-check.sh")
	path := "/usr/local/bin:/usr/bin:/bin"
	if extraPath != "" {
		path = extraPath + ":" + path
	}
	cmd.Env = append([]string{"PATH=" + path, "OUT=" + out, "HOME=" + t.TempDir()}, env...)
	b, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	report, _ := os.ReadFile(filepath.Join(out, "gpu-check.txt"))
	return code, string(b), string(report)
}

func writeExe(t *testing.T, path, script string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/bash\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestGPUCheckFailsFast: without a GPU machine the script stops at once
// and says what is missing (exit 2), in its report too.
func TestGPUCheckFailsFast(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	bins := t.TempDir()
	for _, b := range []string{"gpulet", "kubeletstub"} {
		writeExe(t, filepath.Join(bins, b), "exit 0\n")
	}
	failingSMI := t.TempDir()
	writeExe(t, filepath.Join(failingSMI, "nvidia-smi"), "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'; exit 9\n")
	noGPU := t.TempDir()
	writeExe(t, filepath.Join(noGPU, "nvidia-smi"), "echo 'No devices were found'; exit 0\n")
	tests := []struct {
		name  string
		env   []string
		path  string
		want  string
		wantN int // exit code
	}{
		{"no binaries", []string{"GPU_CHECK_BIN=" + t.TempDir()}, "", "build them with 'make gpu-check-build' (CGO_ENABLED=1)", 2},
		{"no nvidia-smi", []string{"GPU_CHECK_BIN=" + bins}, "", "nvidia-smi not found", 2},
		{"driver not loaded", []string{"GPU_CHECK_BIN=" + bins}, failingSMI, "nvidia-smi -L failed, so the NVIDIA driver is not usable here: NVIDIA-SMI has failed", 2},
		{"no GPU", []string{"GPU_CHECK_BIN=" + bins}, noGPU, "nvidia-smi -L lists no GPU: No devices were found", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, report := gpuCheck(t, tt.env, tt.path)
			if code != tt.wantN || !strings.Contains(out, tt.want) || !strings.Contains(report, tt.want) {
				t.Errorf("exit %d, want %d with %q\noutput:\n%s\nreport:\n%s", code, tt.wantN, tt.want, out, report)
			}
		})
	}
}

// TestGPUCheckRehearsal runs the whole script on gpulet's simulated h200
// with a stand-in nvidia-smi (the real node's fixtures) and a stand-in
// libcuda: every step and the report, everything but real GPUs.
func TestGPUCheckRehearsal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds gpulet and runs the GPU check's rehearsal")
	}
	if _, err := exec.LookPath("cc"); err != nil {
		t.Skip("no C compiler for the stand-in libcuda.so.1")
	}
	bins := t.TempDir()
	for _, b := range []struct{ out, pkg string }{{"gpulet", "../../cmd/gpulet"}, {"kubeletstub", "."}} {
		build := exec.Command("go", "build", "-o", filepath.Join(bins, b.out), b.pkg)
		build.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.pkg, err, out)
		}
	}
	lib := t.TempDir()
	if _, err := cudadrivertest.Build(lib,
		`-DFAKECUDA_DEFAULT_GPUS="GPU-ac44f0a6-789f-45de-f092-9a23e7c04123"`,
		`-DFAKECUDA_NAME_FMT="NVIDIA H200\0%d"`, `-DFAKECUDA_BUS_FMT="0000:00:06.0\0%d"`); err != nil {
		t.Fatal(err)
	}
	fixtures, err := filepath.Abs("smi/testdata/nvidia-h200")
	if err != nil {
		t.Fatal(err)
	}
	smi := filepath.Join(t.TempDir(), "nvidia-smi")
	writeExe(t, smi, `F=`+fixtures+`
case "$*" in
-L) echo "GPU 0: NVIDIA H200 (UUID: GPU-ac44f0a6-789f-45de-f092-9a23e7c04123)" ;;
"-q -x") cat "$F/nvidia-smi-q.xml" ;;
-q) echo "stand-in: nvidia-smi -q" ;;
--query-gpu=*) cat "$F/query-gpu.csv" ;;
"topo -m") echo "GPU0 X" ;;
"") echo "stand-in: nvidia-smi" ;;
*) echo "stand-in nvidia-smi: $*" >&2; exit 1 ;;
esac
`)
	// A stand-in gpu-feature-discovery: gpulet's own labels of the same
	// simulated node, so the comparison runs and agrees.
	writeExe(t, filepath.Join(bins, "gpu-feature-discovery"), `out=
for a in "$@"; do case $a in --output-file=*) out=${a#--output-file=} ;; esac; done
exec "$(dirname "$0")/gpulet" labels --backend=sim --sim-profile=h200 --sim-root="$(mktemp -d)" --no-timestamp --output-file="$out"
`)
	code, output, report := gpuCheck(t, []string{"GPU_CHECK_BIN=" + bins, "GPU_CHECK_BACKEND=sim", "GPU_CHECK_NVIDIA_SMI=" + smi, "LD_LIBRARY_PATH=" + lib}, "")
	for _, want := range []string{
		"REHEARSAL on the simulated h200 node",
		"list vs nvidia-smi vs CUDA             PASS   10 fields agree",
		"Allocate(1 GPU)                        PASS   NVIDIA_VISIBLE_DEVICES=GPU-ac44f0a6-789f-45de-f092-9a23e7c04123",
		"validate with Allocate's env           PASS   CUDA sees exactly 1 GPU (GPU-ac44f0a6-789f-45de-f092-9a23e7c04123) of 1",
		"validate with an unknown UUID          PASS   CUDA sees 0 GPUs",
		"SIGTERM: gpulet run exits              PASS   exit 0",
		"SIGTERM: plugin socket removed         PASS",
		"kubelet side: stream ended on stop     PASS",
		"metrics: dcgm series while loaded      PASS",
		"MPS: Allocate 2 containers x 1 replica PASS   # container 1: GPU-ac44f0a6-789f-45de-f092-9a23e7c04123::",
		"MPS: 2 validates at once               PASS   both pass, CUDA sees 1 GPU (GPU-ac44f0a6-789f-45de-f092-9a23e7c04123) in each",
		"MPS: clients ran through the daemon    SKIP",
		"MPS: SIGTERM quits the daemon          PASS",
		"labels                                 PASS",
		"labels vs gpu-feature-discovery        PASS   identical",
		"CDI spec: host paths exist             SKIP   rehearsal: generated",
		"DRA: ResourceSlice                     PASS   1 devices (NVIDIA H200)",
		"ALL 19 CHECKS PASSED (2 SKIPPED)",
		"mps-allocate.env.2: CUDA_MPS_PIPE_DIRECTORY=/tmp/gpuchk.",
		"CUDA devices: 1 visible under this environment (expected exactly 1)",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if code != 0 || t.Failed() {
		t.Errorf("exit %d\noutput:\n%s\nreport:\n%s", code, output, report)
	}
}
