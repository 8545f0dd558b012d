package kubebin

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Path finds the full build at Rel from this binary's folder, through a
// symlink to the entry point, and says where it looked when it is missing
// or not executable; Version reads its `version`.
func TestPathAndVersion(t *testing.T) {
	root := t.TempDir()
	entry := filepath.Join(root, "usr", "bin", "gpulet")
	kube := filepath.Join(root, "usr", "lib", "gpulet", "gpulet-kube")
	link := filepath.Join(root, "gpulet")
	for _, d := range []string{filepath.Dir(entry), filepath.Dir(kube)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(entry, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(entry, link); err != nil {
		t.Fatal(err)
	}
	defer func(f func() (string, error)) { executable = f }(executable)
	executable = func() (string, error) { return link, nil }

	if _, err := Path(); err == nil || !strings.Contains(err.Error(), kube) {
		t.Errorf("missing: %v, want an error naming %s", err, kube)
	}
	if err := os.WriteFile(kube, []byte("#!/bin/sh\nprintf 'gpulet v1.2.3\\ncommit: abc\\ngo: go1.26\\n'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Path(); err == nil || !strings.Contains(err.Error(), "not an executable") {
		t.Errorf("not executable: %v", err)
	}
	if err := os.Chmod(kube, 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := Path()
	if err != nil || p != kube {
		t.Fatalf("Path() = %q, %v; want %s", p, err, kube)
	}
	if v, err := Version(context.Background(), p); err != nil || v != "gpulet v1.2.3, commit abc" {
		t.Errorf("Version = %q, %v", v, err)
	}
}
