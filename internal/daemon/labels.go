//go:build !nokube

package daemon

import (
	"context"
	"log/slog"
	"os"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/kube"
	"github.com/gpulet/gpulet/internal/labels"
	"github.com/gpulet/gpulet/internal/labels/publish"
)

// labelPublisher keeps the Node's labels in step with the inventory when
// the config asks for it, until stopped.
func (g *gpulet) labelPublisher() component {
	var p *publish.Publisher
	return component{
		name: "label publisher",
		start: func(ctx context.Context) error {
			on, err := g.cfg.PublishNodeLabels(os.Getenv)
			if err != nil || !on {
				if err == nil {
					g.log.Info("not labelling the node", "node_labels", g.cfg.Labels.NodeLabels, "node_name", g.cfg.Labels.NodeName)
				}
				return err
			}
			client, err := g.kubeClient()
			if err != nil {
				return err
			}
			log := g.log.With("component", "labels")
			target, err := labelTarget(ctx, g.cfg, client, func() (dynamic.Interface, error) { return kube.DynamicClient("") }, log)
			if err != nil {
				return err
			}
			opts := LabelOptions(g.cfg)
			opts.Log = log
			p = &publish.Publisher{
				Target: target, Store: g.store, Log: log, CheckPolicy: true,
				Compute: func(s inventory.Snapshot) (labels.Labels, error) { return labels.Compute(s, opts) },
			}
			log.Info("labelling the node", "node", g.cfg.Labels.NodeName, "target", target.String())
			return nil
		},
		run: func(ctx context.Context) error {
			if p == nil {
				return nil
			}
			return p.Run(ctx) // returns only when ctx ends; errors are logged and retried
		},
	}
}

// labelTarget is the Node, or with useNodeFeatureAPI the node's NodeFeature
// in gpulet's namespace, owned by gpulet's DaemonSet when the pod's can be
// read (else the object outlives an uninstall: `gpulet labels --remove`).
func labelTarget(ctx context.Context, cfg *config.Config, client kubernetes.Interface, newDynamic func() (dynamic.Interface, error), log *slog.Logger) (publish.Target, error) {
	id := Identity(cfg)
	if !cfg.Labels.NodeFeatureAPI {
		return publish.NodeTarget{Client: client, Node: id.Node}, nil
	}
	ns, err := kube.Namespace(id.Namespace, "")
	if err != nil {
		return nil, err
	}
	dyn, err := newDynamic()
	if err != nil {
		return nil, err
	}
	t := &publish.NodeFeatureTarget{Client: dyn, Namespace: ns, Node: id.Node}
	switch {
	case id.Pod == "":
		log.Warn("the NodeFeature gets no owner, so uninstalling gpulet will not delete it: set POD_NAME (downward API metadata.name)")
	default:
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		t.Owner, err = kube.DaemonSetOwner(octx, client, ns, id.Pod)
		cancel()
		if err != nil {
			log.Warn("the NodeFeature gets no owner, so uninstalling gpulet will not delete it", "err", err)
		} else if t.Owner == nil {
			log.Info("gpulet's pod has no DaemonSet: the NodeFeature gets no owner", "pod", id.Pod)
		}
	}
	return t, nil
}

// Identity is who gpulet is in the cluster, from the settings.
func Identity(c *config.Config) kube.Identity {
	return kube.Identity{Node: c.Labels.NodeName, Pod: c.Labels.PodName, Namespace: c.Labels.Namespace}
}
