package cdispec_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/gpulet/gpulet/internal/cdispec"
)

// A failed spec write leaves the folder as it was: the previous spec
// intact and no temporary file (the CDI library's own WriteSpec leaves a
// spec.*.tmp behind on a write error, one more per retry on a full tmpfs).
func TestFailedWriteLeavesNoTemporaryFile(t *testing.T) {
	node, _ := simNode(t, builtin(t, "dgx-h100"))
	dir := t.TempDir()
	spec, err := cdispec.Build(node, cdispec.Options{Kind: cdispec.PluginKind})
	if err != nil {
		t.Fatal(err)
	}
	path, err := cdispec.Write(dir, spec)
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string) {
		t.Helper()
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].Name() != filepath.Base(path) {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("%s: folder holds %v, want only %s", what, names, filepath.Base(path))
		}
		if after, err := os.ReadFile(path); err != nil || string(after) != string(before) {
			t.Errorf("%s: the previous spec changed (%v)", what, err)
		}
	}

	// The disk is full: every write past 512 bytes fails (EFBIG, as ENOSPC
	// would; Go ignores SIGXFSZ), three times over, in a child process so
	// the limit touches nothing else.
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriteUnderFileSizeLimit$")
	cmd.Env = append(os.Environ(), "GPULET_TEST_FSIZE_DIR="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the child writing under a file size limit: %v\n%s", err, out)
	}
	check("a full disk")

	// An invalid spec (a device without a name) is refused by the CDI
	// library before it replaces anything.
	invalid, err := cdispec.Build(node, cdispec.Options{Kind: cdispec.PluginKind})
	if err != nil {
		t.Fatal(err)
	}
	invalid.Devices[0].Name = ""
	if _, err := cdispec.Write(dir, invalid); err == nil {
		t.Fatal("an invalid spec was written")
	}
	check("an invalid spec")
}

// TestHelperWriteUnderFileSizeLimit is the child of
// TestFailedWriteLeavesNoTemporaryFile: it writes the spec three times
// under a 512-byte file size limit, each write must fail.
func TestHelperWriteUnderFileSizeLimit(t *testing.T) {
	dir := os.Getenv("GPULET_TEST_FSIZE_DIR")
	if dir == "" {
		t.Skip("only run as TestFailedWriteLeavesNoTemporaryFile's child")
	}
	node, _ := simNode(t, builtin(t, "dgx-h100"))
	spec, err := cdispec.Build(node, cdispec.Options{Kind: cdispec.PluginKind})
	if err != nil {
		t.Fatal(err)
	}
	lim := syscall.Rlimit{Cur: 512, Max: 512}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatalf("cannot limit file size: %v", err)
	}
	for range 3 {
		if _, err := cdispec.Write(dir, spec); err == nil {
			t.Fatal("a write past the file size limit succeeded")
		}
	}
}
