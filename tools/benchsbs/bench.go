package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpulet/gpulet/internal/kubebin"
	"github.com/gpulet/gpulet/internal/plugin/plugintest"
)

type options struct {
	gpulet, kube, nvidiaBin, mock, profile, only, cache string
	gpuletEnv                                           []string
	runs                                                int
	idle                                                time.Duration
	churn, verbose                                      bool
}

// sample is one configuration's numbers from one run; a missing number is
// negative.
type sample map[string]float64

// A configuration is what runs on the mocked node in one run: gpulet alone,
// NVIDIA's plugin alone, gpulet with everything on, NVIDIA's plugin + GFD.
type configuration struct {
	name string
	desc string
	run  func(ctx context.Context, b *bencher) (sample, error)
}

func configurations() []configuration {
	return []configuration{
		{"gpulet", "the image's gpulet run, device plugin only (seed DaemonSet settings, labels and metrics off)", runPlain("gpulet")},
		{"gpulet-kube", "the same with the full build run directly (the image's only binary before the lean entry point)", runPlain("gpulet-kube")},
		{"nvidia", "NVIDIA nvidia-device-plugin (same settings)", runPlain("nvidia")},
		{"gpulet-full", "the image's gpulet run with node labels, metrics and DRA (GPUs 0,1) on (it execs the full build)", runGpuletFull},
		{"nvidia+gfd", "NVIDIA nvidia-device-plugin + gpu-feature-discovery, summed", runNvidiaGFD},
	}
}

func configNames() string {
	var n []string
	for _, c := range configurations() {
		n = append(n, c.name)
	}
	return strings.Join(n, ",")
}

type bencher struct {
	o    options
	self string
	tmp  string
	seq  int
}

func bench(ctx context.Context, o options) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	switch o.cache {
	case cacheRead, cacheExtract, cacheCold:
	default:
		return fmt.Errorf("-cache=%q: want %s, %s or %s", o.cache, cacheRead, cacheExtract, cacheCold)
	}
	for _, p := range []string{o.gpulet, filepath.Join(o.nvidiaBin, "nvidia-device-plugin"), filepath.Join(o.nvidiaBin, "gpu-feature-discovery"), mockConfig(o)} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("missing %s: %w", p, err)
		}
	}
	tmp, err := os.MkdirTemp("", "benchsbs-")
	if err != nil {
		return err
	}
	if !o.verbose {
		defer os.RemoveAll(tmp)
	}
	if o, err = stage(o, filepath.Join(tmp, "files")); err != nil {
		return err
	}
	b := &bencher{o: o, self: self, tmp: tmp}
	var cfgs []configuration
	for _, c := range configurations() {
		if c.name == "gpulet-kube" && o.kube == "" {
			continue
		}
		if o.only == "" || slices.Contains(strings.Split(o.only, ","), c.name) {
			cfgs = append(cfgs, c)
		}
	}
	results := map[string][]sample{}
	for i := 0; i < o.runs; i++ {
		for _, c := range cfgs {
			s, err := c.run(ctx, b)
			if err != nil {
				return fmt.Errorf("run %d, %s: %w", i+1, c.name, err)
			}
			if o.verbose {
				fmt.Fprintf(os.Stderr, "run %d %-12s %v\n", i+1, c.name, s)
			}
			results[c.name] = append(results[c.name], s)
		}
	}
	if o.verbose {
		fmt.Fprintln(os.Stderr, "logs kept in", tmp)
	}
	printReport(os.Stdout, o, cfgs, results)
	return nil
}

func mockConfig(o options) string {
	return filepath.Join(o.mock, "configs", "mock-nvml-config-"+o.profile+".yaml")
}

// proc is one measured process, started through the nsexec helper.
type proc struct {
	name   string
	cmd    *exec.Cmd
	execAt time.Time // when the helper exec'd the binary
	done   chan error
}

// runDir is one process's folder: varlib is bound over /var/lib.
func (b *bencher) runDir(name string) (string, error) {
	b.seq++
	d := filepath.Join(b.tmp, fmt.Sprintf("%02d-%s", b.seq, name))
	return d, os.MkdirAll(filepath.Join(d, "varlib", "kubelet", "device-plugins"), 0o755)
}

