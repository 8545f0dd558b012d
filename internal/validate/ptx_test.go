package validate

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// TestPTXMatchesLaunch checks the embedded kernel's signature against what
// runKernel passes: three 64-bit pointers and a 32-bit count, in that order.
func TestPTXMatchesLaunch(t *testing.T) {
	ptx := VaddPTX()
	for _, re := range []string{
		`(?m)^\.version 7\.0$`, `(?m)^\.target sm_50$`, `(?m)^\.address_size 64$`,
		`\.visible \.entry vadd\(\s*\.param \.u64 vadd_param_a,\s*\.param \.u64 vadd_param_b,\s*\.param \.u64 vadd_param_c,\s*\.param \.u32 vadd_param_n\s*\)`,
		`setp\.ge\.u32\s+%p1, %r1, %r2;\s*@%p1 bra`, // threads past n do nothing
		`st\.global\.f32\s+\[%rd10\], %f3;`,
	} {
		if !regexp.MustCompile(re).MatchString(ptx) {
			t.Errorf("vadd.ptx does not match %s", re)
		}
	}
}

// TestPTXAssembles assembles the kernel with NVIDIA's ptxas for the oldest
// and newest targets gpulet cares about, where ptxas is installed (it runs
// without a GPU). PTXAS names it when it is not on PATH.
func TestPTXAssembles(t *testing.T) {
	ptxas := os.Getenv("PTXAS")
	if ptxas == "" {
		var err error
		if ptxas, err = exec.LookPath("ptxas"); err != nil {
			t.Skip("ptxas not found (set PTXAS=/path/to/ptxas): the PTX is only checked by the driver's JIT on a GPU")
		}
	}
	tests := []struct{ arch, cc string }{
		{"sm_50", ""}, {"sm_80", ""}, {"sm_90", ""}, // the sm_50 PTX, JIT-compiled for each
		{"sm_80", "8.0"}, {"sm_86", "8.6"}, {"sm_89", "8.9"}, {"sm_90", "9.0"}, // the fallback, retargeted
	}
	for _, tt := range tests {
		t.Run(tt.arch+"/"+tt.cc, func(t *testing.T) {
			src := "vadd.ptx"
			if tt.cc != "" {
				ptx, _, err := RetargetPTX(VaddPTX(), tt.cc)
				if err != nil {
					t.Fatal(err)
				}
				src = filepath.Join(t.TempDir(), "vadd-"+tt.arch+".ptx")
				if err := os.WriteFile(src, []byte(ptx), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			out, err := exec.Command(ptxas, "-arch="+tt.arch, "-o", filepath.Join(t.TempDir(), "vadd.cubin"), src).CombinedOutput()
			if err != nil {
				t.Errorf("ptxas -arch=%s %s: %v\n%s", tt.arch, src, err, out)
			}
		})
	}
}
