package validate

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/cudadriver"
)

const (
	uuidA = "GPU-11111111-2222-3333-4444-555555555555"
	uuidB = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
)

func smallOpts(f *fakeDriver) Options {
	return Options{CopyBytes: 1 << 20, Iterations: 4, KernelElems: 3000, Now: f.clock.Now}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		setup func(f *fakeDriver)
		plan  EnvPlan
		// want
		pass       bool
		count      int // -1: unknown (nil)
		devices    int
		kernelOK   []bool
		copyOK     []bool
		errHas     []string // in Report.Err()
		visibility string   // substring of Report.Visibility; "" means none
		ptxTarget  string   // of every device, if set
	}{
		{
			name: "two healthy GPUs pass", pass: true, count: 2, devices: 2,
			kernelOK: []bool{true, true}, copyOK: []bool{true, true}, ptxTarget: "sm_50",
		},
		{
			name:  "a wrong kernel result fails that GPU only",
			setup: func(f *fakeDriver) { f.kernel = "wrong" },
			count: 2, devices: 2, kernelOK: []bool{false, false}, copyOK: []bool{true, true},
			errHas: []string{"2 of 2 GPUs failed", "wrong result in 1 of 3000 elements; first c[5] = 8.5, want 5 + 2.5 = 7.5"},
		},
		{
			name:  "a kernel that writes nothing fails",
			setup: func(f *fakeDriver) { f.kernel = "noop" },
			count: 2, devices: 2, kernelOK: []bool{false, false}, copyOK: []bool{true, true},
			errHas: []string{"wrong result in 3000 of 3000 elements"},
		},
		{
			name: "PTX that does not load fails the kernel, copies still measured",
			setup: func(f *fakeDriver) {
				f.loadErr = &cudadriver.CUDAError{Call: "cuModuleLoadDataEx", Code: cudadriver.CodeInvalidPTX}
			},
			count: 2, devices: 2, kernelOK: []bool{false, false}, copyOK: []bool{true, true},
			errHas: []string{"kernel: as sm_50: cuModuleLoadDataEx: CUDA_ERROR_INVALID_PTX; as sm_90: cuModuleLoadDataEx: CUDA_ERROR_INVALID_PTX"},
		},
		{
			name:  "a driver that refuses sm_50 PTX gets the device's own target",
			setup: func(f *fakeDriver) { f.refuseTarget = "sm_50" },
			pass:  true, count: 2, devices: 2, kernelOK: []bool{true, true}, copyOK: []bool{true, true},
			ptxTarget: "sm_90",
		},
		{
			name:  "data corrupted on the device fails the copy check",
			setup: func(f *fakeDriver) { f.corruptDtoD = true },
			count: 2, devices: 2, kernelOK: []bool{true, true}, copyOK: []bool{false, false},
			errHas: []string{"copies: data changed on the way host→device→device→host: first different byte at offset 524288 of 1048576"},
		},
		{
			name:  "environment naming one GPU while CUDA sees two fails visibility",
			plan:  EnvPlan{Expected: []string{uuidA}},
			count: 2, devices: 2, kernelOK: []bool{true, true}, copyOK: []bool{true, true},
			visibility: "the environment names 1 GPU(s) (" + uuidA + ") but CUDA sees 2; not named: 1 (" + uuidB + ")",
			errHas:     []string{"0 of 2 GPUs failed"},
		},
		{
			name:  "environment naming a GPU CUDA does not see fails visibility",
			setup: func(f *fakeDriver) { f.gpus = f.gpus[:1] },
			plan:  EnvPlan{Expected: []string{uuidB}},
			count: 1, devices: 1, kernelOK: []bool{true}, copyOK: []bool{true},
			visibility: "not visible: " + uuidB,
		},
		{
			name:  "environment naming exactly the visible GPU passes",
			setup: func(f *fakeDriver) { f.gpus = f.gpus[1:] },
			plan:  EnvPlan{Expected: []string{"GPU-" + strings.ToUpper(uuidB[4:])}},
			pass:  true, count: 1, devices: 1, kernelOK: []bool{true}, copyOK: []bool{true},
		},
		{
			name:  "no device after cuInit",
			setup: func(f *fakeDriver) { f.gpus = nil },
			count: 0, devices: 0,
			errHas: []string{"CUDA initialised but sees no device under this environment (NVIDIA_VISIBLE_DEVICES=unset, CUDA_VISIBLE_DEVICES=unset)"},
		},
		{
			name:  "cuInit finds no device",
			setup: func(f *fakeDriver) { f.initErr = &cudadriver.CUDAError{Call: "cuInit", Code: cudadriver.CodeNoDevice} },
			plan: EnvPlan{NvidiaSet: true, NvidiaVisible: uuidA, Set: true, SetCUDAVisible: uuidA,
				Expected: []string{uuidA}},
			count: 0, devices: 0,
			errHas: []string{"cuInit: CUDA_ERROR_NO_DEVICE: the CUDA driver loaded but this process sees no GPU",
				"NVIDIA_VISIBLE_DEVICES=" + uuidA + ", CUDA_VISIBLE_DEVICES=" + uuidA + " (set by gpulet validate)",
				"requests nvidia.com/gpu", "nvidia-smi -L"},
		},
		{
			name: "cuInit with a mismatched driver",
			setup: func(f *fakeDriver) {
				f.initErr = &cudadriver.CUDAError{Call: "cuInit", Code: cudadriver.CodeCompatNotSupport}
			},
			count:  -1,
			errHas: []string{"CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", "does not match the kernel driver"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(gpu(0, uuidA), gpu(1, uuidB))
			if tt.setup != nil {
				tt.setup(f)
			}
			r := Validate(f.open, tt.plan, smallOpts(f))
			if r.Pass != tt.pass {
				t.Errorf("Pass = %v, want %v (err %v)", r.Pass, tt.pass, r.Err())
			}
			if (r.Err() == nil) != tt.pass {
				t.Errorf("Err() = %v while Pass = %v", r.Err(), r.Pass)
			}
			switch {
			case tt.count < 0 && r.DeviceCount != nil:
				t.Errorf("DeviceCount = %d, want unknown", *r.DeviceCount)
			case tt.count >= 0 && (r.DeviceCount == nil || *r.DeviceCount != tt.count):
				t.Errorf("DeviceCount = %v, want %d", r.DeviceCount, tt.count)
			}
			if len(r.Devices) != tt.devices {
				t.Fatalf("%d device results, want %d", len(r.Devices), tt.devices)
			}
			for i, d := range r.Devices {
				if d.KernelOK != tt.kernelOK[i] || d.CopyOK != tt.copyOK[i] {
					t.Errorf("GPU %d: kernel %v copy %v, want %v %v (%s)", i, d.KernelOK, d.CopyOK, tt.kernelOK[i], tt.copyOK[i], d.Error)
				}
				if d.Pass != (d.KernelOK && d.CopyOK) {
					t.Errorf("GPU %d: Pass %v with kernel %v copy %v", i, d.Pass, d.KernelOK, d.CopyOK)
				}
				if d.Ordinal != i {
					t.Errorf("GPU %d reported as index %d", i, d.Ordinal)
				}
				if tt.ptxTarget != "" && d.PTXTarget != tt.ptxTarget {
					t.Errorf("GPU %d: PTX target %q, want %q", i, d.PTXTarget, tt.ptxTarget)
				}
			}
			for _, s := range tt.errHas {
				if err := r.Err(); err == nil || !strings.Contains(err.Error(), s) {
					t.Errorf("Err() = %v\nwant it to contain %q", err, s)
				}
			}
			if tt.visibility == "" && r.Visibility != "" || !strings.Contains(r.Visibility, tt.visibility) {
				t.Errorf("Visibility = %q, want %q", r.Visibility, tt.visibility)
			}
			if l := f.leaks(); l != "" {
				t.Errorf("left behind: %s", l)
			}
		})
	}
}

