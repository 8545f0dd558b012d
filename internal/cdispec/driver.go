package cdispec

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Driver is the set of driver files a container may need beside the device
// nodes, as found under a driver root: what NVIDIA's CDI generator
// (nvidia-ctk cdi generate, the nvcdi library) discovers, each file tagged
// with the driver capabilities that need it.
type Driver struct {
	Root    string
	Version string
	Files   []DriverFile
	// Missing names the required libraries not found, for the log.
	Missing []string
}

// FileKind is what a driver file is; it decides its mount options and
// whether the ld cache must know its folder.
type FileKind int

// The kinds of driver files.
const (
	KindLibrary FileKind = iota
	KindBinary
	KindConfig
	KindFirmware
	KindIPC
)

// DriverFile is one file (or IPC socket or folder) mounted into containers.
type DriverFile struct {
	HostPath      string // the file itself, symlinks resolved within the root
	ContainerPath string // where NVIDIA's spec mounts it, e.g. /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15
	Kind          FileKind
	// Caps are the capabilities that need the file; none: only "all".
	Caps []Capability
	// Always: every container gets it whatever its capabilities (the GSP
	// firmware, as NVIDIA's container library mounts it).
	Always bool
	// Links are the other names the file has in a container: the soname
	// and development links NVIDIA's hooks create, which the hook-free
	// mode gives as more bind mounts of the same file.
	Links []Link
	// LDCache: NVIDIA's update-ldcache hook names the file's folder (the
	// driver-versioned libraries and the legacy NVVM).
	LDCache bool
	// Soname is a library's ELF soname (or its soname link's name when the
	// file is no ELF object, as in the simulator); "" for other files.
	Soname string
}

// Link is a symbolic link NVIDIA's create-symlinks hook makes in a
// container: Path → Target (Target relative to Path's folder). Graphics
// links go in a create-symlinks hook of their own, as NVIDIA's do.
type Link struct {
	Target, Path string
	Graphics     bool
}

func (l Link) arg() string { return l.Target + "::" + l.Path }

// Where NVIDIA's generator looks (facts from nvidia-container-toolkit
// v1.20's lookup package): library folders searched before the ld cache,
// executable folders, config folders, firmware folders.
var (
	libDirs = []string{
		"", "usr/lib64", "usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu",
		"usr/lib/x86_64-linux-gnu/nvidia/current", "usr/lib/aarch64-linux-gnu/nvidia/current",
		"lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu",
		"lib/x86_64-linux-gnu/nvidia/current", "lib/aarch64-linux-gnu/nvidia/current",
		// NVIDIA finds these through the ld cache, which gpulet does not read.
		"usr/local/nvidia/lib64",
	}
	binDirs       = []string{"usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin", "usr/local/nvidia/bin"}
	configDirs    = []string{"etc", "usr/local/share", "usr/share"}
	driverBinDefs = []string{
		"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
		"nvidia-cuda-mps-server", "nvidia-imex", "nvidia-imex-ctl", "nvidia-xconfig",
	}
	// Config files by the folder the container gets them in.
	shareConfigs = []string{
		"glvnd/egl_vendor.d/10_nvidia.json",
		"egl/egl_external_platform.d/15_nvidia_gbm.json",
		"egl/egl_external_platform.d/10_nvidia_wayland.json",
		"egl/egl_external_platform.d/09_nvidia_wayland2.json",
		"egl/egl_external_platform.d/20_nvidia_xcb.json",
		"egl/egl_external_platform.d/20_nvidia_xlib.json",
		"nvidia/nvoptix.bin",
		"X11/xorg.conf.d/10-nvidia.conf",
		"X11/xorg.conf.d/nvidia-drm-outputclass.conf",
	}
	etcConfigs    = []string{"OpenCL/vendors/nvidia.icd"}
	vulkanConfigs = []string{
		"vulkan/icd.d/nvidia_icd.json", "vulkan/icd.d/nvidia_layers.json", "vulkan/implicit_layer.d/nvidia_layers.json",
	}
	// Graphics libraries without the driver's version in their name.
	graphicsLibGlobs = []string{
		"libnvidia-egl-gbm.so.*.*", "libnvidia-egl-wayland.so.*.*", "libnvidia-egl-wayland2.so.*.*",
		"libnvidia-egl-xcb.so.*.*", "libnvidia-egl-xlib.so.*.*",
	}
	requiredLibs = []string{"libcuda", "libnvidia-ml"}
)