func (b *bencher) baseEnv() []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
		"LD_LIBRARY_PATH=" + filepath.Join(b.o.mock, "lib"), "MOCK_NVML_CONFIG=" + mockConfig(b.o),
		// The seed DaemonSet's device-plugin settings; NVIDIA's plugin reads the same variables.
		"FAIL_ON_INIT_ERROR=false", "DEVICE_LIST_STRATEGY=envvar", "DEVICE_ID_STRATEGY=uuid",
	}
}

// gpuletEnv is baseEnv plus -gpulet-env (for gpulet's processes only).
func (b *bencher) gpuletEnv() []string {
	return append(b.baseEnv(), b.o.gpuletEnv...)
}

// start runs argv in dir's namespace (dir/varlib as /var/lib, secrets as
// in-cluster credentials unless "-") and returns once it has been exec'd.
func (b *bencher) start(name, dir, secrets string, env, argv []string) (*proc, error) {
	files := []string{argv[0], filepath.Join(b.o.mock, "lib", "libnvidia-ml.so.1")}
	if kube := filepath.Join(filepath.Dir(argv[0]), kubebin.Rel); fileExists(kube) {
		files = append(files, kube) // the image's full build, which the entry point may exec
	}
	if err := fillCache(b.o.cache, files...); err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	logf, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		w.Close()
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(b.self, append([]string{nsexecArg, filepath.Join(dir, "varlib"), secrets}, argv...)...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	w.Close()
	p := &proc{name: name, cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	ts, err := io.ReadAll(r)
	ns, perr := strconv.ParseInt(string(ts), 10, 64)
	if err != nil || perr != nil {
		p.kill()
		return nil, fmt.Errorf("%s did not start (see %s): %v", name, logf.Name(), errors.Join(err, perr))
	}
	p.execAt = time.Unix(0, ns)
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// kill SIGKILLs the process and waits for it; it returns when it was sent.
func (p *proc) kill() time.Time {
	at := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	return at
}

// stop SIGTERMs the process and waits up to 10 s before SIGKILL.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

// How the binaries and the mock library come into the page cache before
// each start (-cache). How a file came into the cache changes how much of
// it a process maps: on this kernel (large folios) a process maps whole
// folios of its binary, not only the pages it touches, and the size of the
// folios depends on how they were filled.
const (
	// cacheRead: dropped, then read back whole with read(2) (readahead
	// builds large folios).
	cacheRead = "read"
	// cacheExtract: a fresh copy written in 32 KiB writes and fsync'd, then
	// renamed over the file, as containerd's layer unpacking writes an
	// image's files (pkg/archive: io copies through a 32 KiB buffer): a pod
	// started right after its image was pulled.
	cacheExtract = "extract"
	// cacheCold: dropped; the exec and the process's page faults read it
	// (a node whose page cache no longer holds the image's files).
	cacheCold = "cold"
)

// stage copies what is measured into dir (the image's entry point with its
// full build beside it, the full build alone, NVIDIA's binaries, the mock
// library), so each start can fill the page cache its own way without
// touching the originals, and returns o pointing at the copies.
func stage(o options, dir string) (options, error) {
	cp := func(src, dst string) (string, error) {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", err
		}
		return dst, writeCopy(src, dst)
	}
	var err error
	entry := filepath.Join(dir, "image", "usr", "bin", "gpulet")
	kube := filepath.Join(filepath.Dir(o.gpulet), kubebin.Rel)
	if fileExists(kube) {
		if _, err = cp(kube, filepath.Join(filepath.Dir(entry), kubebin.Rel)); err != nil {
			return o, err
		}
	}
	if o.gpulet, err = cp(o.gpulet, entry); err != nil {
		return o, err
	}
	if o.kube != "" {
		if o.kube, err = cp(o.kube, filepath.Join(dir, "kube", "gpulet")); err != nil {
			return o, err
		}
	}
	nv := filepath.Join(dir, "nvidia")
	for _, f := range []string{"nvidia-device-plugin", "gpu-feature-discovery"} {
		if _, err = cp(filepath.Join(o.nvidiaBin, f), filepath.Join(nv, f)); err != nil {
			return o, err
		}
	}
	o.nvidiaBin = nv
	lib, err := filepath.EvalSymlinks(filepath.Join(o.mock, "lib", "libnvidia-ml.so.1"))
	if err != nil {
		return o, err
	}
	mock := filepath.Join(dir, "mock")
	if _, err = cp(lib, filepath.Join(mock, "lib", "libnvidia-ml.so.1")); err != nil {
		return o, err
	}
	if err := os.Symlink(filepath.Join(o.mock, "configs"), filepath.Join(mock, "configs")); err != nil {
		return o, err
	}
	o.mock = mock
	return o, nil
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// writeCopy writes src to dst in 32 KiB writes (containerd's unpack buffer),
// fsync'd, through a temporary file renamed over dst.
func writeCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, fi.Mode().Perm())
	if err != nil {
		return err
	}
	_, err = io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, make([]byte, 32<<10))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return nil
}

