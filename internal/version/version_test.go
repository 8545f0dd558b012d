package version

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	withVCS := func(rev, modified string) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) {
			return &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
				{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}}, true
		}
	}
	installed := func() (*debug.BuildInfo, bool) {
		return &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}, true
	}
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	for _, tc := range []struct {
		name                string
		v, c                string
		read                func() (*debug.BuildInfo, bool)
		wantVersion, wantCm string
	}{
		{"stamped by make wins over VCS", "v0.0.0-20261202051200-c40ec91a1b2c", "c40ec91a1b2cfull", withVCS("other", "true"), "v0.0.0-20261202051200-c40ec91a1b2c", "c40ec91a1b2cfull"},
		{"go build in a clean checkout", "", "", withVCS("abc123", "false"), "dev", "abc123"},
		{"go build in a dirty checkout", "", "", withVCS("abc123", "true"), "dev", "abc123-dirty"},
		{"go install @version", "", "", installed, "v1.4.0", "unknown"},
		{"nothing recorded", "", "", none, "dev", "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := resolve(tc.v, tc.c, tc.read)
			if got.Version != tc.wantVersion || got.Commit != tc.wantCm {
				t.Errorf("version %q commit %q, want %q %q", got.Version, got.Commit, tc.wantVersion, tc.wantCm)
			}
			if got.GoVersion != runtime.Version() || got.Platform != runtime.GOOS+"/"+runtime.GOARCH {
				t.Errorf("go %q platform %q", got.GoVersion, got.Platform)
			}
			if s := got.String(); !strings.HasPrefix(s, "gpulet "+tc.wantVersion+"\ncommit: "+tc.wantCm+"\n") {
				t.Errorf("String() = %q", s)
			}
		})
	}
}