// FindDriver looks for the driver's files under root (/ on most nodes,
// /run/nvidia/driver with the GPU operator's driver container) as NVIDIA's
// generator does: every library named *.so.<driverVersion>, the legacy
// NVVM, the graphics libraries, configs and X modules, the driver's
// binaries, its GSP firmware and IPC sockets. A driver without libcuda or
// libnvidia-ml is an error, since a container given the rest could not run
// CUDA; the files found are returned with it.
func FindDriver(root, driverVersion string) (*Driver, error) {
	if root == "" {
		root = "/"
	}
	d := &Driver{Root: root, Version: driverVersion}
	seen := map[string]bool{}
	add := func(f DriverFile) {
		if seen[f.ContainerPath] {
			return
		}
		seen[f.ContainerPath] = true
		d.Files = append(d.Files, f)
	}

	// The driver's library folders are libcuda's; the libraries of this
	// driver version (and its vdpau subfolder) and the legacy NVVM are
	// taken from there, as NVIDIA's generator does.
	var libCUDADirs, driverDirs []string
	for _, rel := range d.glob(libDirs, "libcuda.so.1", 0) {
		dir := path.Dir(rel)
		if !slices.Contains(libCUDADirs, "/"+dir) {
			libCUDADirs = append(libCUDADirs, "/"+dir)
			driverDirs = append(driverDirs, dir)
		}
	}
	var libs []string
	if driverVersion != "" {
		vdpau := make([]string, len(driverDirs))
		for i, dir := range driverDirs {
			vdpau[i] = path.Join(dir, "vdpau")
		}
		libs = d.glob(append(slices.Clone(driverDirs), vdpau...), "*.so."+driverVersion, 0)
	}
	libs = append(libs, d.glob(driverDirs, "libnvidia-nvvm70.so.*", 0)...)
	for _, rel := range libs {
		f := d.library(rel)
		f.LDCache = true
		add(f)
	}
	for _, g := range graphicsLibGlobs {
		for _, rel := range d.glob(libDirs, g, 0) {
			f := d.library(rel)
			f.Links = nil // NVIDIA links only the driver-versioned libraries
			add(f)
		}
	}
	for _, rel := range d.glob(xorgDirs(libCUDADirs), "nvidia_drv.so", 1) {
		add(DriverFile{HostPath: d.host(rel), ContainerPath: "/" + rel, Kind: KindLibrary, Caps: []Capability{CapDisplay}})
	}
	if driverVersion != "" {
		for _, rel := range d.glob(xorgDirs(libCUDADirs), "libglxserver_nvidia.so."+driverVersion, 1) {
			add(DriverFile{HostPath: d.host(rel), ContainerPath: "/" + rel, Kind: KindLibrary, Caps: []Capability{CapDisplay},
				Links: []Link{{Target: path.Base(rel), Path: path.Join("/", path.Dir(rel), "libglxserver_nvidia.so"), Graphics: true}}})
		}
	}

	// Configs, mounted where the container's loaders look.
	configs := func(names []string, dirs []string, containerRoot string, c Capability) {
		for _, n := range names {
			for _, rel := range d.glob(dirs, n, 1) {
				add(DriverFile{HostPath: d.host(rel), ContainerPath: path.Join(containerRoot, n), Kind: KindConfig, Caps: []Capability{c}})
			}
		}
	}
	configs(shareConfigs, configDirs, "/usr/share", CapGraphics)
	configs(etcConfigs, configDirs, "/etc", CapCompute)
	vk := append(slices.Clone(vulkanConfigs), "vulkan/icd.d/nvidia_icd."+map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[runtime.GOARCH]+".json")
	configs(vk, append(slices.Clone(configDirs), ""), "/etc", CapGraphics)

	for _, b := range driverBinDefs {
		for _, rel := range d.glob(binDirs, b, 1) {
			if st, err := os.Stat(d.host(rel)); err != nil || st.Mode()&0o111 == 0 {
				continue
			}
			add(DriverFile{HostPath: d.host(rel), ContainerPath: "/" + rel, Kind: KindBinary, Caps: binCaps[b]})
		}
	}

	if driverVersion != "" {
		for _, dir := range firmwareDirs() {
			for _, pat := range []string{"gsp*.bin", "ucodes*.bin"} {
				for _, rel := range d.glob([]string{path.Join(dir, "nvidia", driverVersion)}, pat, 0) {
					add(DriverFile{HostPath: d.host(rel), ContainerPath: "/" + rel, Kind: KindFirmware, Always: true})
				}
			}
		}
	}

	for _, s := range []string{"nvidia-persistenced/socket", "nvidia-fabricmanager/socket"} {
		for _, rel := range d.globAny([]string{"run", "var/run"}, s, 1) {
			add(DriverFile{HostPath: d.host(rel), ContainerPath: "/" + rel, Kind: KindIPC, Caps: []Capability{CapUtility}})
		}
	}
	for _, rel := range d.globAny([]string{"tmp"}, "nvidia-mps", 1) {
		add(DriverFile{HostPath: d.host(rel), ContainerPath: "/" + rel, Kind: KindIPC, Caps: []Capability{CapCompute}})
	}

	for _, r := range requiredLibs {
		if !slices.ContainsFunc(d.Files, func(f DriverFile) bool {
			return f.Kind == KindLibrary && strings.HasPrefix(path.Base(f.ContainerPath), r+".so.")
		}) {
			d.Missing = append(d.Missing, r+".so."+driverVersion)
		}
	}
	if len(d.Missing) > 0 {
		return d, fmt.Errorf("driver root %s has no %s in %s", root, strings.Join(d.Missing, ", "),
			strings.Join(libDirs[1:], ", "))
	}
	return d, nil
}