// fillCache brings the files into the page cache as mode says.
func fillCache(mode string, paths ...string) error {
	for _, p := range paths {
		if mode == cacheExtract {
			if err := writeCopy(p, p); err != nil {
				return err
			}
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		if err == nil && mode == cacheRead {
			_, err = io.Copy(io.Discard, f)
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("page cache (%s) %s: %w", mode, p, err)
		}
	}
	return nil
}

// mem is a process's memory from /proc, in MB (10^6 bytes).
type mem struct{ rss, hwm, anon, file float64 }

func readMem(pid int) (mem, error) {
	var m mem
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	m.rss, m.hwm = kbField(st, "VmRSS:"), kbField(st, "VmHWM:")
	roll, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return m, err
	}
	m.anon = kbField(roll, "Anonymous:")
	m.file = kbField(roll, "Rss:") - m.anon
	return m, nil
}

func kbField(b []byte, key string) float64 {
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == key {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v * 1024 / 1e6
		}
	}
	return -1
}

// cpuSeconds is utime+stime of the process (all its threads, live and
// exited), at the kernel's clock-tick resolution (10 ms).
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// Fields after the command: state is [0], utime [11], stime [12].
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100, nil
}

// waitRegistered waits for a Register on k and returns when it arrived.
func waitRegistered(ctx context.Context, k *plugintest.Kubelet, p *proc) (time.Time, string, error) {
	select {
	case r := <-k.Registrations:
		return time.Now(), r.Endpoint, nil
	case err := <-p.done:
		p.done <- err
		return time.Time{}, "", fmt.Errorf("%s exited before registering: %v", p.name, err)
	case <-time.After(60 * time.Second):
		return time.Time{}, "", fmt.Errorf("%s did not register within 60s", p.name)
	case <-ctx.Done():
		return time.Time{}, "", ctx.Err()
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// idleWindow lets the processes settle for a second, then measures their
// summed CPU over the idle window (per hour) and their memory after it.
func (b *bencher) idleWindow(ctx context.Context, s sample, ps ...*proc) error {
	if err := sleep(ctx, time.Second); err != nil {
		return err
	}
	cpu0 := 0.0
	for _, p := range ps {
		c, err := cpuSeconds(p.pid())
		if err != nil {
			return err
		}
		cpu0 += c
	}
	t0 := time.Now()
	if err := sleep(ctx, b.o.idle); err != nil {
		return err
	}
	cpu1 := 0.0
	var sum mem
	for _, p := range ps {
		c, err := cpuSeconds(p.pid())
		if err != nil {
			return err
		}
		cpu1 += c
		m, err := readMem(p.pid())
		if err != nil {
			return err
		}
		sum.rss += m.rss
		sum.hwm += m.hwm
		sum.anon += m.anon
		sum.file += m.file
	}
	s["cpu_s_per_idle_h"] = (cpu1 - cpu0) * float64(time.Hour) / float64(time.Since(t0))
	s["idle_rss_mb"], s["peak_rss_mb"], s["idle_anon_mb"], s["idle_file_mb"] = sum.rss, sum.hwm, sum.anon, sum.file
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
