package doctor

import (
	"fmt"
	"slices"
	"strings"

	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpulet/gpulet/internal/cdispec"
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
