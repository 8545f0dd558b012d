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

// TestNVIDIAValidation: what NVIDIA's plugin refuses is refused, with the
// field named; a misspelt field is an error that names it.
func TestNVIDIAValidation(t *testing.T) {
	ts := func(entry string) string {
		return "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - " + entry + "\n"
	}
	cases := []struct{ file, want string }{
		{ts("name: nvidia.com/gpu\n      replicas: 1"), "replicas must be >= 2"},
		{ts("name: nvidia.com/gpu\n      replicas: 1025"), "replicas must be <= 1024"},
		{ts("name: nvidia.com/gpu\n      replicas: 2147483647"), "replicas must be <= 1024"},
		{ts("name: nvidia.com/gpu"), "no replicas specified"},
		{ts("replicas: 2"), "no resource name specified"},
		{ts("name: nvidia.com/GPU\n      replicas: 2"), "lower-case"},
		{ts("name: nvidia.com/gpu\n      replicas: 2\n      devices: some"), `only word allowed is "all"`},
		{ts("name: nvidia.com/gpu\n      replicas: 2\n      devices: 0"), "count of devices must be > 0"},
		{ts("name: nvidia.com/gpu\n      replicas: 2\n      devices: [GPU-x]"), "is not a GPU index"},
		{ts("name: nvidia.com/gpu\n      replicas: 2\n      devices: []"), "list is empty"},
		{ts("name: nvidia.com/gpu\n      replicas: 2\n    - name: gpu\n      replicas: 3"), "listed twice"},
		{ts("name: nvidia.com/gpu\n      replicas: 2\n      rename: Bad_Name"), "rename"},
		{"version: v1\nsharing:\n  timeSlicing: {}\n", "no resources specified"},
		{"version: v1\nsharing:\n  mps:\n    resources: []\n", "sharing.mps: no resources specified"},
		{"version: v1\nresources:\n  gpus:\n  - name: a100\n", "'pattern' field"},
		{"version: v1\nimex:\n  channelIDs: [1]\n", "channelIDs must be [] or [0]"},
		{"version: v1\nflags:\n  deviceDiscoveryStrategy: tegra\n", "NVML only"},
		{"version: v1\nflags:\n  gdrcopyEnable: true\n", `unknown field "gdrcopyEnable"`},
		{"version: v1\nflags:\n  gfd:\n    oneshoot: true\n", `unknown field "oneshoot"`},
		{"version: v1\nflags:\n  gfd:\n    sleepInterval: soon\n", "sleepInterval"},
		{"version: v1\nsharing:\n  mps:\n    renameByDefualt: true\n", `unknown field "renameByDefualt"`},
		{"version: v2\n", `version "v2"`},
	}
	for _, tc := range cases {
		_, err := parse(t, []string{"--config-file=" + writeFile(t, tc.file)}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to say %q", tc.file, err, tc.want)
		}
	}
}

// TestSharedDevicesForms: devices as NVIDIA reads it.
func TestSharedDevicesForms(t *testing.T) {
	for _, tc := range []struct {
		devices string
		want    SharedDevices
	}{
		{"", SharedDevices{All: true}},
		{"\n      devices: all", SharedDevices{All: true}},
		{"\n      devices: 2", SharedDevices{Count: 2}},
		{"\n      devices: [0, \"1\", \"2:1\", GPU-8f6e4c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6, MIG-GPU-8f6e4c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6/1/0]",
			SharedDevices{List: []string{"0", "1", "2:1", "GPU-8f6e4c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6", "MIG-GPU-8f6e4c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6/1/0"}}},
	} {
		file := "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      replicas: 3" + tc.devices + "\n"
		c, err := parse(t, []string{"--config-file=" + writeFile(t, file)}, nil)
		if err != nil {
			t.Fatalf("%q: %v", tc.devices, err)
		}
		got := c.Sharing.Resources[0]
		if got.Name != "nvidia.com/gpu" || got.Replicas != 3 || got.Devices.String() != tc.want.String() {
			t.Errorf("%q: got %+v, want devices %v", tc.devices, got, tc.want)
		}
	}
}