func TestValidateBandwidth(t *testing.T) {
	tests := []struct {
		name          string
		h2d, d2h, d2d float64
	}{
		{"PCIe gen5 and HBM3e", 52.5, 49.75, 3900},
		{"PCIe gen3", 11, 12.5, 700},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := gpu(0, uuidA)
			g.h2d, g.d2h, g.d2d = tt.h2d, tt.d2h, tt.d2d
			f := newFake(g)
			r := Validate(f.open, EnvPlan{}, smallOpts(f))
			if !r.Pass {
				t.Fatalf("failed: %v", r.Err())
			}
			d := r.Devices[0]
			for _, c := range []struct {
				what      string
				got, want float64
			}{{"H2D", d.H2DGBps, tt.h2d}, {"D2H", d.D2HGBps, tt.d2h}, {"D2D", d.D2DGBps, tt.d2d}} {
				if math.Abs(c.got-c.want) > c.want*1e-3 { // the clock reads whole nanoseconds
					t.Errorf("%s = %.4f GB/s, want %.4f", c.what, c.got, c.want)
				}
			}
			if !d.Pinned {
				t.Errorf("Pinned = false with pinned host buffers")
			}
		})
	}
}

func TestValidateOpenFails(t *testing.T) {
	open := func() (cudadriver.Driver, error) { return nil, errors.New("no libcuda here") }
	r := Validate(open, EnvPlan{}, Options{})
	if r.Pass || r.Error != "no libcuda here" || r.DeviceCount != nil || r.Library != "" {
		t.Errorf("report = %+v, want a failure with the open error and an unknown count", r)
	}
	if err := r.Err(); err == nil || err.Error() != "no libcuda here" {
		t.Errorf("Err() = %v", err)
	}
}

