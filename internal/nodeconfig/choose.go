// Package nodeconfig picks a node's config file: NVIDIA's per-node
// configuration (its config-manager's behaviour), where a ConfigMap holds
// named v1 config files, mounted as a folder, and the Node's
// nvidia.com/device-plugin.config label names the one a node uses. Without
// a label a default name applies, else fallback strategies: named (the
// config called "default"), single (the only config), empty (no file).
//
// The package decides which file and reads it; the daemon watches the
// label, the folder and SIGHUP, and applies the settings.
package nodeconfig

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/gpulet/gpulet/internal/config"
)

// NamedDefault is the config the named fallback looks for.
const NamedDefault = "default"

// Choice is the config a node uses and why.
type Choice struct {
	// Name is the config's name; "" is the empty config (no file).
	Name string
	// Path is the file in the folder; "" for the empty config.
	Path string
	// Label is the Node label's value it was chosen from ("" when unset).
	Label string
	// Reason says how: "label", "default", or the fallback strategy.
	Reason string
}

// String names the config for logs and status: "ts4", or "(empty)".
func (c Choice) String() string {
	if c.Name == "" {
		return "(empty)"
	}
	return c.Name
}

// Names lists the configs in dir: its files, leaving out what a mounted
// ConfigMap adds (..data, ..<timestamp>) and folders.
func Names(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read the config folder: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..") {
			continue
		}
		// A ConfigMap key is a symlink into ..data: follow it.
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil || fi.IsDir() {
			continue
		}
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names, nil
}

// Choose picks the config for a Node whose label has value label, from
// names, as NVIDIA's config-manager does: the label's config (it must
// exist); without a label, def (it must exist); without def, the first
// fallback that applies. The error says what was wrong and what to do.
func Choose(label string, names []string, def string, fallbacks []string) (Choice, error) {
	if len(names) == 0 {
		return Choice{}, errors.New("no config files in the config folder: the ConfigMap has no keys")
	}
	has := func(n string) bool { return slices.Contains(names, n) }
	if label != "" {
		if !has(label) {
			return Choice{}, fmt.Errorf("the Node's label names config %q, which the ConfigMap does not have (it has %s): add it or change the label",
				label, strings.Join(names, ", "))
		}
		return Choice{Name: label, Label: label, Reason: "label"}, nil
	}
	if def != "" {
		if !has(def) {
			return Choice{}, fmt.Errorf("the default config %q is not in the ConfigMap (it has %s): add it or change the default",
				def, strings.Join(names, ", "))
		}
		return Choice{Name: def, Reason: "default"}, nil
	}
	for _, f := range fallbacks {
		switch f {
		case config.FallbackNamed:
			if has(NamedDefault) {
				return Choice{Name: NamedDefault, Reason: "fallback " + f}, nil
			}
		case config.FallbackSingle:
			if len(names) == 1 {
				return Choice{Name: names[0], Reason: "fallback " + f}, nil
			}
		case config.FallbackEmpty:
			return Choice{Reason: "fallback " + f}, nil
		default:
			return Choice{}, fmt.Errorf("unknown fallback strategy %q (want named, single or empty)", f)
		}
	}
	return Choice{}, fmt.Errorf("the Node has no label, no default config is set, and no fallback strategy (%s) applies to the configs %s: label the Node or set a default",
		strings.Join(fallbacks, ", "), strings.Join(names, ", "))
}

// Pick lists dir and chooses the config for the label's value; the
// Choice's Path is the file to read.
func Pick(dir, label, def string, fallbacks []string) (Choice, error) {
	names, err := Names(dir)
	if err != nil {
		return Choice{}, err
	}
	c, err := Choose(label, names, def, fallbacks)
	if err != nil {
		return Choice{}, err
	}
	if c.Name != "" {
		c.Path = filepath.Join(dir, c.Name)
	}
	return c, nil
}
