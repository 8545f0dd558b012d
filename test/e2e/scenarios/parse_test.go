package scenarios

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// The parsers the scenarios judge the cluster by, checked without one.

func TestParseMetrics(t *testing.T) {
	text := `# HELP DCGM_FI_DEV_XID_ERRORS Value of the last XID error encountered.
# TYPE DCGM_FI_DEV_XID_ERRORS gauge
DCGM_FI_DEV_XID_ERRORS{gpu="3",UUID="GPU-a",pod="",note="a \"quoted\" value"} 48
gpulet_ready 1
gpulet_build_info{version="v1"} 1 1700000000000
`
	got := ParseMetrics(text)
	want := []Series{
		{Name: "DCGM_FI_DEV_XID_ERRORS", Labels: map[string]string{"gpu": "3", "UUID": "GPU-a", "pod": "", "note": `a \"quoted\" value`}, Value: "48"},
		{Name: "gpulet_ready", Labels: map[string]string{}, Value: "1"},
		{Name: "gpulet_build_info", Labels: map[string]string{"version": "v1"}, Value: "1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseMetrics:\n got %#v\nwant %#v", got, want)
	}
	if s := Select(got, "DCGM_FI_DEV_XID_ERRORS", map[string]string{"gpu": "3"}); len(s) != 1 {
		t.Errorf("Select gpu=3: %v", s)
	}
	if s := Select(got, "DCGM_FI_DEV_XID_ERRORS", map[string]string{"gpu": "4"}); len(s) != 0 {
		t.Errorf("Select gpu=4: %v", s)
	}
}

func TestVisibleGPUsAndMinors(t *testing.T) {
	log := "NVIDIA_VISIBLE_DEVICES=GPU-b,GPU-a\n" +
		"device: crw-rw-rw-    1 root     root      195,   5 Dec  2 07:57 /dev/nvidia5\n" +
		"device: crw-rw-rw-    1 root     root      195,   4 Dec  2 07:57 /dev/nvidia4\n" +
		"device: crw-rw-rw-    1 root     root      195, 255 Dec  2 07:57 /dev/nvidiactl\n" +
		"NVIDIA_VISIBLE_DEVICES=GPU-c\n"
	if got := VisibleGPUs(log); !reflect.DeepEqual(got, []string{"GPU-a", "GPU-b"}) {
		t.Errorf("VisibleGPUs = %v", got)
	}
	if got := PodMinors(log); !reflect.DeepEqual(got, []int{4, 5}) {
		t.Errorf("PodMinors = %v", got)
	}
	if got := VisibleGPUs("NVIDIA_VISIBLE_DEVICES=\n"); got != nil {
		t.Errorf("VisibleGPUs of an empty list = %v", got)
	}
}

func TestSetEnv(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		op   string
		want []string
	}{
		{[]string{"A=1"}, "B=2", []string{"A=1", "B=2"}},
		{[]string{"A=1", "B=2"}, "A=3", []string{"A=3", "B=2"}},
		{[]string{"A=1", "B=2"}, "A-", []string{"B=2"}},
		{[]string{"A=1"}, "C-", []string{"A=1"}},
		{nil, "X=a=b", []string{"X=a=b"}},
	} {
		var env []corev1.EnvVar
		for _, e := range tc.in {
			env = setEnv(env, e)
		}
		var got []string
		for _, e := range setEnv(env, tc.op) {
			got = append(got, e.Name+"="+e.Value)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%v + %s = %v, want %v", tc.in, tc.op, got, tc.want)
		}
	}
}
