//go:build !(linux && (amd64 || arm64) && cgo)

package cudadriver

import (
	"fmt"
	"runtime"
)

// LibraryPaths are where Open looks for the CUDA driver library.
var LibraryPaths []string

// Open explains that this build cannot load the CUDA driver.
func Open() (Driver, error) { return OpenLibrary(LibraryPaths...) }

// OpenLibrary explains that this build cannot load the CUDA driver.
//
// The binding (purego) would work without cgo too, but it links the binary
// against the C library's loader, and gpulet's CGO_ENABLED=0 build must
// stay static: it runs on a busybox-static base in the end-to-end test.
func OpenLibrary(...string) (Driver, error) {
	if runtime.GOOS == "linux" && (runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64") {
		return nil, fmt.Errorf("%w: this gpulet binary was built without cgo (CGO_ENABLED=0), which keeps it static but leaves it unable to load libcuda.so.1; use the release image or a CGO_ENABLED=1 build (make build)", ErrNoLibrary)
	}
	return nil, fmt.Errorf("%w: gpulet validate loads the CUDA driver on linux/amd64 and linux/arm64 only, not %s/%s", ErrNoLibrary, runtime.GOOS, runtime.GOARCH)
}
