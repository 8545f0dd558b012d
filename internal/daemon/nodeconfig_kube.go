//go:build !nokube

package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// nodeAPI is the Node per-node configuration reads and reports on, when
// gpulet runs in a pod with NODE_NAME (as node labels); nil otherwise.
func (g *gpulet) nodeAPI() nodeAPI {
	node := g.cfg.ClusterNode(os.Getenv)
	if node == "" {
		g.log.Info("per-node config without the Node's label: not in a cluster (NODE_NAME or the API server unknown); the default and fallbacks apply",
			"component", "nodeconfig")
		return nil
	}
	c, err := g.kubeClient()
	if err != nil {
		g.log.Error("per-node config without the Node's label: no Kubernetes client; the default and fallbacks apply", "component", "nodeconfig", "err", err)
		return nil
	}
	return &kubeNode{client: c, node: node, label: g.cfg.NodeConfig.Label, log: g.log.With("component", "nodeconfig")}
}

// kubeNode reads the Node's label with get and an informer on the Node
// alone (list and watch with a metadata.name field selector), and writes
// its annotations with a merge patch only when they differ from the
// Node's: nothing is written while nothing changes.
type kubeNode struct {
	client kubernetes.Interface
	node   string
	label  string
	log    *slog.Logger

	mu   sync.Mutex
	seen map[string]string // the Node's annotations, as last read
}

func (k *kubeNode) saw(n *corev1.Node) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.seen = map[string]string{}
	for key, v := range n.Annotations {
		k.seen[key] = v
	}
}

func (k *kubeNode) Label(ctx context.Context) (string, error) {
	n, err := k.client.CoreV1().Nodes().Get(ctx, k.node, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read Node %s (gpulet's service account needs get on nodes): %w", k.node, err)
	}
	k.saw(n)
	return n.Labels[k.label], nil
}

func (k *kubeNode) Watch(ctx context.Context, changed func(string)) error {
	sel := fields.OneTermEqualSelector("metadata.name", k.node).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return k.client.CoreV1().Nodes().List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return k.client.CoreV1().Nodes().Watch(ctx, o)
		},
	}
	seen := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok && n.Name == k.node {
			k.saw(n)
			changed(n.Labels[k.label])
		}
	}
	_, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{
		// The client says whether it can stream the initial list (a fake cannot).
		ListerWatcher: cache.ToListWatcherWithWatchListSemantics(lw, k.client), ObjectType: &corev1.Node{},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    seen,
			UpdateFunc: func(_, n any) { seen(n) },
		},
	})
	ctrl.RunWithContext(ctx)
	return nil
}

func (k *kubeNode) Annotate(ctx context.Context, want map[string]string) error {
	k.mu.Lock()
	same := k.seen != nil
	for key, v := range want {
		if k.seen[key] != v {
			same = false
		}
	}
	k.mu.Unlock()
	if same {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": want}})
	if err != nil {
		return err
	}
	n, err := k.client.CoreV1().Nodes().Patch(ctx, k.node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "gpulet"})
	if err != nil {
		return fmt.Errorf("annotate Node %s: %w", k.node, err)
	}
	k.saw(n)
	return nil
}

func (k *kubeNode) Event(ctx context.Context, warning bool, reason, msg string) error {
	typ := corev1.EventTypeNormal
	if warning {
		typ = corev1.EventTypeWarning
	}
	return PostNodeEvent(ctx, k.client, k.node, typ, reason, msg)
}
