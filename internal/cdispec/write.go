package cdispec

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	"tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/atomicfile"
	"github.com/gpulet/gpulet/internal/inventory"
)

// FileName is the name a spec is written under: <vendor>-<class>.json, as
// NVIDIA's plugin names its own, so gpulet replaces it instead of adding a
// second spec that defines the same devices.
func FileName(raw *specs.Spec) (string, error) {
	n, err := cdi.GenerateNameForSpec(raw)
	if err != nil {
		return "", fmt.Errorf("name CDI spec: %w", err)
	}
	return n + ".json", nil
}

// Write validates raw with the CDI library and replaces its file in dir
// atomically (the library writes a temporary file and renames it), so a
// runtime reading the folder sees the old spec or the new one, never a
// part. It returns the file's path.
func Write(dir string, raw *specs.Spec) (string, error) {
	name, err := FileName(raw)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create CDI spec folder: %w; pass --cdi-spec-dir to write elsewhere", err)
	}
	path := filepath.Join(dir, name)
	if err := writeSpec(path, raw); err != nil {
		return "", err
	}
	return path, nil
}

// writeSpec validates raw with the CDI library (reading back the very
// bytes it installs) and replaces path with them atomically. Not the
// library's WriteSpec: that leaves its spec.*.tmp behind when the write
// fails (a full /var/run tmpfs), one more on every retry or crash-loop.
func writeSpec(path string, raw *specs.Spec) error {
	data, err := json.Marshal(raw)
	if err != nil {
		return fmt.Errorf("encode CDI spec %s: %w", path, err)
	}
	err = atomicfile.WriteChecked(path, data, 0o644, func(tmp string) error {
		_, err := cdi.ReadSpec(tmp, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("write CDI spec %s: %w", path, err)
	}
	return nil
}

// Writer keeps the spec of gpulet's devices in step with the inventory.
// It never removes the file: a container started from it may still be
// created or restarted after gpulet stops, and a restarted gpulet rewrites
// it anyway.
type Writer struct {
	Dir     string
	Options Options
	// MIGMinorsPath is re-read at each build: MIG instances change the caps
	// they need when they are recreated. Empty means DefaultMIGMinorsPath.
	MIGMinorsPath string
	// ProcDevicesPath is read for the nvidia-caps major (Options.CapsMajor)
	// at each build with MIG instances. Empty means DefaultProcDevicesPath.
	ProcDevicesPath string
	// DriverRoot, if set, is searched for driver files at each build.
	DriverRoot string
	// Capabilities select the driver files every container gets, in
	// NVIDIA_DRIVER_CAPABILITIES syntax; "" gives all, as NVIDIA's do.
	Capabilities string
	// HookMode is HookModeAuto (hooks where NVIDIA's hook binary is on the
	// node), HookModeOn or HookModeOff; "" is auto.
	HookMode string
	// HookPath is the hook binary's host path; "" looks for it where
	// NVIDIA's toolkit installs it (HookCandidates).
	HookPath string
	Log      *slog.Logger

	last []byte
}

// Build builds the spec of node with the writer's options, reading the
// MIG minors and looking for driver files now.
func (w *Writer) Build(node *inventory.Node) (*specs.Spec, error) {
	o, err := w.resolve(node)
	if err != nil {
		return nil, err
	}
	raw, err := Build(node, o)
	if err != nil {
		return nil, fmt.Errorf("build CDI spec: %w", err)
	}
	return raw, nil
}

// Resolved returns the writer's options completed for node, as its next
// spec will be built: driver files found, capabilities and hook mode chosen.
func (w *Writer) Resolved(node *inventory.Node) (Options, error) { return w.resolve(node) }

// resolve returns the writer's options completed for node: MIG minors read
// and driver files looked up now.
func (w *Writer) resolve(node *inventory.Node) (Options, error) {
	o := w.Options
	mm := w.MIGMinorsPath
	if mm == "" {
		mm = DefaultMIGMinorsPath
	}
	if hasMIG(node) {
		m, err := ReadMIGMinors(mm)
		if err != nil {
			return o, err
		}
		o.MIGMinors = m
		pd := w.ProcDevicesPath
		if pd == "" {
			pd = DefaultProcDevicesPath
		}
		o.CapsMajor = CharMajor(pd, "nvidia-caps")
	}
	if w.DriverRoot != "" {
		d, err := FindDriver(w.DriverRoot, node.DriverVersion)
		if err != nil {
			w.log().Warn("driver libraries missing from the CDI spec; containers need them from their image or the runtime", "err", err)
		}
		if len(d.Files) > 0 {
			o.Driver = d
			o.Capabilities = AllCapabilities()
			if w.Capabilities != "" {
				if o.Capabilities, err = ParseCapabilities(w.Capabilities); err != nil {
					return o, err
				}
			}
			h, err := ResolveHooks(w.HookMode, w.HookPath)
			if err != nil {
				return o, err
			}
			o.Hooks = h
		}
	}
	return o, nil
}

// Hook modes (--cdi-hooks).
const (
	HookModeAuto = "auto"
	HookModeOn   = "on"
	HookModeOff  = "off"
)

// HookCandidates are where NVIDIA's container toolkit installs its hook
// binary (packages, then the GPU operator's toolkit container), newest
// CLI first.
var HookCandidates = []string{
	"/usr/bin/nvidia-cdi-hook", "/usr/local/nvidia/toolkit/nvidia-cdi-hook",
	"/usr/bin/nvidia-ctk", "/usr/local/nvidia/toolkit/nvidia-ctk",
}

// ResolveHooks picks the spec's mode: on uses path (default
// DefaultHookPath) whether or not gpulet sees it; off is hook-free; auto
// uses hooks when path, or else one of HookCandidates, is an executable
// file as gpulet sees the filesystem.
func ResolveHooks(mode, path string) (*Hooks, error) {
	switch mode {
	case HookModeOff:
		return nil, nil
	case HookModeOn:
		if path == "" {
			path = DefaultHookPath
		}
		return &Hooks{Path: path}, nil
	case HookModeAuto, "":
		candidates := HookCandidates
		if path != "" {
			candidates = []string{path}
		}
		for _, c := range candidates {
			if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				return &Hooks{Path: c}, nil
			}
		}
		return nil, nil
	}
	return nil, fmt.Errorf("CDI hook mode %q is not one of auto, on, off", mode)
}

// Write builds the spec of node and writes it unless it is unchanged.
func (w *Writer) Write(node *inventory.Node) error {
	if len(node.GPUs) == 0 {
		// Nothing to describe; a spec without devices is invalid, and the
		// old one still serves containers of GPUs that may come back.
		w.log().Warn("no GPUs; CDI spec left as it is", "dir", w.Dir)
		return nil
	}
	o, err := w.resolve(node)
	if err != nil {
		return err
	}
	raw, err := Build(node, o)
	if err != nil {
		return fmt.Errorf("build CDI spec: %w", err)
	}
	data, err := json.Marshal(raw)
	if err != nil {
		return fmt.Errorf("encode CDI spec: %w", err)
	}
	if bytes.Equal(data, w.last) {
		return nil
	}
	path, err := Write(w.Dir, raw)
	if err != nil {
		return err
	}
	w.last = data
	w.log().Info("CDI spec written", append(LogAttrs(o), "path", path, "kind", raw.Kind, "devices", len(raw.Devices))...)
	return nil
}

// Follow rewrites the spec whenever the store's node changes (health
// changes leave it alone) until ctx ends. A failed rewrite is logged and
// the previous spec stays: it still describes the devices that remain.
func (w *Writer) Follow(ctx context.Context, store *inventory.Store) {
	changes, unsubscribe := store.Subscribe()
	defer unsubscribe()
	node := store.Snapshot().Node
	for {
		select {
		case <-ctx.Done():
			return
		case <-changes:
		}
		n := store.Snapshot().Node
		if n == node {
			continue
		}
		node = n
		if err := w.Write(n); err != nil {
			w.log().Error("CDI spec not rewritten; it keeps the previous devices", "err", err)
		}
	}
}

// LogAttrs describe a spec's driver part for a log line: its mode,
// capabilities and number of driver files, and in hook-free mode what that
// mode lacks.
func LogAttrs(o Options) []any {
	args := []any{"mode", o.Mode()}
	if o.Driver == nil {
		return append(args, "driverFiles", 0)
	}
	caps := o.Capabilities
	if caps.isZero() {
		caps = AllCapabilities()
	}
	args = append(args, "capabilities", caps.String(), "driverFiles", len(o.Driver.Select(caps)))
	if o.Hooks == nil {
		args = append(args, "lacks", HookFreeLacks)
	}
	return args
}

func (w *Writer) log() *slog.Logger {
	if w.Log != nil {
		return w.Log
	}
	return slog.New(slog.DiscardHandler)
}

func hasMIG(node *inventory.Node) bool {
	for _, g := range node.GPUs {
		if len(g.MIGDevices) > 0 {
			return true
		}
	}
	return false
}

// Resolve lists the fully qualified device names the specs in dirs
// define, sorted, and the errors of specs that did not load, by file.
func Resolve(dirs ...string) ([]string, map[string][]error) {
	cache, _ := cdi.NewCache(cdi.WithSpecDirs(dirs...), cdi.WithAutoRefresh(false))
	names := cache.ListDevices()
	sort.Strings(names)
	return names, cache.GetErrors()
}
