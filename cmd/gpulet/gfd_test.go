package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/hardware/nvml/nvmlmocktest"
)

// labelDiff is one allowed difference from the checked-in list.
type labelDiff struct {
	profile, key, kind string
	used               bool
}

func readLabelDiffs(t *testing.T, path string) []*labelDiff {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []*labelDiff
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 4 {
			t.Fatalf("%s:%d: want <profile|*> <label> <value|only-gfd|only-gpulet> <reason>, got %q", path, n, line)
		}
		switch fields[2] {
		case "value", "only-gfd", "only-gpulet":
		default:
			t.Fatalf("%s:%d: kind %q is not value, only-gfd or only-gpulet", path, n, fields[2])
		}
		out = append(out, &labelDiff{profile: fields[0], key: fields[1], kind: fields[2]})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func parseLabelFile(t *testing.T, data string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(data), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("label line %q has no =", line)
		}
		out[k] = v
	}
	return out
}

// TestLabelsMatchGFDOnMock runs NVIDIA's GPU Feature Discovery and `gpulet
// labels --backend nvml` on the same mocked node, for every profile of
// NVIDIA's mock NVML, and fails on any difference not listed in
// testdata/gfd-label-differences.txt.
func TestLabelsMatchGFDOnMock(t *testing.T) {
	mock := nvmlmocktest.Dir(t)
	bin := os.Getenv("GPULET_NVIDIA_BIN")
	if bin == "" {
		t.Skip("GPULET_NVIDIA_BIN is not set: make unit builds NVIDIA's gpu-feature-discovery and sets it")
	}
	allowed := readLabelDiffs(t, filepath.Join("testdata", "gfd-label-differences.txt"))
	allow := func(profile, key, kind string) bool {
		for _, d := range allowed {
			if (d.profile == "*" || d.profile == profile) && d.key == key && d.kind == kind {
				d.used = true
				return true
			}
		}
		return false
	}
	for _, profile := range nvmlmocktest.Profiles {
		t.Run(profile, func(t *testing.T) {
			env := nvmlmocktest.Env(mock, profile)
			out := filepath.Join(t.TempDir(), "gfd")
			gfd := exec.Command(filepath.Join(bin, "gpu-feature-discovery"), "--oneshot", "--output-file="+out, "--use-node-feature-api=false")
			gfd.Env = append(env, "NODE_NAME=mock-node")
			if log, err := gfd.CombinedOutput(); err != nil {
				t.Fatalf("gpu-feature-discovery: %v\n%s", err, log)
			}
			data, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			want := parseLabelFile(t, string(data))
			cmd := exec.Command(binary(t), "labels", "--backend=nvml")
			cmd.Env = env
			cmd.Stderr = &strings.Builder{}
			gl, err := cmd.Output()
			if err != nil {
				t.Fatalf("gpulet labels: %v\n%s", err, cmd.Stderr)
			}
			got := parseLabelFile(t, string(gl))
			keys := map[string]bool{}
			for k := range want {
				keys[k] = true
			}
			for k := range got {
				keys[k] = true
			}
			var diffs []string
			for k := range keys {
				g, inG := got[k]
				w, inW := want[k]
				var kind string
				switch {
				case inG && inW && g == w:
					allow(profile, k, "value") // a listed difference that agrees this time still matched
					continue
				case inG && inW:
					kind = "value"
				case inW:
					kind = "only-gfd"
				default:
					kind = "only-gpulet"
				}
				if !allow(profile, k, kind) {
					diffs = append(diffs, fmt.Sprintf("%s %s: GFD %q, gpulet %q", kind, k, w, g))
				}
			}
			sort.Strings(diffs)
			for _, d := range diffs {
				t.Errorf("unlisted difference from GFD: %s", d)
			}
			t.Logf("%s: %d labels from GFD, %d from gpulet, %d unlisted differences", profile, len(want), len(got), len(diffs))
		})
	}
	if t.Failed() {
		return
	}
	for _, d := range allowed {
		if !d.used {
			t.Errorf("testdata/gfd-label-differences.txt lists %s %s %s, which matched nothing: remove the line", d.profile, d.key, d.kind)
		}
	}
}
