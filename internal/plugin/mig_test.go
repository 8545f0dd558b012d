package plugin

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// migMinorsFile writes the driver's mig-minors for n's GPUs.
func migMinorsFile(t *testing.T, gpus int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mig-minors")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := cdispec.FormatMIGMinors(f, gpus); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMIGAllocateMatchesCDISpec allocates every MIG instance of the
// dgx-h100-mig-mixed node alone and checks that Allocate names it as the
// CDI spec does (<gpu>:<NVML MIG index>, gaps kept) and passes the same
// device nodes: its GPU and its GI and CI caps.
func TestMIGAllocateMatchesCDISpec(t *testing.T) {
	node := simtest.Node(t, "dgx-h100-mig-mixed")
	// NVML indexes with gaps on GPU 5: slots 1 and 3 are empty.
	for i, idx := range []int{0, 2, 4, 5} {
		node.GPUs[5].MIGDevices[i].Index = idx
	}
	path := migMinorsFile(t, len(node.GPUs))
	minors, err := cdispec.ReadMIGMinors(path)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := cdispec.Build(node, cdispec.Options{Kind: DefaultCDIKind, Naming: []string{cdispec.NameByIndex}, MIGMinors: minors})
	if err != nil {
		t.Fatal(err)
	}
	cdiNodes := map[string][]string{}
	for _, d := range spec.Devices {
		for _, n := range d.ContainerEdits.DeviceNodes {
			cdiNodes[d.Name] = append(cdiNodes[d.Name], n.Path+"<-"+n.HostPath)
		}
	}
	o := &Options{DeviceListStrategies: []string{StrategyEnvvar, StrategyCDICRI}, DeviceIDStrategy: IDStrategyIndex,
		PassDeviceSpecs: true, MIGMinorsPath: path}
	migs := 0
	for _, res := range resources.Build(inventory.Snapshot{Node: node}, resources.Config{MIGStrategy: resources.MIGMixed}) {
		for _, d := range res.Devices {
			r, err := o.containerResponse(&res, []resources.Device{d})
			if err != nil {
				t.Fatalf("%s %s: %v", res.Name, d.ID, err)
			}
			if got := r.Envs[visibleDevicesEnv]; got != d.Index {
				t.Errorf("%s: NVIDIA_VISIBLE_DEVICES=%s, want %s", d.ID, got, d.Index)
			}
			if len(r.CdiDevices) != 1 || r.CdiDevices[0].Name != DefaultCDIKind+"="+d.Index {
				t.Errorf("%s: CDI devices %v, want %s=%s", d.ID, r.CdiDevices, DefaultCDIKind, d.Index)
			}
			want, ok := cdiNodes[d.Index]
			if !ok {
				t.Errorf("%s: Allocate names it %s, which the CDI spec does not have", d.ID, d.Index)
				continue
			}
			var got []string
			for _, s := range r.Devices[len(res.ControlDevices):] {
				got = append(got, s.ContainerPath+"<-"+s.HostPath)
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s (%s): device specs %v, CDI spec %v", d.ID, d.Index, got, want)
			}
			if d.MIG {
				migs++
				if len(got) != 3 || !strings.Contains(got[1], "/dev/nvidia-caps/nvidia-cap") {
					t.Errorf("%s: device specs %v, want the GPU and two caps nodes", d.ID, got)
				}
			}
		}
	}
	if migs != 16 {
		t.Errorf("allocated %d MIG instances, want 16", migs)
	}
	if _, ok := cdiNodes["5:4"]; !ok {
		t.Error("CDI spec has no 5:4: the NVML index gap was compacted")
	}
}

func TestMIGAllocateWithoutCaps(t *testing.T) {
	node := simtest.Node(t, "dgx-h100-mig-mixed")
	res := resources.Build(inventory.Snapshot{Node: node}, resources.Config{MIGStrategy: resources.MIGMixed})
	var mig resources.Resource
	for _, r := range res {
		if r.Name == "nvidia.com/mig-1g.10gb.me" {
			mig = r
		}
	}
	if len(mig.Devices) == 0 {
		t.Fatalf("no nvidia.com/mig-1g.10gb.me in %v", res)
	}
	empty := filepath.Join(t.TempDir(), "mig-minors")
	if err := os.WriteFile(empty, []byte("config 1\nmonitor 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{"caps not listed": empty, "unreadable": t.TempDir()} {
		t.Run(name, func(t *testing.T) {
			o := &Options{DeviceListStrategies: []string{StrategyEnvvar}, DeviceIDStrategy: IDStrategyUUID, PassDeviceSpecs: true, MIGMinorsPath: path}
			_, err := o.containerResponse(&mig, mig.Devices[:1])
			if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), mig.Devices[0].UUID) {
				t.Errorf("err = %v, want Internal naming the MIG device", err)
			}
		})
	}
	// Without device specs nothing needs the caps.
	o := &Options{DeviceListStrategies: []string{StrategyEnvvar}, DeviceIDStrategy: IDStrategyUUID, MIGMinorsPath: empty}
	if _, err := o.containerResponse(&mig, mig.Devices[:1]); err != nil {
		t.Errorf("without device specs: %v", err)
	}
}

func TestSocketNamesKeepMIGResourcesApart(t *testing.T) {
	names := []string{"nvidia.com/gpu", "nvidia.com/gpu.shared", "nvidia.com/mig-1g.23gb", "nvidia.com/mig-1g.23gb.me",
		"nvidia.com/mig-1g.23gb-me", "nvidia.com/mig-1g.23gb.me.all", "nvidia.com/mig-1g.24gb.gfx"}
	seen := map[string]string{}
	for _, n := range names {
		s := SocketName(n)
		if o, dup := seen[s]; dup {
			t.Errorf("%s and %s share the socket %s", o, n, s)
		}
		seen[s] = n
	}
	// Existing sockets keep their names across upgrades.
	if got := SocketName("nvidia.com/gpu"); got != "gpulet-nvidia-com-gpu.sock" {
		t.Errorf("SocketName(nvidia.com/gpu) = %s", got)
	}
}
