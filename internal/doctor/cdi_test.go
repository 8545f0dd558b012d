package doctor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/sim"
)

// The CDI driver check says which mode the specs are in and, hook-free,
// what that lacks.
func TestCDIDriverFiles(t *testing.T) {
	p, _ := sim.LoadProfile("pcie-4x-l4")
	b, err := sim.New(p, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	hook := filepath.Join(t.TempDir(), "nvidia-cdi-hook")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                   string
		root, caps, mode, path string
		status                 Status
		detail                 []string
	}{
		{"no hook binary", b.DriverRoot(), "", "auto", filepath.Join(t.TempDir(), "none"), Warn,
			[]string{"hook-free", "CUDA forward compatibility", "capabilities all"}},
		{"hook binary present", b.DriverRoot(), "compute,utility,video", "auto", hook, OK,
			[]string{"hook mode (" + hook + ")", "capabilities compute,utility,video"}},
		{"bad capability", b.DriverRoot(), "cuda", "auto", hook, Fail, []string{`"cuda"`}},
		{"no driver", t.TempDir(), "", "auto", hook, Warn, []string{"no driver files"}},
	} {
		in := CDIInput{Writer: func(hardware.Backend) *cdispec.Writer {
			return &cdispec.Writer{DriverRoot: tc.root, Capabilities: tc.caps, HookMode: tc.mode, HookPath: tc.path}
		}}
		fs := Run(context.Background(), Input{Open: func() (hardware.Backend, error) { return b, nil }, PluginDir: t.TempDir(), CDI: in})
		f := find(t, fs, "CDI driver files")
		if f.Status != tc.status {
			t.Errorf("%s: %s (%s), want %s", tc.name, f.Status, f.Detail, tc.status)
		}
		for _, d := range tc.detail {
			if !strings.Contains(f.Detail, d) {
				t.Errorf("%s: detail %q does not say %q", tc.name, f.Detail, d)
			}
		}
	}
}
