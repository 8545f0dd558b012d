package mps

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mountinfo writes a mount table with these mount points.
func mountinfo(t *testing.T, points ...string) string {
	t.Helper()
	var b strings.Builder
	for _, p := range points {
		b.WriteString(strings.Join([]string{"1", "0", "0:1", "/", strings.ReplaceAll(p, " ", `\040`), "rw", "-", "tmpfs", "tmpfs", "rw"}, " "))
		b.WriteString("\n")
	}
	f := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestCheckHost(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "nvidia-cuda-mps-control")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "mps root")
	if err := os.MkdirAll(filepath.Join(root, "shm"), 0o755); err != nil {
		t.Fatal(err)
	}
	otherShm := t.TempDir()
	for _, tt := range []struct {
		name    string
		control string
		mounts  []string
		shm     string
		want    []string // substrings of the problems; none: accepted
	}{
		{"a host mps-root, its shm as /dev/shm, the binary", bin, []string{"/", root}, filepath.Join(root, "shm"), nil},
		{"root below a host mount", bin, []string{"/", filepath.Dir(root)}, filepath.Join(root, "shm"), nil},
		{"no binary", filepath.Join(filepath.Dir(bin), "missing"), []string{"/", root}, filepath.Join(root, "shm"), []string{"control binary"}},
		{"root in the container", bin, []string{"/"}, filepath.Join(root, "shm"), []string{"own container filesystem"}},
		{"another /dev/shm", bin, []string{"/", root}, otherShm, []string{"mount the host's"}},
		{"the shipped manifests: nothing", "no-such-mps-control", []string{"/"}, otherShm,
			[]string{"control binary", "own container filesystem", "mount the host's"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckHost(root, tt.control, mountinfo(t, tt.mounts...), tt.shm)
			var he *HostError
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.As(err, &he) || len(he.Problems) != len(tt.want) {
				t.Fatalf("err %v, want %d problems", err, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(he.Problems[i], w) {
					t.Errorf("problem %q, want %q", he.Problems[i], w)
				}
			}
			if !strings.Contains(err.Error(), "time-slicing") {
				t.Errorf("the error does not say what to do instead: %v", err)
			}
		})
	}
}

func FuzzMountPointOf(f *testing.F) {
	f.Add("/run/nvidia/mps", "22 1 0:21 / / rw - overlay overlay rw\n23 22 0:5 / /run/nvidia/mps rw - tmpfs tmpfs rw\n")
	f.Add("/a b", `1 0 0:1 / /a\040b rw - tmpfs tmpfs rw`)
	f.Fuzz(func(t *testing.T, path, table string) {
		p := filepath.Join(t.TempDir(), "mountinfo")
		if err := os.WriteFile(p, []byte(table), 0o644); err != nil {
			t.Fatal(err)
		}
		mp, err := mountPointOf(path, p)
		if err == nil && mp == "" {
			t.Error("no error and no mount point")
		}
	})
}
