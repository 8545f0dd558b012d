package daemon

import (
	"context"
	"log/slog"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/metrics"
	"github.com/gpulet/gpulet/internal/plugin"
)

// ConflictEventReason is the reason of the Node Event gpulet posts when
// another device plugin serves one of its resources.
const ConflictEventReason = "DevicePluginConflict"

// conflictReporter tells the operator that another device plugin serves a
// resource gpulet advertises: a log line, gpulet_device_plugin_conflict and
// /readyz (degraded while held back), and a Warning Event on the Node when
// gpulet runs in a cluster. Events are posted by run, off the device
// plugin's goroutine.
type conflictReporter struct {
	log    *slog.Logger
	exp    *metrics.Exporter
	client kubernetes.Interface // nil: no Events
	node   string
	events chan *corev1.Event
}

// newConflictReporter posts Events when NODE_NAME is set in a pod (as
// node labels do); elsewhere it only logs and records.
func newConflictReporter(cfg *config.Config, exp *metrics.Exporter, client func() (kubernetes.Interface, error), log *slog.Logger) *conflictReporter {
	r := &conflictReporter{log: log, exp: exp, node: cfg.Labels.NodeName, events: make(chan *corev1.Event, 16)}
	if r.node != "" && os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		c, err := client()
		if err != nil {
			log.Warn("no Kubernetes client: device-plugin conflicts are logged but not posted as Node Events", "err", err)
		} else {
			r.client = c
		}
	}
	return r
}

// report is plugin.Options.OnConflict.
func (r *conflictReporter) report(resource string, c *plugin.Conflict) {
	if c == nil {
		r.log.Info("no other device plugin serves the resource any more", "resource", resource)
		r.exp.Conflict(resource, "", "", false, "")
		return
	}
	msg := c.String() + ". To fix: " + c.Advice()
	r.log.Warn("another device plugin serves a resource gpulet advertises", "resource", resource,
		"other_endpoint", c.Endpoint, "signal", c.Signal, "take_over", c.TakingOver, "what_to_do", c.Advice())
	r.exp.Conflict(resource, c.Endpoint, c.Signal, !c.TakingOver, c.String())
	if r.client == nil {
		return
	}
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: r.node + ".", Namespace: metav1.NamespaceDefault},
		// A Node's events name it by name, with its name as UID (as the
		// kubelet's own).
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: r.node, UID: types.UID(r.node)},
		Reason:         ConflictEventReason, Message: msg, Type: corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: "gpulet", Host: r.node},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	select {
	case r.events <- ev:
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
		case ev := <-r.events:
			if r.client == nil {
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := r.client.CoreV1().Events(ev.Namespace).Create(pctx, ev, metav1.CreateOptions{})
			cancel()
			if err != nil {
				r.log.Warn("cannot post the device-plugin conflict as a Node Event", "node", r.node, "err", err)
			}
		}
	}
}
