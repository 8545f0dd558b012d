package cdispec

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
	"testing"
)

func TestParseMIGMinors(t *testing.T) {
	m, err := ParseMIGMinors(strings.NewReader("config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := MIGMinors{"config": 1, "monitor": 2, GICap(0, 1): 12, CICap(0, 1, 0): 13}
	if fmt.Sprint(m) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", m, want)
	}
	for _, bad := range []string{
		"gpu0/gi1/access", "gpu0/gi1/access x", "gpu0/gi1/access -1", "gpu0/gi1/access 1 2",
		"gpu0/gi1 3", "gpuX/gi1/access 3", "gpu0/gi01/access 3", "gpu0/gi1/ci0/cx/access 3",
		"gpu0/gi1/access 3\ngpu0/gi1/access 4",
	} {
		if _, err := ParseMIGMinors(strings.NewReader(bad)); err == nil {
			t.Errorf("%q parsed without error", bad)
		}
	}
}

// The simulator's file numbers caps as the driver does: the documented
// gpu0/gi1 → 12, gpu0/gi1/ci0 → 13.
func TestFormatMIGMinors(t *testing.T) {
	var buf bytes.Buffer
	if err := FormatMIGMinors(&buf, 2); err != nil {
		t.Fatal(err)
	}
	m, err := ParseMIGMinors(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for cap, want := range map[string]int{
		"config": 1, "monitor": 2, GICap(0, 0): 3, CICap(0, 0, 0): 4, GICap(0, 1): 12, CICap(0, 1, 0): 13,
		CICap(0, 14, 7): 137, GICap(1, 0): 138,
	} {
		if m[cap] != want {
			t.Errorf("%s = %d, want %d", cap, m[cap], want)
		}
	}
	if len(m) != 2+2*15*9 {
		t.Errorf("%d caps for 2 GPUs", len(m))
	}
}

func FuzzParseMIGMinors(f *testing.F) {
	f.Add("config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n")
	f.Add("gpu7/gi14/ci7/access 1083\n")
	f.Add("gpu0/gi1/access 12 13\n")
	f.Fuzz(func(t *testing.T, in string) {
		m, err := ParseMIGMinors(strings.NewReader(in))
		if err != nil {
			return
		}
		// What parses round-trips: written back it reads the same.
		var keys []string
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, "%s %d\n", k, m[k])
		}
		again, err := ParseMIGMinors(strings.NewReader(b.String()))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", b.String(), err)
		}
		if fmt.Sprint(again) != fmt.Sprint(m) {
			t.Fatalf("round trip changed %v to %v", m, again)
		}
	})
}
