package cdispec

import (
	"fmt"
	"slices"
	"strings"
)

// Capability is one of the driver capabilities a container may ask for, as
// NVIDIA_DRIVER_CAPABILITIES names them.
type Capability string

// The capabilities NVIDIA's container stack knows. compat32 (32-bit
// libraries) is accepted but gives nothing: gpulet mounts 64-bit files only.
const (
	CapCompute  Capability = "compute"
	CapUtility  Capability = "utility"
	CapVideo    Capability = "video"
	CapGraphics Capability = "graphics"
	CapDisplay  Capability = "display"
	CapNGX      Capability = "ngx"
	CapCompat32 Capability = "compat32"
	// capAll marks driver files that no capability list names: they are
	// mounted only when every capability is asked for ("all"), as NVIDIA's
	// CDI specs mount every file of the driver.
	capAll Capability = "all"
)

var knownCaps = []Capability{CapCompute, CapUtility, CapVideo, CapGraphics, CapDisplay, CapNGX, CapCompat32}

// Capabilities is a set of driver capabilities; the zero value asks for
// none, AllCapabilities for every one.
type Capabilities struct {
	all bool
	set map[Capability]bool
}

// AllCapabilities asks for every driver file, as NVIDIA's CDI specs give.
func AllCapabilities() Capabilities { return Capabilities{all: true} }

// ParseCapabilities reads NVIDIA_DRIVER_CAPABILITIES syntax: "all" or a
// comma-separated list of compute, utility, video, graphics, display, ngx,
// compat32. Empty means the default NVIDIA's runtime applies,
// "utility,compute". Implied capabilities are added as NVIDIA's container
// library adds them: video brings the compute libraries, display the
// graphics ones.
func ParseCapabilities(s string) (Capabilities, error) {
	if strings.TrimSpace(s) == "" {
		s = "utility,compute"
	}
	c := Capabilities{set: map[Capability]bool{}}
	for _, f := range strings.Split(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		switch {
		case f == "":
		case f == string(capAll):
			return AllCapabilities(), nil
		case slices.Contains(knownCaps, Capability(f)):
			c.set[Capability(f)] = true
		default:
			return Capabilities{}, fmt.Errorf("driver capability %q is not one of all, %s", f, joinCaps(knownCaps))
		}
	}
	if c.set[CapVideo] {
		c.set[CapCompute] = true
	}
	if c.set[CapDisplay] {
		c.set[CapGraphics] = true
	}
	return c, nil
}

func (c Capabilities) isZero() bool { return !c.all && c.set == nil }

// All reports whether every capability is asked for.
func (c Capabilities) All() bool { return c.all }

// Has reports whether files of capability k are mounted.
func (c Capabilities) Has(k Capability) bool {
	if c.all {
		return true
	}
	return k != capAll && c.set[k]
}

// any reports whether a file needed by any of ks is mounted; a file no
// list names (ks empty) only with all.
func (c Capabilities) any(ks []Capability) bool {
	if c.all {
		return true
	}
	for _, k := range ks {
		if c.Has(k) {
			return true
		}
	}
	return false
}

// String is the canonical NVIDIA_DRIVER_CAPABILITIES value.
func (c Capabilities) String() string {
	if c.all {
		return "all"
	}
	var out []Capability
	for _, k := range knownCaps {
		if c.set[k] {
			out = append(out, k)
		}
	}
	return joinCaps(out)
}

func joinCaps(ks []Capability) string {
	s := make([]string, len(ks))
	for i, k := range ks {
		s[i] = string(k)
	}
	return strings.Join(s, ",")
}

// Which capability needs which driver file. The names are facts from
// NVIDIA's container library (libnvidia-container's per-capability library
// and binary lists) and toolkit (the graphics and IPC discoverers); a
// library is named without its ".so…" suffix.
var (
	libCaps = capTable(map[Capability][]string{
		CapUtility: {"libnvidia-ml", "libnvidia-cfg", "libnvidia-nscq"},
		CapCompute: {"libcuda", "libcudadebugger", "libnvidia-opencl", "libnvidia-gpucomp", "libnvidia-ptxjitcompiler",
			"libnvidia-fatbinaryloader", "libnvidia-allocator", "libnvidia-compiler", "libnvidia-pkcs11",
			"libnvidia-pkcs11-openssl3", "libnvidia-nvvm", "libnvidia-tileiras"},
		CapVideo: {"libvdpau_nvidia", "libnvidia-encode", "libnvidia-opticalflow", "libnvcuvid"},
		CapGraphics: {"libnvidia-eglcore", "libnvidia-glcore", "libnvidia-tls", "libnvidia-glsi", "libnvidia-fbc",
			"libnvidia-ifr", "libnvidia-rtcore", "libnvoptix", "libGLX_nvidia", "libEGL_nvidia", "libGLESv2_nvidia",
			"libGLESv1_CM_nvidia", "libnvidia-glvkspirv", "libnvidia-cbl",
			// the toolkit's graphics discoverer adds these
			"libnvidia-egl-gbm", "libnvidia-egl-wayland", "libnvidia-egl-wayland2", "libnvidia-egl-xcb",
			"libnvidia-egl-xlib", "libnvidia-vulkan-producer"},
		CapDisplay: {"nvidia_drv", "libglxserver_nvidia"},
		CapNGX:     {"libnvidia-ngx"},
	})
	binCaps = capTable(map[Capability][]string{
		CapUtility:  {"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nv-fabricmanager"},
		CapCompute:  {"nvidia-cuda-mps-control", "nvidia-cuda-mps-server"},
		CapDisplay:  {"nvidia-xconfig"},
		CapGraphics: {},
	})
)

func capTable(m map[Capability][]string) map[string][]Capability {
	out := map[string][]Capability{}
	for k, names := range m {
		for _, n := range names {
			out[n] = append(out[n], k)
		}
	}
	return out
}

// libraryCaps are the capabilities that need the library file name (e.g.
// libcuda.so.550.54.15 → compute); nil when no list names it.
func libraryCaps(name string) []Capability {
	base, _, ok := strings.Cut(name, ".so")
	if !ok {
		return nil
	}
	return libCaps[base]
}
