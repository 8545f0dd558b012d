package devicemanager_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// The kubelet's device manager always serves
// /var/lib/kubelet/device-plugins/kubelet.sock (devicemanager.NewManagerImpl
// takes no path). So the test binary re-executes itself in a private mount
// namespace and mounts a tmpfs on /var/lib there: the host's /var/lib is
// never touched, and a real kubelet on the same machine never sees us.
//
// nsEnv carries the parent's mount namespace (readlink /proc/self/ns/mnt) to
// the child, which refuses to mount anything unless its own namespace differs.
const nsEnv = "GPULET_DM_TEST_PARENT_MNTNS"

// varLib is what the child hides under a tmpfs.
const varLib = "/var/lib"

var (
	// skipReason is set when the tests cannot run here (not root, no mount
	// namespaces); every test and benchmark skips with it.
	skipReason string
	// gpuletBin is the gpulet binary under test.
	gpuletBin string
	// klogRec records everything kubelet code logs (through klog).
	klogRec = newRecorder()
)

func TestMain(m *testing.M) {
	parentNS := os.Getenv(nsEnv)
	if parentNS == "" {
		code, reason := reexecInMountNamespace()
		if reason == "" {
			os.Exit(code)
		}
		skipReason = reason
		fmt.Fprintf(os.Stderr, "SKIP kubelet device-manager tests: %s\n", reason)
		os.Exit(m.Run())
	}

	if err := enterTestNode(parentNS); err != nil {
		fmt.Fprintf(os.Stderr, "devicemanager tests: %v\n", err)
		os.Exit(1)
	}
	// ContextualLogger(true): klog.Background() and klog.FromContext give
	// the kubelet code our logger itself, so its V(4) logs are recorded.
	klog.SetLoggerWithOptions(klogRec.logger(), klog.ContextualLogger(true))

	bin, cleanup, err := gpuletBinary()
	if err != nil {
		fmt.Fprintf(os.Stderr, "devicemanager tests: %v\n", err)
		os.Exit(1)
	}
	gpuletBin = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// reexecInMountNamespace runs this test binary again, with the same
// arguments, in a new private mount namespace. It returns the child's exit
// code, or a reason to skip when that is impossible here.
func reexecInMountNamespace() (int, string) {
	if os.Geteuid() != 0 {
		return 0, "must run as root: kubelet's device manager serves the fixed path " + pluginapi.KubeletSocket +
			", which the test hides under a tmpfs in a private mount namespace (run as root, e.g. `sudo make test-kubelet`)"
	}
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return 0, "no mount namespaces here (/proc/self/ns/mnt: " + err.Error() + ")"
	}
	exe, err := os.Executable()
	if err != nil {
		return 0, "cannot find the test binary to re-execute: " + err.Error()
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), nsEnv+"="+self)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// Unshareflags CLONE_NEWNS: Go also makes / recursively private in the
	// child before exec (what `unshare -m --propagation private` does), so no
	// mount made there propagates back to the host.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, "cannot create a private mount namespace (needs CAP_SYS_ADMIN): " + err.Error()
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGQUIT)
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	err = cmd.Wait()
	signal.Stop(sigs)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, ""
	case errors.As(err, &ee):
		if ee.ExitCode() >= 0 {
			return ee.ExitCode(), ""
		}
		fmt.Fprintf(os.Stderr, "devicemanager tests: test process in the mount namespace died: %v\n", err)
		return 1, ""
	default:
		fmt.Fprintf(os.Stderr, "devicemanager tests: %v\n", err)
		return 1, ""
	}
}

// enterTestNode makes this process's private mount namespace look like a
// fresh node: an empty /var/lib with the kubelet's device-plugin folder.
func enterTestNode(parentNS string) error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	if self == parentNS {
		// Never mount over the host's /var/lib.
		return fmt.Errorf("%s is set but this process is still in mount namespace %s; refusing to mount a tmpfs on %s", nsEnv, self, varLib)
	}
	if err := syscall.Mount("tmpfs", varLib, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755,size=64m"); err != nil {
		return fmt.Errorf("mount tmpfs on %s in the private mount namespace: %w", varLib, err)
	}
	if err := os.MkdirAll(pluginapi.DevicePluginPath, 0o755); err != nil {
		return err
	}
	// NVIDIA's plugin writes its CDI spec to the fixed /var/run/cdi: a
	// tmpfs there keeps the host's folder untouched.
	if err := os.MkdirAll(cdiDir, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", cdiDir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755,size=16m"); err != nil {
		return fmt.Errorf("mount tmpfs on %s in the private mount namespace: %w", cdiDir, err)
	}
	return nil
}

// cdiDir is the CDI spec folder NVIDIA's plugin writes to (not a setting).
const cdiDir = "/var/run/cdi"

// gpuletBinary returns the gpulet to test: $GPULET_BIN, or one built from
// this repository (../../cmd/gpulet) into a temporary folder.
func gpuletBinary() (string, func(), error) {
	if p := os.Getenv("GPULET_BIN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", nil, err
		}
		// The stat is also recorded by `go test`, so a rebuilt binary is
		// never answered from the test cache.
		fi, err := os.Stat(abs)
		if err != nil {
			return "", nil, fmt.Errorf("GPULET_BIN: %w", err)
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", nil, fmt.Errorf("GPULET_BIN=%s is not an executable file", abs)
		}
		return abs, func() {}, nil
	}
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", nil, err
	}
	if _, err := os.Stat(filepath.Join(repo, "cmd", "gpulet")); err != nil {
		return "", nil, fmt.Errorf("GPULET_BIN is not set and %s/cmd/gpulet is missing: %w", repo, err)
	}
	// Touch every source file gpulet is built from, so that `go test` keys
	// its result cache on them: a changed gpulet re-runs these tests.
	if err := statSources(repo); err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "gpulet-dmtest-")
	if err != nil {
		return "", nil, err
	}
	bin := filepath.Join(dir, "gpulet")
	fmt.Fprintf(os.Stderr, "devicemanager tests: GPULET_BIN not set; building %s/cmd/gpulet\n", repo)
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/gpulet")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_CFLAGS=-Wno-deprecated-declarations")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("go build ./cmd/gpulet: %v\n%s", err, out)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

func statSources(repo string) error {
	for _, f := range []string{"go.mod", "go.sum"} {
		if _, err := os.Stat(filepath.Join(repo, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	for _, d := range []string{"cmd", "internal"} {
		err := filepath.WalkDir(filepath.Join(repo, d), func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !e.IsDir() && (strings.HasSuffix(p, ".go") || strings.HasSuffix(p, ".yaml")) {
				_, err = os.Stat(p)
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// requireNode skips tb when the tests cannot run on this machine.
func requireNode(tb testing.TB) {
	tb.Helper()
	if skipReason != "" {
		tb.Skip(skipReason)
	}
}