// library describes the library at rel (resolved within the root): its
// capabilities, soname and the links NVIDIA's create-symlinks hook makes
// for it.
func (d *Driver) library(rel string) DriverFile {
	host := d.host(rel)
	dir, name := path.Dir("/"+rel), path.Base(rel)
	f := DriverFile{HostPath: host, ContainerPath: "/" + rel, Kind: KindLibrary, Caps: libraryCaps(name)}
	hostDir := filepath.Dir(host)
	f.Soname = soname(host)
	if d.Version != "" && strings.HasSuffix(name, ".so."+d.Version) {
		// The soname link and the .so development link, where the host
		// has them (NVIDIA creates only links the driver installed).
		if f.Soname != "" && f.Soname != name && isSymlink(filepath.Join(hostDir, f.Soname)) {
			f.Links = append(f.Links, Link{Target: name, Path: path.Join(dir, f.Soname)})
		}
		target := f.Soname
		if target == "" {
			target = name
		}
		if dev := devLink(target); dev != "" && dev != target && isSymlink(filepath.Join(hostDir, dev)) {
			f.Links = append(f.Links, Link{Target: target, Path: path.Join(dir, dev)})
		}
		// Links applications expect that drivers do not always install.
		base, _, _ := strings.Cut(name, ".so")
		switch base {
		case "libcuda":
			f.Links = append(f.Links, Link{Target: "libcuda.so.1", Path: path.Join(dir, "libcuda.so")})
		case "libGLX_nvidia":
			f.Links = append(f.Links, Link{Target: name, Path: path.Join(dir, "libGLX_indirect.so.0")})
		case "libnvidia-opticalflow":
			f.Links = append(f.Links, Link{Target: "libnvidia-opticalflow.so.1", Path: path.Join(dir, "libnvidia-opticalflow.so")})
		case "libnvidia-allocator":
			f.Links = append(f.Links, Link{Target: "../libnvidia-allocator.so.1", Path: path.Join(dir, "gbm", "nvidia-drm_gbm.so"), Graphics: true})
		case "libnvidia-vulkan-producer":
			f.Links = append(f.Links, Link{Target: name, Path: path.Join(dir, "libnvidia-vulkan-producer.so"), Graphics: true})
		}
		f.Links = slices.CompactFunc(f.Links, func(a, b Link) bool { return a.Path == b.Path })
	}
	return f
}

func (d *Driver) host(rel string) string { return filepath.Join(d.Root, filepath.FromSlash(rel)) }

// glob lists the regular files matching pattern in dirs (relative to the
// root), resolved within the root and without repeats; at most max (0: all).
func (d *Driver) glob(dirs []string, pattern string, max int) []string {
	return d.find(dirs, pattern, max, func(st os.FileInfo) bool { return st.Mode().IsRegular() })
}

// globAny is glob for sockets and folders too (IPC).
func (d *Driver) globAny(dirs []string, pattern string, max int) []string {
	return d.find(dirs, pattern, max, func(os.FileInfo) bool { return true })
}

