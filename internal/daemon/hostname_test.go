package daemon

import (
	"log/slog"
	"testing"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/version"
)

// The metrics' Hostname label is the node's name (NODE_NAME), as
// dcgm-exporter's, not the pod's hostname (its own name).
func TestMetricsHostnameIsTheNodeName(t *testing.T) {
	g, err := newGpulet(&config.Config{Labels: config.LabelConfig{NodeName: "gpu-node-7"}}, nil, slog.New(slog.DiscardHandler), version.Info{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if got := g.exp.Hostname(); got != "gpu-node-7" {
		t.Errorf("Hostname label %q, want the node name gpu-node-7", got)
	}
}
