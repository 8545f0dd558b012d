package config

// Node-label settings: gpulet's own (gpulet.labels in the file) and the
// ones of GPU Feature Discovery's flags.gfd that mean something to gpulet.
// Kept in this file so the rest of the config stays as it was.

import (
	"fmt"

	"github.com/spf13/pflag"
)

// DefaultMachineTypeFile is where GFD reads the machine type
// (labels.DefaultMachineTypeFile; the daemon's tests check they agree).
const DefaultMachineTypeFile = "/sys/class/dmi/id/product_name"

// Node-label publishing modes.
const (
	NodeLabelsAuto = "auto" // on when in a pod (KUBERNETES_SERVICE_HOST) with NODE_NAME set
	NodeLabelsOn   = "on"   // on; failing to label the node is logged and retried
	NodeLabelsOff  = "off"
)

// LabelConfig is how gpulet labels its node.
type LabelConfig struct {
	NodeLabels      string // auto, on, off
	NodeName        string
	Extra           map[string]string
	MachineTypeFile string
	NoTimestamp     bool
	OutputFile      string // `gpulet labels` only
	// NodeFeatureAPI publishes the labels as an NFD NodeFeature object
	// (GFD's useNodeFeatureAPI) instead of patching the Node.
	NodeFeatureAPI bool
	// Namespace is where the NodeFeature lives: gpulet's own (downward API
	// metadata.namespace); empty means the service account's namespace.
	Namespace string
	// PodName is gpulet's pod, whose DaemonSet becomes the NodeFeature's
	// owner so that uninstalling gpulet garbage-collects it.
	PodName string
}

// labelsFile is gpulet.labels in the config file.
type labelsFile struct {
	Node  *string           `json:"node,omitempty"` // auto, on, off
	Extra map[string]string `json:"extra,omitempty"`
}

// gfdFlags is GPU Feature Discovery's flags.gfd (nvidia.go decodes it
// strictly, so a typo there is an error).
type gfdFlags struct {
	Oneshot         *bool   `json:"oneshot,omitempty"`
	NoTimestamp     *bool   `json:"noTimestamp,omitempty"`
	SleepInterval   *string `json:"sleepInterval,omitempty"`
	OutputFile      *string `json:"outputFile,omitempty"`
	MachineTypeFile *string `json:"machineTypeFile,omitempty"`
}

func (f *File) gfd() gfdFlags {
	if f.Flags.GFD == nil {
		return gfdFlags{}
	}
	return *f.Flags.GFD
}

// gfdNotes lists the flags.gfd fields gpulet reads but does not act on.
func (f *File) gfdNotes() []string {
	g := f.gfd()
	var out []string
	if g.Oneshot != nil {
		out = append(out, "flags.gfd.oneshot (`gpulet labels --output-file` labels once; the daemon labels on change)")
	}
	if g.SleepInterval != nil {
		out = append(out, "flags.gfd.sleepInterval (gpulet relabels on change, not periodically)")
	}
	return out
}

// LabelFlags adds the settings that shape the node's labels. daemon adds the
// ones about publishing them on the Node, else the output file of `gpulet
// labels`.
func (c *Config) LabelFlags(fs *pflag.FlagSet, daemon bool) {
	if daemon {
		c.addFlags(fs, groupLabels, groupLabelsRun)
		return
	}
	c.addFlags(fs, groupLabels, groupLabelsFile)
}

// ClusterNode is the Node gpulet runs on when it runs in a pod of a cluster
// (NODE_NAME, or --node-name, and the API server's in-cluster variable),
// else "": node labels on auto, per-node config's label and Node Events
// need both.
func (c *Config) ClusterNode(getenv func(string) string) string {
	if getenv("KUBERNETES_SERVICE_HOST") == "" {
		return ""
	}
	return c.Labels.NodeName
}

// PublishNodeLabels decides whether the daemon labels its Node. getenv is
// os.Getenv outside tests.
func (c *Config) PublishNodeLabels(getenv func(string) string) (bool, error) {
	switch c.Labels.NodeLabels {
	case NodeLabelsOff:
		return false, nil
	case NodeLabelsOn:
		if c.Labels.NodeName == "" {
			return false, fmt.Errorf("node-labels=on needs the node's name: set NODE_NAME (downward API spec.nodeName) or --node-name")
		}
		return true, nil
	case "", NodeLabelsAuto:
		return c.ClusterNode(getenv) != "", nil
	}
	return false, fmt.Errorf("node-labels %q is not one of auto, on, off", c.Labels.NodeLabels)
}

func (c *Config) validateLabels() error {
	switch c.Labels.NodeLabels {
	case "", NodeLabelsAuto, NodeLabelsOn, NodeLabelsOff:
	default:
		return fmt.Errorf("node-labels %q is not one of auto, on, off", c.Labels.NodeLabels)
	}
	return nil // extra-labels are checked by daemon.Validate, which knows label syntax
}
