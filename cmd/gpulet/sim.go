package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/inventory"
)

// simFlags are shared by the `gpulet sim` commands.
type simFlags struct {
	root, profile, gpu string
	all                bool
}

func (f *simFlags) add(cmd *cobra.Command, withGPU bool) {
	cmd.Flags().StringVar(&f.root, "sim-root", "", "the simulator's folder, as given to `gpulet run --sim-root` (default: the same default)")
	cmd.Flags().StringVar(&f.profile, "sim-profile", "", "profile to resolve GPU indexes with when no simulator has published its node yet")
	if withGPU {
		cmd.Flags().StringVar(&f.gpu, "gpu", "", "GPU index or UUID")
	}
}

func (f *simFlags) rootDir() string {
	if f.root == "" {
		return sim.DefaultRoot()
	}
	return f.root
}

// node is the simulated node the commands act on: the one a running
// simulator published, else the one --sim-profile describes.
func (f *simFlags) node() (*inventory.Node, error) {
	n, err := sim.ReadNode(f.rootDir())
	if err == nil {
		return n, nil
	}
	if f.profile == "" {
		return nil, err
	}
	p, perr := sim.LoadProfile(f.profile)
	if perr != nil {
		return nil, perr
	}
	return p.Node()
}

func (f *simFlags) uuid() (string, error) {
	if f.gpu == "" {
		return "", errors.New("--gpu is required (an index such as 3, or a UUID)")
	}
	n, err := f.node()
	if err != nil {
		return "", err
	}
	return sim.ResolveGPU(n, f.gpu)
}

func newSimCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Break, heal, remove and restore GPUs of a running simulated node",
		Long: `The simulator (gpulet run --backend=sim) watches a fault file in its
--sim-root. These commands edit that file; the running daemon reacts within
milliseconds, exactly as it reacts to real hardware events.`,
	}
	cmd.AddCommand(simFault(), simClear(), simRemove(), simRestore(), simStatus(), simDevices(), simDriver())
	return cmd
}

func simFault() *cobra.Command {
	var f simFlags
	var xid uint64
	var reason, healthFlag string
	cmd := &cobra.Command{
		Use:     "fault",
		Short:   "Inject a fault: an XID (judged by the health policy) or a plain unhealthy state",
		Example: "  gpulet sim fault --gpu=3 --xid=48\n  gpulet sim fault --gpu=0 --health=unhealthy --reason='fan failure'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if healthFlag != "unhealthy" {
				return fmt.Errorf("--health=%q: only unhealthy can be injected (use `gpulet sim clear` to heal)", healthFlag)
			}
			uuid, err := f.uuid()
			if err != nil {
				return err
			}
			err = sim.UpdateFaults(f.rootDir(), func(fs *sim.Faults) error {
				fs.GPUs[uuid] = sim.Fault{XID: xid, Reason: reason}
				return nil
			})
			if err == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "fault injected into %s\n", uuid)
			}
			return err
		},
	}
	f.add(cmd, true)
	cmd.Flags().Uint64Var(&xid, "xid", 0, "XID to report (e.g. 48 double-bit ECC, 79 fallen off the bus, 13 application error)")
	cmd.Flags().StringVar(&reason, "reason", "", "why the GPU is unhealthy (without --xid)")
	cmd.Flags().StringVar(&healthFlag, "health", "unhealthy", "state to inject")
	return cmd
}

// editCmd is a `gpulet sim` command that edits the fault file for one GPU
// (--gpu) or, with all, for every GPU (--all).
func editCmd(use, short, allHelp string, edit func(fs *sim.Faults, uuid string, all bool) error) *cobra.Command {
	var f simFlags
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var uuid string
			if !f.all {
				var err error
				if uuid, err = f.uuid(); err != nil {
					return err
				}
			}
			return sim.UpdateFaults(f.rootDir(), func(fs *sim.Faults) error { return edit(fs, uuid, f.all) })
		},
	}
	f.add(cmd, true)
	if allHelp != "" {
		cmd.Flags().BoolVar(&f.all, "all", false, allHelp)
	}
	return cmd
}

func simClear() *cobra.Command {
	return editCmd("clear", "Clear the fault of one GPU (--gpu) or of all (--all): they become healthy again", "clear every fault",
		func(fs *sim.Faults, uuid string, all bool) error {
			if all {
				fs.GPUs = map[string]sim.Fault{}
				return nil
			}
			if _, ok := fs.GPUs[uuid]; !ok {
				return fmt.Errorf("GPU %s has no injected fault", uuid)
			}
			delete(fs.GPUs, uuid)
			return nil
		})
}

func simRemove() *cobra.Command {
	return editCmd("remove", "Make a GPU disappear from the node (as if it fell off the bus)", "",
		func(fs *sim.Faults, uuid string, _ bool) error {
			if !slices.Contains(fs.Removed, uuid) {
				fs.Removed = append(fs.Removed, uuid)
			}
			return nil
		})
}

func simRestore() *cobra.Command {
	return editCmd("restore", "Bring back a removed GPU (--gpu) or all of them (--all)", "restore every removed GPU",
		func(fs *sim.Faults, uuid string, all bool) error {
			if all {
				fs.Removed = nil
			} else {
				fs.Removed = slices.DeleteFunc(fs.Removed, func(r string) bool { return r == uuid })
			}
			return nil
		})
}

func simStatus() *cobra.Command {
	var f simFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print the injected faults and removed GPUs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs, err := sim.ReadFaults(f.rootDir())
			if err != nil {
				return err
			}
			b, err := json.MarshalIndent(fs, "", "  ")
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(b))
			return nil
		},
	}
	f.add(cmd, false)
	return cmd
}

func simDevices() *cobra.Command {
	var f simFlags
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "Create a profile's device nodes and node description under --sim-root without running the daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := sim.LoadProfile(f.profile)
			if err != nil {
				return err
			}
			b, err := sim.New(p, f.rootDir())
			if err != nil {
				return err
			}
			if err := b.Publish(); err != nil {
				return err
			}
			// The profile's GPUs, all of which sim.New made nodes for: Discover
			// would fail with the simulated driver down and leave out removed GPUs.
			n, err := p.Node()
			if err != nil {
				return err
			}
			var names []string
			for _, g := range n.GPUs {
				names = append(names, fmt.Sprintf("nvidia%d", g.Minor))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created %s/{nvidiactl,nvidia-uvm,nvidia-uvm-tools,%s}\n", filepath.Join(b.Root(), "dev"), strings.Join(names, ","))
			return nil
		},
	}
	f.add(cmd, false)
	return cmd
}