func (d *Driver) find(dirs []string, pattern string, max int, ok func(os.FileInfo) bool) []string {
	var out []string
	seen := map[string]bool{}
	for _, dir := range dirs {
		matches, _ := filepath.Glob(filepath.Join(d.Root, filepath.FromSlash(dir), filepath.FromSlash(pattern)))
		slices.Sort(matches)
		for _, m := range matches {
			rel, err := filepath.Rel(d.Root, m)
			if err != nil {
				continue
			}
			real, err := resolveIn(d.Root, filepath.ToSlash(rel))
			if err != nil {
				continue
			}
			real = strings.TrimPrefix(real, "/")
			st, err := os.Stat(d.host(real))
			if err != nil || !ok(st) || seen[real] {
				continue
			}
			seen[real] = true
			out = append(out, real)
			if max > 0 && len(out) == max {
				return out
			}
		}
	}
	return out
}

// xorgDirs are the folders X server modules are searched in: beside each
// libcuda folder, then the usual X folders.
func xorgDirs(libRoots []string) []string {
	var out []string
	sub := []string{"xorg/modules/drivers", "xorg/modules/extensions", "xorg/modules/updates/drivers", "xorg/modules/updates/extensions"}
	for _, r := range libRoots {
		r = strings.TrimPrefix(r, "/")
		out = append(out, path.Join(r, "nvidia/xorg"))
		for _, s := range sub {
			out = append(out, path.Join(r, s))
		}
	}
	for _, r := range []string{"usr/lib", "usr/lib64", "usr/X11R6/lib", "usr/X11R6/lib64"} {
		for _, s := range sub {
			if r == "usr/X11R6/lib" || r == "usr/X11R6/lib64" {
				s = strings.TrimPrefix(s, "xorg/")
			}
			out = append(out, path.Join(r, s))
		}
	}
	return out
}

func firmwareDirs() []string {
	var u unix.Utsname
	release := ""
	if unix.Uname(&u) == nil {
		release = unix.ByteSliceToString(u.Release[:])
	}
	return []string{"lib/firmware/updates/" + release, "lib/firmware/updates", "lib/firmware/" + release, "lib/firmware"}
}

// soname is a library's ELF soname; for a file that is no ELF object (the
// simulator's stand-ins) the name of the link beside it that points at it
// and looks like a soname (lib….so.N), else "".
func soname(host string) string {
	if f, err := elf.Open(host); err == nil {
		defer f.Close()
		if names, err := f.DynString(elf.DT_SONAME); err == nil && len(names) == 1 {
			return names[0]
		}
		return path.Base(host)
	}
	entries, err := os.ReadDir(filepath.Dir(host))
	if err != nil {
		return ""
	}
	name := filepath.Base(host)
	base, _, _ := strings.Cut(name, ".so")
	best := ""
	for _, e := range entries {
		n := e.Name()
		if e.Type()&os.ModeSymlink == 0 || !strings.HasPrefix(n, base+".so.") || n == name {
			continue
		}
		if t, err := os.Readlink(filepath.Join(filepath.Dir(host), n)); err == nil && path.Base(t) == name {
			if best == "" || len(n) < len(best) {
				best = n
			}
		}
	}
	return best
}

// devLink is the development link of a soname: libcuda.so for libcuda.so.1.
func devLink(name string) string {
	i := strings.Index(name, ".so")
	if i < 0 {
		return ""
	}
	return name[:i+3]
}

func isSymlink(p string) bool {
	st, err := os.Lstat(p)
	return err == nil && st.Mode()&os.ModeSymlink != 0
}

// resolveIn follows symlinks of rel as if root were /, so an absolute
// link in a driver container's tree does not point into the host's own
// /usr. It returns the resolved path relative to root.
func resolveIn(root, rel string) (string, error) {
	p := path.Clean("/" + rel)
	for hops := 0; hops < 40; hops++ {
		// Resolve the first component that is a link, then start over.
		parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
		changed := false
		for i := range parts {
			cur := "/" + path.Join(parts[:i+1]...)
			st, err := os.Lstat(filepath.Join(root, cur))
			if err != nil {
				return "", err
			}
			if st.Mode()&os.ModeSymlink == 0 {
				continue
			}
			target, err := os.Readlink(filepath.Join(root, cur))
			if err != nil {
				return "", err
			}
			if !path.IsAbs(target) {
				target = path.Join(path.Dir(cur), target)
			}
			p = path.Clean(path.Join(target, path.Join(parts[i+1:]...)))
			changed = true
			break
		}
		if !changed {
			return p, nil
		}
	}
	return "", errors.New("too many levels of symbolic links")
}

// Select returns the files a container with capabilities c gets.
func (d *Driver) Select(c Capabilities) []DriverFile {
	var out []DriverFile
	for _, f := range d.Files {
		if f.Always || c.any(f.Caps) {
			out = append(out, f)
		}
	}
	return out
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
