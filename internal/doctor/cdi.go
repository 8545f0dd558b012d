package doctor

import (
	"fmt"
	"slices"
	"strings"

	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/resources"
)

// Skip is a check that does not apply to this configuration.
const Skip Status = "SKIP"

// CDIInput is what the CDI check needs of gpulet's configuration.
type CDIInput struct {
	Strategies []string // device-list strategies
	IDStrategy string   // device-ID strategy
	SpecDir    string   // where `gpulet run` writes its spec
	Resources  resources.Config
	// SpecDirs are the folders the runtime reads; default cdi.DefaultSpecDirs.
	SpecDirs []string
	// Writer returns the writer of gpulet's specs for the backend (the
	// driver files, capabilities and hook mode they get); nil skips that
	// check.
	Writer func(hardware.Backend) *cdispec.Writer
}

// cdiDriver says what the driver part of gpulet's CDI specs gives a
// container: which mode, how many files for which capabilities, and in
// hook-free mode what that mode lacks.
func cdiDriver(backend hardware.Backend, node *inventory.Node, in CDIInput) Finding {
	const check = "CDI driver files"
	if in.Writer == nil || backend == nil || node == nil {
		return Finding{check, Skip, "skipped: no GPUs discovered", ""}
	}
	w := in.Writer(backend)
	o, err := w.Resolved(node)
	if err != nil {
		return Finding{check, Fail, err.Error(), "fix --cdi-driver-capabilities, --cdi-hooks or --nvidia-cdi-hook-path"}
	}
	if o.Driver == nil {
		return Finding{check, Warn, fmt.Sprintf("no driver files under %s: containers get the device nodes only", w.DriverRoot),
			"set --nvidia-driver-root (NVIDIA_DRIVER_ROOT) to the root the driver is installed under, as gpulet sees it"}
	}
	caps := o.Capabilities
	files := o.Driver.Select(caps)
	detail := fmt.Sprintf("%d driver files under %s for capabilities %s", len(files), o.Driver.Root, caps.String())
	if len(o.Driver.Missing) > 0 {
		detail += "; missing " + strings.Join(o.Driver.Missing, ", ")
	}
	if o.Hooks != nil {
		return Finding{check, OK, detail + "; hook mode (" + o.Hooks.Path + "): NVIDIA's hooks link sonames, enable CUDA forward compatibility and update the container's ld cache", ""}
	}
	return Finding{check, Warn, detail + "; hook-free mode (every library name is a bind mount): " + cdispec.HookFreeLacks,
		"for NVIDIA's hooks install NVIDIA's container toolkit on the node and let gpulet see nvidia-cdi-hook at its host path, or force them with --cdi-hooks=on --nvidia-cdi-hook-path=<host path>"}
}

// cdiSpec checks that every device gpulet advertises resolves, as the
// runtime will resolve the names Allocate hands out.
func cdiSpec(node *inventory.Node, in CDIInput) Finding {
	const check = "CDI spec"
	if !plugin.UsesCDI(in.Strategies) {
		return Finding{check, Skip, fmt.Sprintf("skipped: device-list strategy %s hands out no CDI names",
			strings.Join(in.Strategies, ",")), ""}
	}
	if node == nil {
		return Finding{check, Skip, "skipped: no GPUs discovered, so no names to resolve", ""}
	}
	dirs := in.SpecDirs
	if len(dirs) == 0 {
		dirs = cdi.DefaultSpecDirs
	}
	if in.SpecDir != "" && !slices.Contains(dirs, in.SpecDir) {
		dirs = append(slices.Clone(dirs), in.SpecDir)
	}
	names, errs := cdispec.Resolve(dirs...)
	var want, missing []string
	for _, r := range resources.Build(inventory.Snapshot{Node: node}, in.Resources) {
		for _, d := range r.Devices {
			id := d.UUID
			if in.IDStrategy == plugin.IDStrategyIndex {
				id = d.Index
			}
			n := plugin.DefaultCDIKind + "=" + id
			if !slices.Contains(want, n) {
				want = append(want, n)
			}
		}
	}
	for _, n := range want {
		if _, found := slices.BinarySearch(names, n); !found {
			missing = append(missing, n)
		}
	}
	var broken []string
	for path, es := range errs {
		broken = append(broken, fmt.Sprintf("%s: %v", path, es[0]))
	}
	slices.Sort(broken)
	if len(missing) > 0 {
		detail := fmt.Sprintf("%d of %d advertised devices do not resolve in %s: %s", len(missing), len(want),
			strings.Join(dirs, ", "), strings.Join(missing, ", "))
		if len(broken) > 0 {
			detail += "; specs that do not load: " + strings.Join(broken, "; ")
		}
		return Finding{check, Fail, detail,
			"`gpulet run` writes the spec when it starts with a cdi-* strategy; check it runs with the same --cdi-spec-dir and --device-id-strategy, and that the container runtime reads that folder (containerd: enable_cdi, cdi_spec_dirs)"}
	}
	f := Finding{check, OK, fmt.Sprintf("all %d advertised devices resolve (%s)", len(want), strings.Join(dirs, ", ")), ""}
	if len(broken) > 0 {
		f.Status = Warn
		f.Detail += "; specs that do not load: " + strings.Join(broken, "; ")
		f.Fix = "the runtime ignores a spec it cannot load; fix or remove it"
	}
	return f
}
