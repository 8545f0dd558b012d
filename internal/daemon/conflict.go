package daemon

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/gpulet/gpulet/internal/metrics"
	"github.com/gpulet/gpulet/internal/plugin"
)

// ConflictEventReason is the reason of the Node Event gpulet posts when
// another device plugin serves one of its resources.
const ConflictEventReason = "DevicePluginConflict"

// conflictEventNode is the Node a conflict's Event goes on: gpulet's own
// when it runs in a pod with NODE_NAME (as node labels are), else "" (no
// Events).
func (g *gpulet) conflictEventNode() string {
	return g.cfg.ClusterNode(os.Getenv)
}

// conflictReporter tells the operator that another device plugin serves a
// resource gpulet advertises: a log line, gpulet_device_plugin_conflict and
// /readyz (degraded while held back), and a Warning Event on the Node when
// gpulet runs in a cluster (conflict_kube.go). Events are posted by run,
// off the device plugin's goroutine.
type conflictReporter struct {
	log *slog.Logger
	exp *metrics.Exporter
	// send posts one message as a Node Event; nil: no Events (not in a
	// cluster, or a build without the Kubernetes API).
	send func(ctx context.Context, msg string) error
	msgs chan string
}

func newConflictReporter(exp *metrics.Exporter, send func(context.Context, string) error, log *slog.Logger) *conflictReporter {
	return &conflictReporter{log: log, exp: exp, send: send, msgs: make(chan string, 16)}
}

// report is plugin.Options.OnConflict.
func (r *conflictReporter) report(resource string, c *plugin.Conflict) {
	if c == nil {
		r.log.Info("no other device plugin serves the resource any more", "resource", resource)
		r.exp.Conflict(resource, "", "", false, "")
		return
	}
	r.log.Warn("another device plugin serves a resource gpulet advertises", "resource", resource,
		"other_endpoint", c.Endpoint, "signal", c.Signal, "take_over", c.TakingOver, "what_to_do", c.Advice())
	r.exp.Conflict(resource, c.Endpoint, c.Signal, !c.TakingOver, c.String())
	if r.send == nil {
		return
	}
	select {
	case r.msgs <- c.String() + ". To fix: " + c.Advice():
	default:
		r.log.Warn("too many device-plugin conflict events queued; dropping one", "resource", resource)
	}
}

// run posts queued Events until ctx ends.
func (r *conflictReporter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-r.msgs:
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := r.send(pctx, msg)
			cancel()
			if err != nil {
				r.log.Warn("cannot post the device-plugin conflict as a Node Event", "err", err)
			}
		}
	}
}
