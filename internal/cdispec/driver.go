package cdispec

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	specs "tags.cncf.io/container-device-interface/specs-go"
)

// Driver is the set of driver files a container needs beside the device
// nodes: the compute libraries under their sonames and the utility
// binaries, as found under a driver root.
type Driver struct {
	Root  string
	Files []DriverFile
	// Missing names the required libraries not found, for the log.
	Missing []string
}

// DriverFile is one file mounted read-only into containers.
type DriverFile struct {
	HostPath      string // the file itself, symlinks resolved within the root
	ContainerPath string // its path under the driver root, e.g. /usr/lib64/libcuda.so.1
}

// Compute and utility libraries by soname (NVIDIA's "compute,utility"
// capabilities). They are mounted under the soname itself, so no ldconfig
// or symlink hook has to run in the container.
var (
	requiredLibs = []string{"libcuda.so.1", "libnvidia-ml.so.1"}
	optionalLibs = []string{
		"libnvidia-ptxjitcompiler.so.1", "libnvidia-nvvm.so.4", "libcudadebugger.so.1",
		"libnvidia-cfg.so.1", "libnvidia-opencl.so.1",
	}
	// Libraries only their driver version names (no soname link).
	versionedLibs = []string{"libnvidia-gpucomp.so.", "libnvidia-pkcs11-openssl3.so.", "libnvidia-pkcs11.so."}
	binaries      = []string{
		"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced",
		"nvidia-cuda-mps-control", "nvidia-cuda-mps-server",
	}
	// Searched in this order, as NVIDIA's generator falls back to them when
	// the ld cache does not name a library.
	libDirs = []string{
		"usr/lib64", "usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu",
		"lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu",
		"usr/local/nvidia/lib64", "usr/lib", "lib",
	}
	binDirs = []string{"usr/bin", "usr/local/nvidia/bin", "bin", "usr/sbin", "sbin"}
)

// FindDriver looks for the driver's files under root (/ on most nodes,
// /run/nvidia/driver with the GPU operator's driver container). Files not
// found are left out; a driver without libcuda or libnvidia-ml is an error,
// since a container given the rest could not run CUDA.
func FindDriver(root, driverVersion string) (*Driver, error) {
	if root == "" {
		root = "/"
	}
	d := &Driver{Root: root}
	libs := append(append([]string{}, requiredLibs...), optionalLibs...)
	if driverVersion != "" {
		for _, v := range versionedLibs {
			libs = append(libs, v+driverVersion)
		}
	}
	for _, lib := range libs {
		if f, ok := find(root, libDirs, lib); ok {
			d.Files = append(d.Files, f)
		} else if isRequired(lib) {
			d.Missing = append(d.Missing, lib)
		}
	}
	for _, b := range binaries {
		if f, ok := find(root, binDirs, b); ok {
			d.Files = append(d.Files, f)
		}
	}
	if len(d.Missing) > 0 {
		return d, fmt.Errorf("driver root %s has no %s in %s", root, strings.Join(d.Missing, ", "), strings.Join(libDirs, ", "))
	}
	return d, nil
}

func isRequired(lib string) bool {
	for _, r := range requiredLibs {
		if r == lib {
			return true
		}
	}
	return false
}

func find(root string, dirs []string, name string) (DriverFile, bool) {
	for _, dir := range dirs {
		rel := path.Join(dir, name)
		real, err := resolveIn(root, rel)
		if err != nil {
			continue
		}
		if st, err := os.Stat(filepath.Join(root, real)); err != nil || !st.Mode().IsRegular() {
			continue
		}
		return DriverFile{HostPath: filepath.Join(root, real), ContainerPath: "/" + rel}, true
	}
	return DriverFile{}, false
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

// Mounts are the read-only bind mounts of the driver's files.
func (d *Driver) Mounts() []*specs.Mount {
	out := make([]*specs.Mount, 0, len(d.Files))
	for _, f := range d.Files {
		out = append(out, &specs.Mount{
			HostPath: f.HostPath, ContainerPath: f.ContainerPath,
			Options: []string{"ro", "nosuid", "nodev", "rbind", "rprivate"},
		})
	}
	return out
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
