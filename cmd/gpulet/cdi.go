package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/atomicfile"
	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/daemon"
	"github.com/gpulet/gpulet/internal/hardware/backends"
)

func newCDICmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cdi",
		Short: "Generate and list Container Device Interface specs of this node's GPUs",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newCDIGenerateCmd(), newCDIListCmd())
	return cmd
}

func newCDIGenerateCmd() *cobra.Command {
	cfg := &config.Config{}
	var output, format string
	var naming []string
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Write the nvidia.com/gpu CDI spec of this node's GPUs (what `nvidia-ctk cdi generate` writes), for nodes without the NVIDIA container toolkit",
		Long: `Generate describes every GPU and MIG instance of this node as a CDI spec
of kind nvidia.com/gpu: one device per GPU by index (0, 1, ...; MIG
instances as <gpu>:<mig>) and by UUID, and "all". Each device carries its
/dev/nvidiaN (and a MIG instance its /dev/nvidia-caps nodes); the spec adds
the control devices and the driver files found under --nvidia-driver-root
that --cdi-driver-capabilities asks for (default all, as NVIDIA's). Where
NVIDIA's hook binary is on the node (nvidia-cdi-hook or nvidia-ctk), the
spec carries NVIDIA's hooks (soname links, CUDA forward compatibility, ld
cache update); without it every name of a library is a bind mount of its
own and those hooks are missing (--cdi-hooks forces either).

Save it where the container runtime reads specs, e.g.
  gpulet cdi generate --output=/etc/cdi/nvidia.yaml
then run containers with --device nvidia.com/gpu=0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd, cfg); err != nil {
				return err
			}
			if format == "" {
				format = "yaml"
				if strings.EqualFold(filepath.Ext(output), ".json") {
					format = "json"
				}
			}
			if format != "yaml" && format != "json" {
				return fmt.Errorf("--format %q is not one of yaml, json", format)
			}
			log := newLogger(cfg)
			backend, node, err := daemon.InitHardware(cmd.Context(), backends.Opener(cfg, log))
			if err != nil {
				return err
			}
			defer backend.Close()
			w := daemon.NewCDIWriter(cfg, backend, cdispec.Options{Kind: cdispec.ToolkitKind, Naming: naming}, log)
			raw, err := w.Build(node)
			if err != nil {
				return err
			}
			data, err := encodeSpec(raw, format)
			if err != nil {
				return err
			}
			if output == "" || output == "-" {
				_, err = cmd.OutOrStdout().Write(data)
				return err
			}
			return writeFileAtomic(output, data)
		},
	}
	cfg.BackendFlags(cmd.Flags(), "nvml")
	cfg.CDIDriverFlags(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "", "file to write the spec to (default stdout)")
	cmd.Flags().StringVar(&format, "format", "", "yaml or json (default: json for a .json --output, yaml otherwise)")
	cmd.Flags().StringSliceVar(&naming, "device-name-strategy", []string{cdispec.NameByIndex, cdispec.NameByUUID}, "names every device gets: index, uuid (comma-separated)")
	return cmd
}

func encodeSpec(raw *specs.Spec, format string) ([]byte, error) {
	if format == "json" {
		data, err := json.MarshalIndent(raw, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("encode CDI spec: %w", err)
		}
		return append(data, '\n'), nil
	}
	data, err := yaml.Marshal(raw)
	if err != nil {
		return nil, fmt.Errorf("encode CDI spec: %w", err)
	}
	return append([]byte("---\n"), data...), nil
}

// writeFileAtomic replaces path in one rename, so a runtime reading the
// folder never loads half a spec.
func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return atomicfile.Write(path, data, 0o644)
}

func newCDIListCmd() *cobra.Command {
	var dirs []string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the CDI device names the specs on this node resolve (as the container runtime would load them)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			names, errs := cdispec.Resolve(dirs...)
			for path, es := range errs {
				for _, e := range es {
					fmt.Fprintf(cmd.ErrOrStderr(), "gpulet: spec %s is not loaded: %v\n", path, e)
				}
			}
			for _, n := range names {
				fmt.Fprintln(cmd.OutOrStdout(), n)
			}
			if len(names) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "gpulet: no CDI devices in %s\n", strings.Join(dirs, ", "))
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&dirs, "spec-dirs", cdi.DefaultSpecDirs, "CDI spec folders, lowest priority first (comma-separated)")
	return cmd
}
