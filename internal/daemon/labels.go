package daemon

import (
	"context"
	"log/slog"
	"os"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/labels"
	"github.com/gpulet/gpulet/internal/labels/publish"
)

// startNodeLabels keeps the Node's labels in step with store when the config
// asks for it, until ctx ends. The returned function waits for it to stop.
func startNodeLabels(ctx context.Context, cfg *config.Config, store *inventory.Store, log *slog.Logger) (wait func(), err error) {
	on, err := cfg.PublishNodeLabels(os.Getenv)
	if err != nil || !on {
		if err == nil {
			log.Info("not labelling the node", "node_labels", cfg.Labels.NodeLabels, "node_name", cfg.Labels.NodeName)
		}
		return func() {}, err
	}
	client, err := publish.Client("")
	if err != nil {
		return nil, err
	}
	log = log.With("component", "labels")
	opts := LabelOptions(cfg)
	opts.Log = log
	p := &publish.Publisher{
		Client: client, Node: cfg.Labels.NodeName, Store: store, Log: log,
		Compute: func(s inventory.Snapshot) (labels.Labels, error) { return labels.Compute(s, opts) },
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Run(ctx) // returns only when ctx ends; errors are logged and retried
	}()
	log.Info("labelling the node", "node", cfg.Labels.NodeName)
	return func() { <-done }, nil
}

// LabelOptions are the options of labels.Compute from the settings.
func LabelOptions(c *config.Config) labels.Options {
	return labels.Options{
		Resources: ResourcesConfig(c), MachineTypeFile: c.Labels.MachineTypeFile,
		NoTimestamp: c.Labels.NoTimestamp, Extra: c.Labels.Extra,
	}
}
