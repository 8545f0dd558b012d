package daemon

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/dra"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
	"github.com/gpulet/gpulet/internal/waittest"
)

func TestDRADefaultsAreTheLayersOwn(t *testing.T) {
	if config.DefaultDRAPluginDir != dra.DefaultPluginDir || config.DefaultDRARegistrarDir != dra.DefaultRegistrarDir {
		t.Errorf("config's DRA folders %s, %s differ from dra's %s, %s",
			config.DefaultDRAPluginDir, config.DefaultDRARegistrarDir, dra.DefaultPluginDir, dra.DefaultRegistrarDir)
	}
}

func TestDRASettings(t *testing.T) {
	file := writeFile(t, "version: v1\ngpulet:\n  dra:\n    enabled: true\n    devices: \"4,5\"\n")
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    config.DRAConfig
		wantErr string
	}{
		{"off by default", nil, nil, config.DRAConfig{Devices: "all", PluginDir: config.DefaultDRAPluginDir, RegistrarDir: config.DefaultDRARegistrarDir, DynamicMIGWholeWhenIdle: true}, ""},
		{"flag", []string{"--dra", "--node-name=n1"}, nil, config.DRAConfig{Enabled: true, Devices: "all", PluginDir: config.DefaultDRAPluginDir, RegistrarDir: config.DefaultDRARegistrarDir, DynamicMIGWholeWhenIdle: true}, ""},
		{"env", nil, map[string]string{"GPULET_DRA": "true", "GPULET_DRA_DEVICES": "0,2", "NODE_NAME": "n1", "GPULET_DRA_PLUGIN_DIR": "/p"},
			config.DRAConfig{Enabled: true, Devices: "0,2", PluginDir: "/p", RegistrarDir: config.DefaultDRARegistrarDir, DynamicMIGWholeWhenIdle: true}, ""},
		{"file", []string{"--config-file=" + file, "--node-name=n1"}, nil,
			config.DRAConfig{Enabled: true, Devices: "4,5", PluginDir: config.DefaultDRAPluginDir, RegistrarDir: config.DefaultDRARegistrarDir, DynamicMIGWholeWhenIdle: true}, ""},
		{"no node name", []string{"--dra"}, nil, config.DRAConfig{}, "NODE_NAME"},
		{"bad devices", []string{"--dra", "--node-name=n1", "--dra-devices=0,x"}, nil, config.DRAConfig{}, "not a GPU index"},
		{"dynamic MIG", []string{"--dra", "--node-name=n1", "--dra-dynamic-mig=0,1", "--dra-dynamic-mig-whole-when-idle=false"}, nil,
			config.DRAConfig{Enabled: true, Devices: "all", PluginDir: config.DefaultDRAPluginDir, RegistrarDir: config.DefaultDRARegistrarDir, DynamicMIG: "0,1"}, ""},
		{"dynamic MIG env", nil, map[string]string{"GPULET_DRA": "true", "NODE_NAME": "n1", "GPULET_DRA_DYNAMIC_MIG": "all"},
			config.DRAConfig{Enabled: true, Devices: "all", PluginDir: config.DefaultDRAPluginDir, RegistrarDir: config.DefaultDRARegistrarDir, DynamicMIG: "all", DynamicMIGWholeWhenIdle: true}, ""},
		{"bad dynamic MIG", []string{"--dra", "--node-name=n1", "--dra-dynamic-mig=a"}, nil, config.DRAConfig{}, "dra-dynamic-mig"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(t, tc.args, tc.env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.DRA != tc.want {
				t.Errorf("DRA settings %+v, want %+v", c.DRA, tc.want)
			}
		})
	}
}

// Every GPU is served by exactly one side: the device plugin's resources
// and DRA's slices never share a GPU, and together cover the node.
func TestNoGPUInBothDevicePluginAndDRA(t *testing.T) {
	p, err := sim.LoadProfile("dgx-h100")
	if err != nil {
		t.Fatal(err)
	}
	node, err := p.Node()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		dra        config.DRAConfig
		wantDRA    int
		wantPlugin int
		wantErr    string
	}{
		{"DRA off", config.DRAConfig{}, 0, 8, ""},
		{"DRA on: all GPUs by default", config.DRAConfig{Enabled: true, Devices: "all"}, 8, 0, ""},
		{"DRA on: some GPUs", config.DRAConfig{Enabled: true, Devices: "0,1,6"}, 3, 5, ""},
		{"DRA on: a GPU the node lacks", config.DRAConfig{Enabled: true, Devices: "3,8"}, 0, 0, "GPU 8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &config.Config{ResourceName: config.DefaultResourceName, MIGStrategy: config.DefaultMIGStrategy, DRA: tc.dra}
			store := inventory.NewStore(node)
			ctx, cancel := context.WithCancel(context.Background())
			pluginStore, draStore, wait, err := splitStores(ctx, cfg, store)
			if tc.wantErr != "" {
				cancel()
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer func() { cancel(); wait() }()

			var pluginUUIDs, draUUIDs []string
			for _, r := range resources.Build(pluginStore.Snapshot(), ResourcesConfig(cfg)) {
				for _, d := range r.Devices {
					pluginUUIDs = append(pluginUUIDs, d.UUID)
				}
			}
			if tc.dra.Enabled {
				for _, d := range dra.Devices(draStore.Snapshot(), dra.DeviceOptions{}) {
					draUUIDs = append(draUUIDs, *d.Attributes["uuid"].StringValue)
				}
			}
			if len(pluginUUIDs) != tc.wantPlugin || len(draUUIDs) != tc.wantDRA {
				t.Fatalf("device plugin has %d GPUs, DRA %d; want %d and %d", len(pluginUUIDs), len(draUUIDs), tc.wantPlugin, tc.wantDRA)
			}
			for _, u := range pluginUUIDs {
				if slices.Contains(draUUIDs, u) {
					t.Errorf("GPU %s served by both", u)
				}
			}
			// Health still reaches each side through its view.
			if tc.wantPlugin > 0 && tc.wantDRA > 0 {
				victim := draStore.Snapshot().Node.GPUs[0].UUID
				store.SetHealth(victim, inventory.Health{Reason: "XID 48"})
				waittest.Until(t, 5*time.Second, "DRA's view sees the GPU unhealthy", func() bool { return !draStore.Snapshot().Healthy(victim) })
				tainted := 0
				for _, d := range dra.Devices(draStore.Snapshot(), dra.DeviceOptions{}) {
					if len(d.Taints) > 0 {
						tainted++
					}
				}
				if tainted != 1 {
					t.Errorf("%d of DRA's devices are tainted, want the unhealthy GPU's only", tainted)
				}
			}
		})
	}
}
