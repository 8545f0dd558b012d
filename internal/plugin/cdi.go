package plugin

import (
	"slices"

	"github.com/gpulet/gpulet/internal/cdispec"
)

// DefaultCDIKind is the kind of the CDI names Allocate hands out unless
// Options.CDIKind says otherwise: NVIDIA's plugin's, which is the kind of
// the spec `gpulet run` writes.
const DefaultCDIKind = cdispec.PluginKind

// UsesCDI reports whether a device-list strategy hands out CDI names, so
// a spec must exist that resolves them.
func UsesCDI(strategies []string) bool {
	return slices.Contains(strategies, StrategyCDIAnnotations) || slices.Contains(strategies, StrategyCDICRI)
}