// TestNVIDIADocumentedExamples: the config files NVIDIA's README and Helm
// chart document (written here from the schema) load, share as documented,
// and warn about what gpulet does not use.
func TestNVIDIADocumentedExamples(t *testing.T) {
	for _, tc := range []struct {
		file         string
		strategy     string
		replicas     int
		rename       string
		failGreater  bool
		notesMention []string
	}{
		{"testdata/nvidia-time-slicing.yaml", SharingTimeSlicing, 10, "", false, nil},
		{"testdata/nvidia-time-slicing-rename.yaml", SharingTimeSlicing, 4, "nvidia.com/gpu.shared", true, nil},
		{"testdata/nvidia-mps.yaml", SharingMPS, 10, "", true, nil},
		{"testdata/nvidia-every-field.yaml", SharingMPS, 4, "nvidia.com/gpu.shared", false,
			[]string{"flags.gdrcopyEnabled", "flags.gdsEnabled", "flags.mofedEnabled", "flags.gfd.oneshot", "flags.gfd.sleepInterval",
				"cdiAnnotationPrefix", "containerDriverRoot", "imex", "resources.gpus", "resources.mig",
				"sharing.timeSlicing (ignored: sharing.mps", "restartOnDeviceUnhealthy"}},
	} {
		c, err := parse(t, []string{"--config-file=" + tc.file}, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		if tc.file == "testdata/nvidia-every-field.yaml" && c.CDIHookPath != "/usr/bin/nvidia-ctk" {
			t.Errorf("%s: flags.plugin.nvidiaCTKPath gives hook path %q, want /usr/bin/nvidia-ctk", tc.file, c.CDIHookPath)
		}
		sh := c.Sharing
		if sh.Strategy != tc.strategy || len(sh.Resources) == 0 || sh.Resources[0].Replicas != tc.replicas ||
			sh.Resources[0].Rename != tc.rename || c.FailRequestsGreaterThanOne != tc.failGreater {
			t.Errorf("%s: sharing %+v, fail>1 %v", tc.file, sh, c.FailRequestsGreaterThanOne)
		}
		notes := strings.Join(c.Notes, "\n")
		for _, w := range tc.notesMention {
			if strings.Count(notes, w) != 1 {
				t.Errorf("%s: notes name %q %d times, want once:\n%s", tc.file, w, strings.Count(notes, w), notes)
			}
		}
		if len(tc.notesMention) == 0 && notes != "" {
			t.Errorf("%s: unexpected notes:\n%s", tc.file, notes)
		}
	}
}

// TestEveryFieldLoadsIntoSettings: the fields gpulet gives a meaning land
// in its settings.
func TestEveryFieldLoadsIntoSettings(t *testing.T) {
	c, err := parse(t, []string{"--config-file=testdata/nvidia-every-field.yaml"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.MIGStrategy != "single" || c.FailOnInitError || c.DriverRoot != "/run/nvidia/driver" || c.DevRoot != "/" ||
		c.MPSRoot != "/var/run/mps" || c.DeviceDiscoveryStrategy != "nvml" || !c.PassDeviceSpecs ||
		strings.Join(c.DeviceListStrategy, ",") != "envvar,cdi-cri" || c.DeviceIDStrategy != "index" ||
		c.SharedDevicesAllocationPolicy != "packed" || !c.RenameByDefault || c.MPSControl != "/usr/local/bin/nvidia-cuda-mps-control" {
		t.Errorf("settings %+v", c)
	}
	if d := c.Sharing.Resources[0].Devices; d.Count != 1 {
		t.Errorf("mps devices %+v, want the count 1", d)
	}
}

// TestNVIDIAEnvNames: NVIDIA's env names gpulet gives a meaning set it;
// the others are named in a warning.
func TestNVIDIAEnvNames(t *testing.T) {
	c, err := parse(t, []string{"--driver-root=/d", "--nvidia-dev-root=/dev-root"}, map[string]string{
		"MPS_ROOT": "/m", "DEVICE_DISCOVERY_STRATEGY": "nvml", "GDS_ENABLED": "true", "IMEX_CHANNEL_IDS": "0",
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.MPSRoot != "/m" || c.DeviceDiscoveryStrategy != "nvml" || c.DriverRoot != "/d" || c.DevRoot != "/dev-root" {
		t.Errorf("settings %+v", c)
	}
	notes := strings.Join(c.Notes, "\n")
	if !strings.Contains(notes, "GDS_ENABLED") || !strings.Contains(notes, "IMEX_CHANNEL_IDS") {
		t.Errorf("notes %q", notes)
	}
	if _, err := parse(t, nil, map[string]string{"DEVICE_DISCOVERY_STRATEGY": "tegra"}); err == nil || !strings.Contains(err.Error(), "NVML only") {
		t.Errorf("tegra from env: %v", err)
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
	f.Add([]byte("version: v1\nflags: {plugin: {deviceListStrategy: envvar}}\n"))
	for _, p := range []string{"nvidia-with-gpulet.yaml", "nvidia-time-slicing.yaml", "nvidia-mps.yaml", "nvidia-every-field.yaml"} {
		data, err := os.ReadFile(filepath.Join("testdata", p))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := ParseFile(data)
		if err != nil {
			return
		}
		tree, err := file.tree()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range Settings {
			s.fileValue(file, tree) // every setting copes with what parsed
		}
		file.Notes()
		sh := file.SharingConfig()
		for _, r := range sh.Resources {
			if r.Replicas < 2 || !strings.HasPrefix(r.Name, "nvidia.com/") {
				t.Fatalf("a checked file gave %+v", r)
			}
		}
	})
}

// --replicas (GPULET_REPLICAS) is bounded like the file's replicas: one
// setting must not make millions of device entries.
func TestReplicasBound(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  map[string]string
		ok   bool
	}{
		{[]string{"--replicas=1024"}, nil, true},
		{[]string{"--replicas=1025"}, nil, false},
		{[]string{"--replicas=-1"}, nil, false},
		{nil, map[string]string{"GPULET_REPLICAS": "100000000"}, false},
	} {
		_, err := parse(t, tt.args, tt.env)
		if (err == nil) != tt.ok || (err != nil && !strings.Contains(err.Error(), "up to 1024")) {
			t.Errorf("%v %v: err %v, want ok %v", tt.args, tt.env, err, tt.ok)
		}
	}
}

// take-over: off by default; flag, GPULET_TAKE_OVER and gpulet.takeOver
// turn it on, in the usual precedence.
func TestTakeOverSetting(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("version: v1\ngpulet:\n  takeOver: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want bool
	}{
		{"default", nil, nil, false},
		{"flag", []string{"--take-over"}, nil, true},
		{"env", nil, map[string]string{"GPULET_TAKE_OVER": "true"}, true},
		{"file", []string{"--config-file=" + file}, nil, true},
		{"env over file", []string{"--config-file=" + file}, map[string]string{"GPULET_TAKE_OVER": "false"}, false},
		{"flag over env", []string{"--take-over=false"}, map[string]string{"GPULET_TAKE_OVER": "true"}, false},
	} {
		c, err := parse(t, tc.args, tc.env)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if c.TakeOver != tc.want {
			t.Errorf("%s: TakeOver = %v, want %v", tc.name, c.TakeOver, tc.want)
		}
	}
}
