package config

// Per-node configuration: NVIDIA's config-manager settings (a folder of
// named config files, the mounted ConfigMap, and the Node label that picks
// one), and resolving the settings again with another file when the choice
// changes. Package nodeconfig picks the file; the daemon applies it.

import (
	"errors"
	"fmt"
	"slices"

	"github.com/spf13/pflag"
)

// DefaultNodeConfigLabel is the Node label that names a node's config
// (NVIDIA's config-manager's default, NODE_LABEL).
const DefaultNodeConfigLabel = "nvidia.com/device-plugin.config"

// Fallback strategies when the Node has no label and no default config is
// set, as NVIDIA's config-manager names them.
const (
	FallbackNamed  = "named"  // the config called "default"
	FallbackSingle = "single" // the only config
	FallbackEmpty  = "empty"  // no config file: flags, environment and defaults
)

// NodeConfigSettings are the per-node configuration settings.
type NodeConfigSettings struct {
	// Dir holds one config file per name (a ConfigMap mounted as a
	// volume); empty turns per-node configuration off.
	Dir string
	// Label is the Node label whose value names the config.
	Label string
	// Default is the config used when the Node has no label ("" tries
	// Fallbacks).
	Default   string
	Fallbacks []string
}

// validateNodeConfig checks the per-node configuration settings.
func (c *Config) validateNodeConfig() error {
	var errs []error
	for _, f := range c.NodeConfig.Fallbacks {
		if !slices.Contains([]string{FallbackNamed, FallbackSingle, FallbackEmpty}, f) {
			errs = append(errs, fmt.Errorf("fallback-strategies: %q is not one of named, single, empty", f))
		}
	}
	if c.NodeConfig.Dir == "" {
		return errors.Join(errs...)
	}
	if c.NodeConfig.Label == "" {
		errs = append(errs, errors.New("node-label must not be empty with config-file-srcdir"))
	}
	if c.ConfigFile != "" && c.ConfigFile != c.nodeConfigFile {
		errs = append(errs, fmt.Errorf("config-file %s and config-file-srcdir %s are both set: the Node's %s label picks the file from config-file-srcdir; unset one",
			c.ConfigFile, c.NodeConfig.Dir, c.NodeConfig.Label))
	}
	return errors.Join(errs...)
}

// resolved is what Resolve read the settings from, so that WithFile can
// read them again with another config file.
type resolved struct {
	flags  *pflag.FlagSet
	getenv func(string) string
}

// WithFile resolves the settings again as the command line and the
// environment set them, with path as the config file ("" for none): the
// settings of a newly chosen per-node config. c must come from Resolve;
// only the flags of `gpulet run` are read again.
func (c *Config) WithFile(path string) (*Config, error) {
	if c.from == nil {
		return nil, errors.New("the settings were not resolved from a command line: cannot read another config file")
	}
	n := &Config{}
	fs := pflag.NewFlagSet(c.from.flags.Name(), pflag.ContinueOnError)
	n.RunFlags(fs)
	var err error
	c.from.flags.Visit(func(f *pflag.Flag) {
		if err != nil || f.Name == "config-file" {
			return
		}
		to := fs.Lookup(f.Name)
		if to == nil {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			if tv, ok := to.Value.(pflag.SliceValue); ok {
				err = tv.Replace(sv.GetSlice())
				to.Changed = true
				return
			}
		}
		v := f.Value.String()
		if f.Value.Type() == "stringToString" { // String() brackets what Set takes
			v = v[1 : len(v)-1]
			if v == "" {
				to.Changed = true
				return
			}
		}
		err = fs.Set(f.Name, v)
	})
	if err != nil {
		return nil, fmt.Errorf("read the command line again: %w", err)
	}
	if path != "" {
		if err := fs.Set("config-file", path); err != nil {
			return nil, err
		}
	}
	// CONFIG_FILE is the file chosen at start: the new choice replaces it.
	getenv := func(k string) string {
		if k == "CONFIG_FILE" {
			return ""
		}
		return c.from.getenv(k)
	}
	if err := n.Resolve(fs, getenv); err != nil {
		return nil, err
	}
	n.from = &resolved{flags: fs, getenv: c.from.getenv}
	n.nodeConfigFile = path
	return n, nil
}
