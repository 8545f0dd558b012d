package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func parse(t *testing.T, args []string, env map[string]string) (*Config, error) {
	t.Helper()
	c := &Config{}
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	c.RunFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := c.Resolve(fs, func(k string) string { return env[k] }); err != nil {
		return nil, err
	}
	return c, c.Validate()
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c, err := parse(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Backend != "nvml" || c.DevicePluginPath != "/var/lib/kubelet/device-plugins/" ||
		strings.Join(c.DeviceListStrategy, ",") != "envvar" || c.DeviceIDStrategy != "uuid" ||
		c.PassDeviceSpecs || !c.FailOnInitError || c.MIGStrategy != "none" || c.ResourceName != "nvidia.com/gpu" {
		t.Errorf("defaults %+v", c)
	}
}

// NVIDIA's v1 config file, as users already have it.
const nvidiaFile = `version: v1
flags:
  migStrategy: none
  failOnInitError: false
  nvidiaDriverRoot: /run/nvidia/driver
  plugin:
    passDeviceSpecs: true
    deviceListStrategy: [envvar, cdi-cri]
    deviceIDStrategy: index
sharing:
  timeSlicing:
    renameByDefault: true
    resources:
    - name: nvidia.com/gpu
      replicas: 4
gpulet:
  backend: sim
  simProfile: dgx1-v100
  health:
    quietPeriod: 2m
    xids: {"13": reset}
`

func TestNVIDIAFeaturesGpuletCannotHonourAreRefused(t *testing.T) {
	cases := []struct{ file, want string }{
		{"version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 2\n", "sharing.mps is not supported"},
		{"version: v1\nresources:\n  gpus:\n  - pattern: '*A100*'\n    name: a100\n", "resources.gpus/resources.mig"},
		{"version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      devices: [0, 1]\n      replicas: 2\n", "a subset is not supported"},
		{"version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/mig-1g.10gb\n      replicas: 2\n", "gpulet shares nvidia.com/gpu"},
		{"version: v1\nflags:\n  deviceDiscoveryStrategy: tegra\n", "deviceDiscoveryStrategy"},
	}
	for _, tc := range cases {
		_, err := parse(t, []string{"--config-file=" + writeFile(t, tc.file)}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to say %q", tc.file, err, tc.want)
		}
	}
}

func TestDeviceListStrategyAsOneString(t *testing.T) {
	file := writeFile(t, "version: v1\nflags:\n  plugin:\n    deviceListStrategy: cdi-cri\n")
	c, err := parse(t, []string{"--config-file=" + file}, nil)
	if err != nil || strings.Join(c.DeviceListStrategy, ",") != "cdi-cri" {
		t.Fatalf("%+v %v", c, err)
	}
}

// TestSharedDevicesAllocationPolicy: NVIDIA's default, and its flag, env
// and file names in the usual precedence.
func TestSharedDevicesAllocationPolicy(t *testing.T) {
	file := writeFile(t, "version: v1\nflags:\n  plugin:\n    sharedDevicesAllocationPolicy: packed\n")
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"default", nil, nil, "distributed"},
		{"file", []string{"--config-file=" + file}, nil, "packed"},
		{"env over file", []string{"--config-file=" + file}, map[string]string{"SHARED_DEVICES_ALLOCATION_POLICY": "distributed"}, "distributed"},
		{"flag over env", []string{"--shared-devices-allocation-policy=packed"}, map[string]string{"SHARED_DEVICES_ALLOCATION_POLICY": "distributed"}, "packed"},
	} {
		c, err := parse(t, tc.args, tc.env)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if c.SharedDevicesAllocationPolicy != tc.want {
			t.Errorf("%s: policy %q, want %q", tc.name, c.SharedDevicesAllocationPolicy, tc.want)
		}
	}
}

func FuzzParseFile(f *testing.F) {
	f.Add([]byte(nvidiaFile))
	f.Add([]byte("version: v1\nflags: {plugin: {deviceListStrategy: envvar}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := ParseFile(data)
		if err != nil {
			return
		}
		for _, s := range settings {
			s.file(file) // every accessor copes with what parsed
		}
	})
}
