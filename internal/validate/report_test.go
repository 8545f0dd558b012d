package validate

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/cudadriver"
)

func intp(i int) *int { return &i }

func TestWriteTable(t *testing.T) {
	pass := DeviceResult{
		DeviceInfo: cudadriver.DeviceInfo{Ordinal: 0, Name: "NVIDIA H200", UUID: uuidA, ComputeCapability: "9.0", MemoryBytes: 143771 << 20},
		KernelOK:   true, CopyOK: true, Pinned: true, H2DGBps: 52.44, D2HGBps: 49.96, D2DGBps: 3871.25, Pass: true,
	}
	fail := DeviceResult{
		DeviceInfo: cudadriver.DeviceInfo{Ordinal: 1, Name: "NVIDIA H200", UUID: uuidB, ComputeCapability: "9.0", MemoryBytes: 143771 << 20},
		CopyOK:     true, H2DGBps: 9.5, D2HGBps: 8, D2DGBps: 3000,
		Error: "kernel: wrong result in 1 of 1048576 elements",
	}
	tests := []struct {
		name   string
		report Report
		want   []string // lines or fragments, in order
		absent []string
	}{
		{
			name: "one GPU passes",
			report: Report{Library: "/usr/local/nvidia/lib64/libcuda.so.1", DriverVersion: "13.0",
				Env:         EnvPlan{Note: "NVIDIA_VISIBLE_DEVICES lists " + uuidA, Expected: []string{uuidA}},
				DeviceCount: intp(1), Devices: []DeviceResult{pass}, Pass: true},
			want: []string{
				"CUDA driver:  13.0 (/usr/local/nvidia/lib64/libcuda.so.1)",
				"Environment:  NVIDIA_VISIBLE_DEVICES lists " + uuidA,
				"CUDA devices: 1 visible under this environment (expected exactly 1)",
				"INDEX  UUID                                      NAME         CC   MEMORY      KERNEL  COPY  H2D GB/s  D2H GB/s  D2D GB/s  RESULT",
				"0      " + uuidA + "  NVIDIA H200  9.0  143771 MiB  ok      ok    52.4      50.0      3871.2    PASS",
				"PASS: 1 of 1 GPUs passed",
			},
			absent: []string{"FAIL", "*"},
		},
		{
			name: "one of two fails, pageable memory marked",
			report: Report{Library: "libcuda.so.1", DriverVersion: "13.0", Env: EnvPlan{Note: "n"},
				DeviceCount: intp(2), Devices: []DeviceResult{pass, fail}},
			want: []string{
				"CUDA devices: 2 visible under this environment\n",
				"FAIL    ok    9.5*      8.0*      3000.0    FAIL",
				"* host memory could not be pinned",
				"GPU 1: kernel: wrong result in 1 of 1048576 elements",
				"FAIL: 1 of 2 GPUs passed",
			},
		},
		{
			name: "a kernel that needed the device's own PTX target says so",
			report: Report{Env: EnvPlan{Note: "n"}, DeviceCount: intp(1), Pass: true,
				Devices: []DeviceResult{func() DeviceResult { d := pass; d.PTXTarget = "sm_90"; return d }()}},
			want: []string{"143771 MiB  ok (sm_90 PTX)  ok", "PASS: 1 of 1 GPUs passed"},
		},
		{
			name: "visibility mismatch fails",
			report: Report{Env: EnvPlan{Note: "n", Expected: []string{uuidA}}, DeviceCount: intp(2),
				Devices: []DeviceResult{pass, pass}, Visibility: "the environment names 1 GPU(s)"},
			want: []string{"(expected exactly 1)", "Visibility: the environment names 1 GPU(s)", "FAIL: 2 of 2 GPUs passed"},
		},
		{
			name:   "no library",
			report: Report{Env: EnvPlan{Note: "NVIDIA_VISIBLE_DEVICES is not set"}, Error: "the CUDA driver library libcuda.so.1 could not be loaded"},
			want: []string{"CUDA driver:  - (not loaded)", "CUDA devices: unknown (CUDA did not start) visible",
				"FAIL: the CUDA driver library libcuda.so.1 could not be loaded"},
			absent: []string{"INDEX"},
		},
		{
			name:   "cuInit without devices",
			report: Report{Library: "libcuda.so.1", Env: EnvPlan{Note: "n", Expected: []string{}}, DeviceCount: intp(0), Error: "cuInit: CUDA_ERROR_NO_DEVICE"},
			want:   []string{"CUDA devices: 0 visible under this environment (expected exactly 0)", "FAIL: cuInit: CUDA_ERROR_NO_DEVICE"},
			absent: []string{"INDEX"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteTable(&b, &tt.report); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			rest := out
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("output lacks %q (in order):\n%s", w, out)
				}
				rest = rest[i+len(w):]
			}
			for _, a := range tt.absent {
				if strings.Contains(out, a) {
					t.Errorf("output has %q:\n%s", a, out)
				}
			}
		})
	}
}

func TestWriteJSON(t *testing.T) {
	tests := []struct {
		name   string
		report Report
		check  func(t *testing.T, m map[string]any)
	}{
		{
			name:   "unknown count is null",
			report: Report{Error: "no libcuda", Devices: []DeviceResult{}},
			check: func(t *testing.T, m map[string]any) {
				if v, ok := m["cudaDeviceCount"]; !ok || v != nil {
					t.Errorf("cudaDeviceCount = %v (present %v), want null", v, ok)
				}
				if m["pass"] != false || m["error"] != "no libcuda" {
					t.Errorf("pass %v error %v", m["pass"], m["error"])
				}
			},
		},
		{
			name: "device fields",
			report: Report{DeviceCount: intp(1), Pass: true, Devices: []DeviceResult{{
				DeviceInfo: cudadriver.DeviceInfo{Ordinal: 0, UUID: uuidA, Name: "NVIDIA H200", ComputeCapability: "9.0"},
				KernelOK:   true, CopyOK: true, H2DGBps: 52.5, D2HGBps: 50, D2DGBps: 3900, Pass: true}}},
			check: func(t *testing.T, m map[string]any) {
				if m["cudaDeviceCount"] != 1.0 {
					t.Errorf("cudaDeviceCount = %v", m["cudaDeviceCount"])
				}
				d := m["devices"].([]any)[0].(map[string]any)
				want := map[string]any{"index": 0.0, "uuid": uuidA, "name": "NVIDIA H200", "computeCapability": "9.0",
					"kernelOK": true, "copyOK": true, "h2dGBps": 52.5, "d2hGBps": 50.0, "d2dGBps": 3900.0, "pass": true}
				for k, v := range want {
					if d[k] != v {
						t.Errorf("devices[0].%s = %v, want %v", k, d[k], v)
					}
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteJSON(&b, &tt.report); err != nil {
				t.Fatal(err)
			}
			var m map[string]any
			if err := json.Unmarshal(b.Bytes(), &m); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, b.String())
			}
			tt.check(t, m)
		})
	}
}
