//go:build nokube

package daemon

import (
	"context"
	"fmt"
	"os/exec"
	"strings"

	"github.com/gpulet/gpulet/internal/kubebin"
)

// kubeBinary is the full build; a test points it at a fake.
var kubeBinary = kubebin.Path

// conflictEvents: a build without the Kubernetes API posts a conflict's
// Node Event through the full build installed beside it (the image's
// /usr/lib/gpulet/gpulet-kube), run once per Event as `gpulet-kube
// node-event`, so the API client costs memory only while an Event is
// posted. Without it there are no Events; the log, /readyz and the metric
// still report conflicts.
func (g *gpulet) conflictEvents() func(context.Context, string) error {
	node := g.conflictEventNode()
	if node == "" {
		return nil
	}
	bin, err := kubeBinary()
	if err != nil {
		g.log.Info("device-plugin conflicts will not be posted as Node Events", "err", err)
		return nil
	}
	return func(ctx context.Context, msg string) error {
		out, err := exec.CommandContext(ctx, bin, "node-event", "--node-name="+node, "--message="+msg).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s node-event: %w: %s", bin, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
}
