//go:build !nokube

package daemon

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/gpulet/gpulet/internal/metrics"
	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/waittest"
)

// A conflict becomes a Warning Event on the Node naming the other endpoint
// and what to do; a cleared one posts nothing.
func TestConflictPostsANodeEvent(t *testing.T) {
	client := fake.NewClientset()
	r := newConflictReporter(metrics.New(metrics.Options{}), func(ctx context.Context, msg string) error {
		return PostNodeEvent(ctx, client, "gpu-node-1", "Warning", ConflictEventReason, msg)
	}, slog.New(slog.DiscardHandler))
	r.report("nvidia.com/gpu", &plugin.Conflict{Resource: "nvidia.com/gpu", Endpoint: "nvidia-gpu.sock", Signal: "socket"})
	r.report("nvidia.com/gpu", nil)
	if n := len(r.msgs); n != 1 {
		t.Fatalf("%d Events queued, want 1 (none for the cleared conflict)", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.run(ctx) }()
	defer func() { cancel(); <-done }()
	var evs []corev1.Event
	waittest.UntilSays(t, 5*time.Second, "an Event posted", func() (bool, string) {
		l, err := client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		evs = l.Items
		return len(evs) > 0, "no Event"
	})
	ev := evs[0]
	if ev.InvolvedObject.Kind != "Node" || ev.InvolvedObject.Name != "gpu-node-1" || ev.Reason != ConflictEventReason ||
		ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Message, "nvidia-gpu.sock") || !strings.Contains(ev.Message, "take-over") {
		t.Errorf("Event %+v", ev)
	}
}
