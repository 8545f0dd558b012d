//go:build !nokube

package daemon

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// conflictEvents posts conflicts as Events on this Node when gpulet runs in
// a pod with NODE_NAME (as node labels do); the client is made at the first
// Event, so a node without conflicts makes none.
func (g *gpulet) conflictEvents() func(context.Context, string) error {
	node := g.conflictEventNode()
	if node == "" {
		return nil
	}
	return func(ctx context.Context, msg string) error {
		c, err := g.kubeClient()
		if err != nil {
			return fmt.Errorf("no Kubernetes client: %w", err)
		}
		return PostNodeEvent(ctx, c, node, corev1.EventTypeWarning, ConflictEventReason, msg)
	}
}

// PostNodeEvent posts an Event on node, as the kubelet names its own: in
// the default namespace, the node's name as its UID. The daemon calls it,
// and so does `gpulet node-event`, which the image's entry point (built
// without the Kubernetes API) runs to post a device-plugin conflict.
func PostNodeEvent(ctx context.Context, c kubernetes.Interface, node, typ, reason, msg string) error {
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: node + ".", Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: node, UID: types.UID(node)},
		Reason:         reason, Message: msg, Type: typ,
		Source:         corev1.EventSource{Component: "gpulet", Host: node},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	_, err := c.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{})
	return err
}
