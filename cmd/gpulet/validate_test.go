package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"github.com/gpulet/gpulet/internal/cudadriver/cudadrivertest"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// runValidate runs the real binary's validate with exactly env.
func runValidate(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"validate"}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// fakeCUDADir builds the stand-in libcuda.so.1 of internal/validate's
// tests into a folder for LD_LIBRARY_PATH; "" without a C compiler.
func fakeCUDADir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := cudadrivertest.Build(dir); errors.Is(err, cudadrivertest.ErrNoCompiler) {
		return ""
	} else if err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestValidateCommand(t *testing.T) {
	const (
		uuidA = "GPU-11111111-2222-3333-4444-555555555555"
		uuidB = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
	)
	fake := fakeCUDADir(t)
	tests := []struct {
		name     string
		env      []string
		args     []string
		fake     bool // with the stand-in libcuda on LD_LIBRARY_PATH
		code     int
		stdout   []string
		stderr   string
		jsonWant map[string]any
	}{
		{name: "bad output", args: []string{"-o", "yaml"}, code: 1, stderr: `gpulet: output "yaml" is not one of table, json`},
		{name: "bad size", args: []string{"--size-mib", "0"}, code: 1, stderr: "must be positive"},
		{
			name: "the plugin's env restricts CUDA to the allocated GPU",
			env:  []string{"NVIDIA_VISIBLE_DEVICES=" + uuidB}, args: []string{"--size-mib", "4"}, fake: true,
			stdout: []string{"CUDA devices: 1 visible under this environment (expected exactly 1)", uuidB + "  Fake GPU 1", "PASS: 1 of 1 GPUs passed"},
		},
		{
			name: "json, every GPU",
			args: []string{"-o", "json", "--size-mib", "4"}, fake: true,
			jsonWant: map[string]any{"cudaDeviceCount": 2.0, "pass": true},
		},
		{
			name: "a failing kernel exits non-zero",
			env:  []string{"NVIDIA_VISIBLE_DEVICES=" + uuidA, "FAKECUDA_BAD_KERNEL=1"}, args: []string{"--size-mib", "4"}, fake: true,
			code: 1, stdout: []string{"FAIL    ok", "GPU 0: kernel: wrong result", "FAIL: 0 of 1 GPUs passed"}, stderr: "gpulet: validation failed (details above)",
		},
		{
			name: "an unknown UUID: CUDA sees no device",
			env:  []string{"NVIDIA_VISIBLE_DEVICES=GPU-00000000-0000-0000-0000-000000000000"}, args: []string{"-o", "json"}, fake: true,
			code: 1, stderr: "gpulet: cuInit: CUDA_ERROR_NO_DEVICE",
			jsonWant: map[string]any{"cudaDeviceCount": 0.0, "pass": false},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env
			if tt.fake {
				if fake == "" {
					t.Skip("no C compiler (cc) to build the stand-in libcuda.so.1")
				}
				env = append(env, "LD_LIBRARY_PATH="+fake)
			}
			stdout, stderr, code := runValidate(t, env, tt.args...)
			if strings.Contains(stdout+stderr, "built without cgo") {
				t.Skip("this gpulet was built without cgo and cannot load libcuda")
			}
			if code != tt.code {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout, stderr)
			}
			for _, s := range tt.stdout {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			if !strings.Contains(stderr, tt.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tt.stderr, stderr)
			}
			if tt.jsonWant != nil {
				var m map[string]any
				if err := json.Unmarshal([]byte(stdout), &m); err != nil {
					t.Fatalf("stdout is not JSON: %v\n%s", err, stdout)
				}
				for k, v := range tt.jsonWant {
					if m[k] != v {
						t.Errorf("%s = %v, want %v", k, m[k], v)
					}
				}
			}
		})
	}
}

// TestValidateCommandWithoutDriver is the real situation on a machine
// without an NVIDIA driver: a clear failure, in JSON too.
func TestValidateCommandWithoutDriver(t *testing.T) {
	if _, err := os.Stat("/usr/local/nvidia/lib64/libcuda.so.1"); err == nil {
		t.Skip("this machine has a CUDA driver")
	}
	stdout, stderr, code := runValidate(t, []string{"NVIDIA_VISIBLE_DEVICES=GPU-ac44f0a6-789f-45de-f092-9a23e7c04123"}, "-o", "json")
	if code != 1 {
		t.Fatalf("exit code %d, want 1\n%s%s", code, stdout, stderr)
	}
	var r struct {
		Env struct {
			Set   string   `json:"setCudaVisibleDevices"`
			Sets  bool     `json:"setsCudaVisibleDevices"`
			Wants []string `json:"expected"`
		} `json:"env"`
		Count *int   `json:"cudaDeviceCount"`
		Error string `json:"error"`
		Pass  bool   `json:"pass"`
	}
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, stdout)
	}
	if r.Pass || r.Count != nil || !r.Env.Sets || r.Env.Set != "GPU-ac44f0a6-789f-45de-f092-9a23e7c04123" || len(r.Env.Wants) != 1 {
		t.Errorf("report %+v: want a failure, unknown count, and CUDA_VISIBLE_DEVICES set to the plugin's UUID", r)
	}
	if !strings.Contains(r.Error, "libcuda.so.1") || !strings.Contains(stderr, "gpulet: the CUDA driver library libcuda.so.1 could not be loaded") {
		t.Errorf("error %q / stderr %q do not name the missing libcuda.so.1", r.Error, stderr)
	}
}
