package cdispec

import (
	"path"
	"path/filepath"
	"slices"
	"strings"

	specs "tags.cncf.io/container-device-interface/specs-go"
)

// Hooks is NVIDIA's hook binary on the node (nvidia-cdi-hook, or
// nvidia-ctk's hook subcommand). With it a spec carries NVIDIA's hooks and
// mounts as `nvidia-ctk cdi generate` writes them; without it (nil) the
// spec is hook-free: every name a library has is a bind mount of its own.
type Hooks struct {
	// Path is the hook binary's path on the host, as the runtime runs it.
	Path string
}

// Names of NVIDIA's hooks, as nvidia-cdi-hook takes them.
const (
	HookCreateSymlinks         = "create-symlinks"
	HookEnableCUDACompat       = "enable-cuda-compat"
	HookUpdateLDCache          = "update-ldcache"
	HookDisableDeviceNodeMod   = "disable-device-node-modification"
	HookUpdateAppProfile       = "update-application-profile"
	HookApplyCUDAMemoryLimits  = "apply-cuda-memory-limits"
	DefaultHookPath            = "/usr/bin/nvidia-cdi-hook"
	voidDevicesContainerPath   = "/var/run/nvidia-container-devices/void"
	libCUDADirEnv              = "NVIDIA_CTK_LIBCUDA_DIR"
	hookDebugEnv               = "NVIDIA_CTK_DEBUG=false"
	createContainer, createRun = "createContainer", "createRuntime"
)

// HookFreeLacks says what a container does not get from a hook-free spec
// that NVIDIA's hooks would give it; for the log and `gpulet doctor`.
const HookFreeLacks = "no CUDA forward compatibility (enable-cuda-compat), no ld cache update in the container " +
	"(update-ldcache: libraries load only from folders the image's loader already searches, e.g. the host's " +
	"/usr/lib/x86_64-linux-gnu is searched by Debian and Ubuntu images, not by RHEL-based ones), no disable-device-node-modification, no " +
	"update-application-profile and no per-GPU apply-cuda-memory-limits"

func (h *Hooks) hook(when string, name string, args ...string) *specs.Hook {
	argv := []string{filepath.Base(h.Path)}
	if filepath.Base(h.Path) == "nvidia-ctk" {
		argv = append(argv, "hook")
	}
	return &specs.Hook{HookName: when, Path: h.Path, Args: append(append(argv, name), args...), Env: []string{hookDebugEnv}}
}

// deviceHooks are the edits a device gets of its own in hook mode.
func deviceHooks(o Options, driverRoot, uuid string) []*specs.Hook {
	if o.Hooks == nil || o.Driver == nil {
		return nil
	}
	return []*specs.Hook{o.Hooks.hook(createRun, HookApplyCUDAMemoryLimits, "--driver-root", driverRoot, "--gpu-id", uuid)}
}

var (
	mountOpts = []string{"ro", "nosuid", "nodev", "rbind", "rprivate"}
	ipcOpts   = []string{"nosuid", "nodev", "rbind", "rprivate", "noexec"}
)

// driverEdits are the node-wide edits of the driver's files for the
// capabilities asked: mounts, and in hook mode NVIDIA's hooks and env.
func driverEdits(o Options) (mounts []*specs.Mount, hooks []*specs.Hook, env []string) {
	d := o.Driver
	if d == nil {
		return nil, nil, nil
	}
	caps := o.Capabilities
	if caps.isZero() {
		caps = AllCapabilities()
	}
	files := d.Select(caps)
	mount := func(host, container string, k FileKind) {
		opts := mountOpts
		if k == KindIPC {
			opts = ipcOpts
		}
		mounts = append(mounts, &specs.Mount{HostPath: host, ContainerPath: container, Options: slices.Clone(opts)})
	}
	var graphicsLinks, links, ldFolders, cudaDirs []string
	hasCompute := false
	for _, f := range files {
		mount(f.HostPath, f.ContainerPath, f.Kind)
		dir := path.Dir(f.ContainerPath)
		if f.LDCache {
			if !slices.Contains(ldFolders, dir) {
				ldFolders = append(ldFolders, dir)
			}
		}
		if strings.HasPrefix(path.Base(f.ContainerPath), "libcuda.so.") {
			hasCompute = true
			if !slices.Contains(cudaDirs, dir) {
				cudaDirs = append(cudaDirs, dir)
			}
		}
		if o.Hooks == nil {
			// Hook-free: the soname (which ldconfig would make) and every
			// link NVIDIA's hook would make are mounts of the file itself.
			names := []string{}
			if f.Kind == KindLibrary && f.Soname != "" && f.Soname != path.Base(f.ContainerPath) {
				names = append(names, path.Join(dir, f.Soname))
			}
			for _, l := range f.Links {
				names = append(names, l.Path)
			}
			for _, n := range names {
				if n != f.ContainerPath && !slices.ContainsFunc(mounts, func(m *specs.Mount) bool { return m.ContainerPath == n }) {
					mount(f.HostPath, n, f.Kind)
				}
			}
			continue
		}
		for _, l := range f.Links {
			if l.Graphics {
				graphicsLinks = append(graphicsLinks, "--link", l.arg())
			} else {
				links = append(links, "--link", l.arg())
			}
		}
	}
	// /dev/null over the legacy runtime's device list, as NVIDIA's specs
	// do, so a legacy hook on the node injects nothing on top.
	mounts = append(mounts, &specs.Mount{HostPath: "/dev/null", ContainerPath: voidDevicesContainerPath,
		Options: []string{"ro", "nosuid", "nodev", "bind"}})
	if o.Hooks == nil {
		return mounts, nil, nil
	}
	h := o.Hooks
	if len(graphicsLinks) > 0 {
		hooks = append(hooks, h.hook(createContainer, HookCreateSymlinks, graphicsLinks...))
	}
	if len(links) > 0 {
		hooks = append(hooks, h.hook(createContainer, HookCreateSymlinks, links...))
	}
	if hasCompute {
		hooks = append(hooks, h.hook(createContainer, HookEnableCUDACompat, "--host-driver-version="+d.Version))
	}
	if len(ldFolders) > 0 {
		var args []string
		for _, f := range ldFolders {
			args = append(args, "--folder", f)
		}
		hooks = append(hooks, h.hook(createContainer, HookUpdateLDCache, args...))
	}
	hooks = append(hooks, h.hook(createContainer, HookDisableDeviceNodeMod))
	if caps.Has(CapGraphics) {
		hooks = append(hooks, h.hook(createContainer, HookUpdateAppProfile))
	}
	if len(cudaDirs) > 0 {
		env = append(env, libCUDADirEnv+"="+strings.Join(cudaDirs, ":"))
	}
	return mounts, hooks, env
}

// Mode is the log's word for the spec's kind.
func (o Options) Mode() string {
	if o.Hooks != nil {
		return "hooks (" + o.Hooks.Path + ")"
	}
	return "hook-free"
}