func TestValidateSteps(t *testing.T) {
	f := newFake(gpu(0, uuidA), gpu(1, uuidB))
	var steps []string
	opts := smallOpts(f)
	opts.Step = func(s string) { steps = append(steps, s) }
	Validate(f.open, EnvPlan{}, opts)
	want := []string{"load libcuda.so.1", "cuInit", "cuDeviceGetCount", "GPU 0: read device", "GPU 0: kernel: launch",
		"GPU 0: copies: device to device", "GPU 1: create context", "GPU 1: copies: host to device"}
	i := 0
	for _, s := range steps {
		if i < len(want) && s == want[i] {
			i++
		}
	}
	if i != len(want) {
		t.Errorf("steps %q\nmiss %q (in this order)", steps, want[i:])
	}
}

func TestDisplayUUID(t *testing.T) {
	mig := "MIG-11111111-2222-3333-4444-555555555555"
	tests := []struct {
		uuid     string
		expected []string
		want     string
	}{
		{uuidA, nil, uuidA},
		{uuidA, []string{uuidB}, uuidA},
		{uuidA, []string{uuidB, mig}, mig},
		{uuidA, []string{strings.ToUpper(uuidA)}, strings.ToUpper(uuidA)},
	}
	for _, tt := range tests {
		if got := displayUUID(tt.uuid, tt.expected); got != tt.want {
			t.Errorf("displayUUID(%s, %v) = %s, want %s", tt.uuid, tt.expected, got, tt.want)
		}
	}
}

func TestMIGDeviceMatchesItsEnvironmentUUID(t *testing.T) {
	mig := "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
	f := newFake(gpu(0, uuidB)) // CUDA reports the MIG device's bytes as GPU-...
	r := Validate(f.open, EnvPlan{Expected: []string{mig}}, smallOpts(f))
	if !r.Pass || r.Devices[0].UUID != mig {
		t.Errorf("pass %v uuid %s visibility %q, want pass with %s", r.Pass, r.Devices[0].UUID, r.Visibility, mig)
	}
}

func TestCheckSum(t *testing.T) {
	le := func(fs ...float32) []byte {
		b := make([]byte, 4*len(fs))
		for i, f := range fs {
			putF32(b[4*i:], f)
		}
		return b
	}
	tests := []struct {
		name    string
		a, b, c []float32
		wantErr string
	}{
		{"exact", []float32{1, 2, 3}, []float32{0.5, 0.5, 0}, []float32{1.5, 2.5, 3}, ""},
		{"one off", []float32{1, 2, 3}, []float32{1, 1, 1}, []float32{2, 3, 5}, "wrong result in 1 of 3 elements; first c[2] = 5, want 3 + 1 = 4"},
		{"NaN never equals", []float32{0}, []float32{0}, []float32{float32(math.NaN())}, "wrong result in 1 of 1 elements"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkSum(le(tt.a...), le(tt.b...), le(tt.c...))
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("checkSum = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func putF32(b []byte, f float32) {
	u := math.Float32bits(f)
	b[0], b[1], b[2], b[3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
}

func TestFillPatternDetectsShifts(t *testing.T) {
	b := make([]byte, 4096+3)
	fillPattern(b, 1)
	seen := map[string]bool{}
	for i := 0; i+8 <= 4096; i += 8 {
		w := string(b[i : i+8])
		if seen[w] {
			t.Fatalf("word at %d repeats an earlier word: a shifted block could go unnoticed", i)
		}
		seen[w] = true
	}
	c := make([]byte, len(b))
	fillPattern(c, 2)
	if firstDiff(b, c) != 0 {
		t.Errorf("patterns of two seeds agree at the start")
	}
	if firstDiff(b, b) != -1 {
		t.Errorf("firstDiff of equal buffers is not -1")
	}
}

func TestRetargetPTX(t *testing.T) {
	tests := []struct {
		cc, target, version, wantErr string
	}{
		{cc: "5.0", target: "sm_50", version: "7.0"},
		{cc: "7.5", target: "sm_75", version: "7.0"},
		{cc: "8.0", target: "sm_80", version: "7.0"},
		{cc: "8.6", target: "sm_86", version: "7.1"},
		{cc: "8.9", target: "sm_89", version: "7.8"},
		{cc: "9.0", target: "sm_90", version: "7.8"},
		{cc: "10.0", target: "sm_100", version: "8.6"},
		{cc: "12.0", target: "sm_120", version: "8.7"},
		{cc: "13.5", target: "sm_135", version: "9.0"},
		{cc: "9", wantErr: "not major.minor"},
		{cc: "", wantErr: "not major.minor"},
		{cc: "3.5", wantErr: "not major.minor"},
		{cc: "9.x", wantErr: "not major.minor"},
	}
	for _, tt := range tests {
		t.Run(tt.cc, func(t *testing.T) {
			ptx, target, err := RetargetPTX(VaddPTX(), tt.cc)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || target != tt.target {
				t.Fatalf("target %q, err %v; want %s", target, err, tt.target)
			}
			want := strings.Replace(strings.Replace(VaddPTX(), "\n.version 7.0\n", "\n.version "+tt.version+"\n", 1),
				"\n.target sm_50\n", "\n.target "+tt.target+"\n", 1)
			if ptx != want {
				t.Errorf("retargeted PTX differs beyond .version/.target:\n%s", ptx)
			}
		})
	}
}
