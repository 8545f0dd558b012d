// Package version says which gpulet this is: the release version and commit
// stamped at build time (make: -ldflags -X), else what the Go toolchain
// recorded (the module version of `go install ...@vX`, the VCS revision).
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set by the Makefile: -X github.com/gpulet/gpulet/internal/version.version=v1.2.3
// and ...version.commit=<full hash>.
var (
	version string
	commit  string
)

// Info is one build of gpulet.
type Info struct {
	Version   string // v1.2.3 from the git tag, v0.0.0-<yyyymmddhhmmss>-<commit12> between tags, or "dev"
	Commit    string // the full commit hash, "unknown" when not recorded
	GoVersion string // the Go toolchain that built it
	Platform  string // GOOS/GOARCH it was built for
}

// Get returns this binary's build.
func Get() Info {
	return resolve(version, commit, debug.ReadBuildInfo)
}

func resolve(v, c string, read func() (*debug.BuildInfo, bool)) Info {
	i := Info{Version: v, Commit: c, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := read(); ok {
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		if i.Commit == "" {
			modified := false
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					i.Commit = s.Value
				case "vcs.modified":
					modified = s.Value == "true"
				}
			}
			if i.Commit != "" && modified {
				i.Commit += "-dirty"
			}
		}
	}
	if i.Version == "" {
		i.Version = "dev"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	return i
}

// String is what `gpulet version` prints.
func (i Info) String() string {
	return fmt.Sprintf("gpulet %s\ncommit: %s\ngo: %s\nplatform: %s\n", i.Version, i.Commit, i.GoVersion, i.Platform)
}
