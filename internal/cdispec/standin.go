package cdispec

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// The files of an NVIDIA driver install on an x86_64 Debian-style node, for
// the simulator's driver root and the tests that compare gpulet's specs with
// NVIDIA's: the libraries NVIDIA's container library and toolkit name (by
// capability, with their sonames), their X modules, configs, binaries and
// GSP firmware. "V" stands for the driver version. A soname "" is the file's
// own name (libraries without a soname link).
var standInLibs = []struct{ dir, file, soname string }{
	// utility
	{"", "libnvidia-ml.so.V", "libnvidia-ml.so.1"},
	{"", "libnvidia-cfg.so.V", "libnvidia-cfg.so.1"},
	// compute
	{"", "libcuda.so.V", "libcuda.so.1"},
	{"", "libcudadebugger.so.V", "libcudadebugger.so.1"},
	{"", "libnvidia-opencl.so.V", "libnvidia-opencl.so.1"},
	{"", "libnvidia-gpucomp.so.V", ""},
	{"", "libnvidia-ptxjitcompiler.so.V", "libnvidia-ptxjitcompiler.so.1"},
	{"", "libnvidia-allocator.so.V", "libnvidia-allocator.so.1"},
	{"", "libnvidia-pkcs11.so.V", ""},
	{"", "libnvidia-pkcs11-openssl3.so.V", ""},
	{"", "libnvidia-nvvm.so.V", "libnvidia-nvvm.so.4"},
	// video
	{"vdpau", "libvdpau_nvidia.so.V", "libvdpau_nvidia.so.1"},
	{"", "libnvidia-encode.so.V", "libnvidia-encode.so.1"},
	{"", "libnvidia-opticalflow.so.V", "libnvidia-opticalflow.so.1"},
	{"", "libnvcuvid.so.V", "libnvcuvid.so.1"},
	// graphics
	{"", "libnvidia-eglcore.so.V", ""},
	{"", "libnvidia-glcore.so.V", ""},
	{"", "libnvidia-tls.so.V", ""},
	{"", "libnvidia-glsi.so.V", ""},
	{"", "libnvidia-fbc.so.V", "libnvidia-fbc.so.1"},
	{"", "libnvidia-rtcore.so.V", ""},
	{"", "libnvoptix.so.V", "libnvoptix.so.1"},
	{"", "libGLX_nvidia.so.V", "libGLX_nvidia.so.0"},
	{"", "libEGL_nvidia.so.V", "libEGL_nvidia.so.0"},
	{"", "libGLESv2_nvidia.so.V", "libGLESv2_nvidia.so.2"},
	{"", "libGLESv1_CM_nvidia.so.V", "libGLESv1_CM_nvidia.so.1"},
	{"", "libnvidia-glvkspirv.so.V", ""},
	{"", "libnvidia-vulkan-producer.so.V", ""},
	{"", "libnvidia-egl-gbm.so.1.1.1", "libnvidia-egl-gbm.so.1"},
	{"", "libnvidia-egl-wayland.so.1.1.13", "libnvidia-egl-wayland.so.1"},
	{"", "libnvidia-egl-xcb.so.1.0.0", "libnvidia-egl-xcb.so.1"},
	{"", "libnvidia-egl-xlib.so.1.0.0", "libnvidia-egl-xlib.so.1"},
	// ngx
	{"", "libnvidia-ngx.so.V", "libnvidia-ngx.so.1"},
	// no capability list names these: NVIDIA's specs mount them all the same
	{"", "libnvidia-gtk3.so.V", ""}, // named by libnvidia-container as not needed
	{"", "libnvidia-nvvm70.so.4", ""},
}

var standInFiles = []string{
	"usr/lib/xorg/modules/drivers/nvidia_drv.so",
	"usr/lib/xorg/modules/extensions/libglxserver_nvidia.so.V",
	"usr/share/glvnd/egl_vendor.d/10_nvidia.json",
	"usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json",
	"usr/share/egl/egl_external_platform.d/10_nvidia_wayland.json",
	"usr/share/egl/egl_external_platform.d/20_nvidia_xcb.json",
	"usr/share/egl/egl_external_platform.d/20_nvidia_xlib.json",
	"usr/share/nvidia/nvoptix.bin",
	"usr/share/vulkan/icd.d/nvidia_icd.json",
	"usr/share/vulkan/implicit_layer.d/nvidia_layers.json",
	"usr/share/X11/xorg.conf.d/10-nvidia.conf",
	"etc/OpenCL/vendors/nvidia.icd",
	"lib/firmware/nvidia/V/gsp_ga10x.bin",
	"lib/firmware/nvidia/V/gsp_tu10x.bin",
}

var standInBins = []string{
	"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control", "nvidia-cuda-mps-server",
	"nvidia-xconfig",
}

// StandInLibDir is where WriteStandInDriver puts the libraries.
const StandInLibDir = "usr/lib/x86_64-linux-gnu"

// WriteStandInDriver lays out the files of a driver of version under root,
// with the soname and development links a driver install makes. writeLib
// writes a library (e.g. a real ELF object with its soname, for NVIDIA's
// generator to read); nil writes a small text file. Existing files are
// kept. It returns the library file names it wrote, relative to root.
func WriteStandInDriver(root, version string, writeLib func(path, soname string) error) ([]string, error) {
	v := func(s string) string { return strings.ReplaceAll(s, ".V", "."+version) }
	text := func(p string, mode os.FileMode) error {
		if _, err := os.Lstat(p); err == nil {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, []byte("simulated NVIDIA driver file "+filepath.Base(p)+"\n"), mode)
	}
	link := func(target, p string) error {
		if _, err := os.Lstat(p); err == nil {
			return nil
		}
		return os.Symlink(target, p)
	}
	var libs []string
	for _, l := range standInLibs {
		dir := filepath.Join(root, StandInLibDir, l.dir)
		file := v(l.file)
		p := filepath.Join(dir, file)
		soname := l.soname
		if soname == "" {
			soname = file
		}
		var err error
		if _, statErr := os.Lstat(p); statErr == nil {
		} else if writeLib != nil {
			if err = os.MkdirAll(dir, 0o755); err == nil {
				err = writeLib(p, soname)
			}
		} else {
			err = text(p, 0o644)
		}
		if err == nil && soname != file {
			err = link(file, filepath.Join(dir, soname))
		}
		// The development link, as the driver's installer makes it for
		// libcuda and libnvidia-ml.
		if dev := devLink(soname); err == nil && (strings.HasPrefix(file, "libcuda.") || strings.HasPrefix(file, "libnvidia-ml.")) {
			err = link(soname, filepath.Join(dir, dev))
		}
		if err != nil {
			return nil, fmt.Errorf("stand-in driver library %s: %w", p, err)
		}
		libs = append(libs, path.Join(StandInLibDir, l.dir, file))
	}
	for _, f := range standInFiles {
		if err := text(filepath.Join(root, v(strings.ReplaceAll(f, "/V/", "/"+version+"/"))), 0o644); err != nil {
			return nil, fmt.Errorf("stand-in driver file: %w", err)
		}
	}
	for _, b := range standInBins {
		if err := text(filepath.Join(root, "usr/bin", b), 0o755); err != nil {
			return nil, fmt.Errorf("stand-in driver binary: %w", err)
		}
	}
	return libs, nil
}
