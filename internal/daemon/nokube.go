//go:build nokube

package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/gpulet/gpulet/internal/config"
)

// A gpulet built with the nokube tag (make build-lean) links no Kubernetes
// API client, so no client-go, API machinery scheme or DRA helper is loaded
// and initialised: a device plugin (with metrics, health, CDI and MPS) that
// costs less than NVIDIA's. Node labels and DRA need the full gpulet.

type kubeState struct{}

var errNoKube = errors.New("this gpulet is built without the Kubernetes API (make build-lean, tag nokube); run the full gpulet")

// draDriver refuses --dra.
func (g *gpulet) draDriver() component {
	if !g.cfg.DRA.Enabled {
		return component{}
	}
	return component{name: "DRA driver", start: func(context.Context) error {
		return fmt.Errorf("--dra: %w", errNoKube)
	}}
}

// labelPublisher refuses --node-labels=on; auto means off.
func (g *gpulet) labelPublisher() component {
	return component{name: "label publisher", start: func(context.Context) error {
		on, err := g.cfg.PublishNodeLabels(os.Getenv)
		switch {
		case err != nil:
			return err
		case on && g.cfg.Labels.NodeLabels == config.NodeLabelsOn:
			return fmt.Errorf("--node-labels=on: %w", errNoKube)
		case on:
			g.log.Info("not labelling the node: this gpulet is built without the Kubernetes API", "node_labels", g.cfg.Labels.NodeLabels)
		}
		return nil
	}}
}

// nodeAPI: without the Kubernetes API per-node configuration cannot read
// the Node's label; the default and fallbacks apply, and the state is in
// the log, metrics and /readyz.
func (g *gpulet) nodeAPI() nodeAPI {
	g.log.Info("per-node config without the Node's label: this gpulet is built without the Kubernetes API; the default and fallbacks apply", "component", "nodeconfig")
	return nil
}
