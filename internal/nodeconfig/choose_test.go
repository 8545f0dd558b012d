package nodeconfig

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/nodeconfig/nodeconfigtest"
)

func TestChoose(t *testing.T) {
	both := []string{"default", "ts4"}
	for _, tc := range []struct {
		name      string
		label     string
		names     []string
		def       string
		fallbacks []string
		want      string // config name, or "" for the empty config
		reason    string
		err       string // part of the error, "" for none
	}{
		{name: "label", label: "ts4", names: both, fallbacks: []string{"named"}, want: "ts4", reason: "label"},
		{name: "label wins over default", label: "ts4", names: both, def: "default", want: "ts4", reason: "label"},
		{name: "missing label config", label: "mig", names: both, fallbacks: []string{"empty"}, err: `names config "mig"`},
		{name: "default", names: both, def: "ts4", fallbacks: []string{"named"}, want: "ts4", reason: "default"},
		{name: "missing default", names: both, def: "nope", fallbacks: []string{"named"}, err: `default config "nope"`},
		{name: "named", names: both, fallbacks: []string{"named", "single"}, want: "default", reason: "fallback named"},
		{name: "named missing then single", names: []string{"ts4"}, fallbacks: []string{"named", "single"}, want: "ts4", reason: "fallback single"},
		{name: "single with two", names: []string{"a", "b"}, fallbacks: []string{"single"}, err: "no fallback strategy (single)"},
		{name: "single before named", names: []string{"default"}, fallbacks: []string{"single", "named"}, want: "default", reason: "fallback single"},
		{name: "empty", names: []string{"a", "b"}, fallbacks: []string{"named", "single", "empty"}, want: "", reason: "fallback empty"},
		{name: "no fallbacks", names: []string{"a", "b"}, err: "no fallback strategy"},
		{name: "unknown fallback", names: []string{"a", "b"}, fallbacks: []string{"first"}, err: `unknown fallback strategy "first"`},
		{name: "no files", label: "ts4", fallbacks: []string{"empty"}, err: "no config files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Choose(tc.label, tc.names, tc.def, tc.fallbacks)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one with %q (choice %+v)", err, tc.err, c)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Name != tc.want || c.Reason != tc.reason {
				t.Errorf("chose %q (%s), want %q (%s)", c.Name, c.Reason, tc.want, tc.reason)
			}
		})
	}
}

func TestPickReadsAMountedConfigMap(t *testing.T) {
	dir := t.TempDir()
	cm := nodeconfigtest.New(t, dir, map[string]string{"default": "version: v1\n", "ts4": "version: v1\n"})
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	names, err := Names(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"default", "ts4"}) {
		t.Fatalf("names %v, want [default ts4] (no ..data, no folders)", names)
	}
	c, err := Pick(dir, "ts4", "", []string{"named"})
	if err != nil || c.Path != filepath.Join(dir, "ts4") {
		t.Fatalf("Pick: %+v, %v", c, err)
	}
	// An edited ConfigMap: ts4 gets new content through the ..data swap.
	cm.Update(map[string]string{"default": "version: v1\n", "ts4": "version: v1\nflags: {migStrategy: single}\n"})
	b, err := os.ReadFile(c.Path)
	if err != nil || !strings.Contains(string(b), "single") {
		t.Fatalf("after the swap the file reads %q, %v", b, err)
	}
	// The empty config has no file.
	c, err = Pick(dir, "", "", []string{"empty"})
	if err != nil || c.Path != "" || c.String() != "(empty)" {
		t.Fatalf("empty: %+v, %v", c, err)
	}
	if _, err := Pick(filepath.Join(dir, "missing"), "", "", []string{"empty"}); err == nil {
		t.Fatal("a missing folder picked a config")
	}
}
