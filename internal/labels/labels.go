// Package labels owns the node labels gpulet computes: the labels NVIDIA's
// GPU Feature Discovery (GFD) writes, with GFD's keys and values, derived
// from gpulet's inventory and resource config, plus configured static labels.
// It is pure apart from reading the machine-type file and, for the GPU mode
// of NVML nodes, the PCI class in sysfs. Publishing them lives in
// internal/labels/publish.
//
// Like GFD, labels come from small labelers, each returning a map; the maps
// are merged in order and a later labeler wins a key.
package labels

import (
	"bytes"
	"fmt"
	"github.com/gpulet/gpulet/internal/atomicfile"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// Labels is a set of node labels.
type Labels map[string]string

// TimestampKey is GFD's timestamp label. The publisher treats it apart: it
// changes on every computation, so it is only rewritten with other changes.
const TimestampKey = "nvidia.com/gfd.timestamp"

// DefaultMachineTypeFile is where GFD reads the machine type (DMI product name).
const DefaultMachineTypeFile = "/sys/class/dmi/id/product_name"

// Options are the settings labels depend on besides the inventory.
type Options struct {
	Resources resources.Config
	// MachineTypeFile holds the machine type (GFD's machineTypeFile); ""
	// labels the machine "unknown".
	MachineTypeFile string
	NoTimestamp     bool
	// Extra are static labels added as given (e.g. accelerator=nvidia); they
	// win over computed labels of the same key.
	Extra map[string]string
	// SysfsRoot is where PCI classes are read for GPUs whose backend did not
	// report one; default /sys.
	SysfsRoot string
	Now       func() time.Time
	Log       *slog.Logger
}

// Compute returns the labels of a node, as GFD would label it with the same
// MIG strategy and sharing config, plus the extra labels.
func Compute(snap inventory.Snapshot, opts Options) (Labels, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	var parts []Labels
	if snap.Node != nil && len(snap.Node.GPUs) > 0 {
		versions, err := versionLabels(snap.Node)
		if err != nil {
			return nil, err
		}
		parts = append(parts,
			machineTypeLabels(opts.MachineTypeFile, opts.Log),
			versions,
			migCapableLabels(snap.Node),
			// GFD: true when the sharing config shares through MPS.
			Labels{"nvidia.com/mps.capable": strconv.FormatBool(opts.Resources.MPS && len(opts.Resources.Shares) > 0)},
			resourceLabels(snap.Node, opts.Resources, opts.Log),
			gpuModeLabels(snap.Node, opts.SysfsRoot, opts.Log),
			cliqueLabels(snap.Node, opts.Log),
			vgpuLabels(snap.Node, opts.SysfsRoot, opts.Log),
		)
	}
	if !opts.NoTimestamp {
		parts = append(parts, Labels{TimestampKey: fmt.Sprint(opts.Now().Unix())})
	}
	parts = append(parts, Labels(opts.Extra))
	out := merge(parts...)
	if err := out.Validate(); err != nil {
		return nil, err
	}
	return out, nil
}

// merge combines label sets; later sets win a key.
func merge(sets ...Labels) Labels {
	out := Labels{}
	for _, s := range sets {
		for k, v := range s {
			out[k] = v
		}
	}
	return out
}

// Validate checks every key and value against Kubernetes' label syntax, so a
// bad extra label or product name fails here and not at the API server.
func (l Labels) Validate() error {
	for _, k := range l.Keys() {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return fmt.Errorf("label key %q is invalid: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(l[k]); len(errs) > 0 {
			return fmt.Errorf("label %s=%q has an invalid value: %s", k, l[k], strings.Join(errs, "; "))
		}
	}
	return nil
}

// Keys returns the keys, sorted.
func (l Labels) Keys() []string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Format writes the labels as GFD's features file does, key=value per line,
// sorted so the output is stable.
func (l Labels) Format(w io.Writer) error {
	for _, k := range l.Keys() {
		if _, err := fmt.Fprintf(w, "%s=%s\n", k, l[k]); err != nil {
			return err
		}
	}
	return nil
}

// WriteFile writes the labels to path atomically (temporary file, then
// rename), so NFD's local source never reads half a file.
func (l Labels) WriteFile(path string) error {
	var buf bytes.Buffer
	if err := l.Format(&buf); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create the folder of the labels file: %w", err)
	}
	if err := atomicfile.Write(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write labels file: %w", err)
	}
	return nil
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9\-_. ]`)

// sanitise makes a product or machine name a label value as GFD does: drop
// characters other than letters, digits, '-', '_', '.', and join words with '-'.
func sanitise(s string) string {
	return strings.Join(strings.Fields(unsafeChars.ReplaceAllString(s, "")), "-")
}
