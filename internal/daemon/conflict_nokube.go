//go:build nokube

package daemon

import "context"

// conflictEvents: a build without the Kubernetes API posts no Events; the
// log, /readyz and the metric still report conflicts.
func (g *gpulet) conflictEvents() func(context.Context, string) error { return nil }
