// Package nvmlmocktest finds NVIDIA's mock NVML (libnvidia-ml.so from
// k8s-test-infra) that hack/nvml-mock.sh builds and make unit names in
// GPULET_NVML_MOCK, for the tests that run gpulet's NVML backend or NVIDIA's
// binaries on it. Tests only.
package nvmlmocktest

import (
	"os"
	"path/filepath"
	"testing"
)

// Profiles are the 7 profiles the mock ships.
var Profiles = []string{"a100", "h100", "b200", "gb200", "gb300", "l40s", "t4"}

// Dir is the mock's build folder (lib/, configs/, nvml-mock-ctl); without
// GPULET_NVML_MOCK (plain go test) it skips tb.
func Dir(tb testing.TB) string {
	tb.Helper()
	return dirFrom(tb, "GPULET_NVML_MOCK", "hack/nvml-mock.sh")
}

// DirArm64 is Dir for the mock cross-built for linux/arm64 (GPULET_NVML_MOCK_ARM64), which the
// arm64 gpulet loads under qemu-user.
func DirArm64(tb testing.TB) string {
	tb.Helper()
	return dirFrom(tb, "GPULET_NVML_MOCK_ARM64", "hack/nvml-mock.sh arm64")
}

func dirFrom(tb testing.TB, env, build string) string {
	tb.Helper()
	dir := os.Getenv(env)
	if dir == "" {
		tb.Skipf("%s is not set: make unit builds NVIDIA's mock NVML (%s) and sets it", env, build)
	}
	if _, err := os.Stat(Library(dir)); err != nil {
		tb.Fatalf("%s=%s holds no lib/libnvidia-ml.so.1: %v", env, dir, err)
	}
	return dir
}

// Library is the mock's libnvidia-ml.so.1.
func Library(dir string) string { return filepath.Join(dir, "lib", "libnvidia-ml.so.1") }

// Config is the YAML of a profile.
func Config(dir, profile string) string {
	return filepath.Join(dir, "configs", "mock-nvml-config-"+profile+".yaml")
}

// Env is this process's environment plus what a child needs to load the
// mock with profile from the loader's path.
func Env(dir, profile string) []string {
	return append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Join(dir, "lib"), "MOCK_NVML_CONFIG="+Config(dir, profile))
}
