package daemon

import (
	"github.com/gpulet/gpulet/internal/allocator"
	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/labels"
	"github.com/gpulet/gpulet/internal/mps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/resources"
)

// parse resolves `gpulet run`'s settings as the command does, with the
// layers' checks (Validate).
func parse(t *testing.T, args []string, env map[string]string) (*config.Config, error) {
	t.Helper()
	c := &config.Config{}
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	c.RunFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := c.Resolve(fs, func(k string) string { return env[k] }); err != nil {
		return nil, err
	}
	return c, Validate(c)
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// config spells out defaults that are other layers' values; they must agree.
func TestConfigDefaultsAreTheLayersOwn(t *testing.T) {
	if config.DefaultResourceName != resources.DefaultResourceName || config.DefaultMIGStrategy != resources.MIGNone ||
		config.DefaultDeviceListStrategy != plugin.StrategyEnvvar || config.DefaultDeviceIDStrategy != plugin.IDStrategyUUID ||
		config.DefaultSharedDevicesPolicy != string(allocator.PolicyDistributed) ||
		config.DefaultCDISpecDir != cdispec.DefaultDir || config.DefaultMachineTypeFile != labels.DefaultMachineTypeFile ||
		config.DefaultMPSControl != mps.DefaultControl {
		t.Error("config's defaults drifted from resources' and plugin's constants")
	}
	if _, err := parse(t, nil, nil); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

// A full NVIDIA config file, as the GPU operator and Helm chart write it.
const nvidiaFullFile = `version: v1
flags:
  migStrategy: none
  failOnInitError: true
  nvidiaDriverRoot: /run/nvidia/driver
  nvidiaDevRoot: /
  mpsRoot: /run/nvidia/mps
  gdsEnabled: false
  mofedEnabled: false
  useNodeFeatureAPI: false
  deviceDiscoveryStrategy: auto
  plugin:
    passDeviceSpecs: true
    deviceListStrategy: [envvar]
    deviceIDStrategy: uuid
    cdiAnnotationPrefix: cdi.k8s.io/
    nvidiaCTKPath: /usr/bin/nvidia-ctk
    containerDriverRoot: /driver-root
  gfd:
    oneshot: false
    noTimestamp: false
    outputFile: /etc/kubernetes/node-feature-discovery/features.d/gfd
    sleepInterval: 60s
sharing:
  timeSlicing:
    failRequestsGreaterThanOne: true
    resources:
    - name: nvidia.com/gpu
      rename: nvidia.com/gpu-shared
      devices: all
      replicas: 10
`

func TestPrecedenceFlagOverEnvOverFile(t *testing.T) {
	file := "../config/testdata/nvidia-with-gpulet.yaml" // NVIDIA's file as users have it, plus gpulet's section
	c, err := parse(t, []string{"--config-file", file}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Backend != "sim" || c.SimProfile != "dgx1-v100" || !c.PassDeviceSpecs || c.FailOnInitError ||
		strings.Join(c.DeviceListStrategy, ",") != "envvar,cdi-cri" || c.DeviceIDStrategy != "index" ||
		ResourcesConfig(c).Shares[0].Replicas != 4 || ResourcesConfig(c).Shares[0].Rename != "nvidia.com/gpu.shared" || c.HealthQuietPeriod != 2*time.Minute || c.DriverRoot != "/run/nvidia/driver" {
		t.Errorf("from file: %+v", c)
	}
	p, _ := HealthPolicy(c)
	if p.Decide(hardware.Event{Kind: hardware.EventXID, XID: 13}).Action != health.Reset {
		t.Error("XID override from the file not applied")
	}

	env := map[string]string{"CONFIG_FILE": file, "DEVICE_ID_STRATEGY": "uuid", "DEVICE_LIST_STRATEGY": "volume-mounts", "PASS_DEVICE_SPECS": "false"}
	c, err = parse(t, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.DeviceIDStrategy != "uuid" || strings.Join(c.DeviceListStrategy, ",") != "volume-mounts" || c.PassDeviceSpecs {
		t.Errorf("env should beat the file: %+v", c)
	}
	if c.Backend != "sim" {
		t.Errorf("file value lost when env sets others: backend %q", c.Backend)
	}

	c, err = parse(t, []string{"--device-id-strategy=index", "--device-list-strategy=cdi-annotations"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.DeviceIDStrategy != "index" || strings.Join(c.DeviceListStrategy, ",") != "cdi-annotations" {
		t.Errorf("flag should beat env: %+v", c)
	}
}

func TestNVIDIAFullFileLoads(t *testing.T) {
	c, err := parse(t, []string{"--config-file=" + writeFile(t, nvidiaFullFile)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rc := ResourcesConfig(c)
	if len(rc.Shares) != 1 || rc.Shares[0].Replicas != 10 || rc.Shares[0].Rename != "nvidia.com/gpu-shared" || !rc.FailRequestsGreaterThanOne || c.DriverRoot != "/run/nvidia/driver" || c.DevRoot != "/" {
		t.Errorf("resources %+v, driver root %q dev root %q", rc, c.DriverRoot, c.DevRoot)
	}
	notes := strings.Join(c.Notes, "\n")
	for _, want := range []string{"flags.gfd", "cdiAnnotationPrefix"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes do not mention %s:\n%s", want, notes)
		}
	}
	if strings.Contains(notes, "gdsEnabled") {
		t.Error("gdsEnabled: false changes nothing and needs no note")
	}
}

func TestBadInputIsExplained(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  map[string]string
		file string
		want string
	}{
		{"bad backend", []string{"--backend=cuda"}, nil, "", `backend "cuda"`},
		{"bad list strategy env", nil, map[string]string{"DEVICE_LIST_STRATEGY": "envvar,foo"}, "", `"foo" is not one of`},
		{"bad id strategy", []string{"--device-id-strategy=serial"}, nil, "", `"serial" is not one of uuid, index`},
		{"bad bool env", nil, map[string]string{"PASS_DEVICE_SPECS": "maybe"}, "", "environment variable PASS_DEVICE_SPECS"},
		{"bad mig", nil, map[string]string{"MIG_STRATEGY": "some"}, "", `MIG strategy "some"`},
		{"unknown file field", nil, nil, "version: v1\nflags:\n  plugin:\n    passDeviceSpec: true\n", "unknown field"},
		{"bad version", nil, nil, "version: v2\n", `version "v2"`},
		{"bad xid action", []string{"--xid-policy=48=panic"}, nil, "", `unknown action "panic"`},
		{"bad disable list", nil, map[string]string{"DP_DISABLE_HEALTHCHECKS": "xid48"}, "", "not an XID number"},
		{"bad resource", []string{"--resource-name=gpu"}, nil, "", "needs a domain"},
		{"bad log format", []string{"--log-format=xml"}, nil, "", "log-format"},
		{"bad extra label key", []string{"--extra-labels=bad key=x"}, nil, "", `label key "bad key"`},
		{"bad extra label value", []string{"--extra-labels=a=has space"}, nil, "", "invalid value"},
		{"bad policy flag", []string{"--shared-devices-allocation-policy=spread"}, nil, "", `"spread" is not one of distributed, packed`},
		{"bad policy env", nil, map[string]string{"SHARED_DEVICES_ALLOCATION_POLICY": "Packed"}, "", `"Packed" is not one of distributed, packed`},
		{"bad policy file", nil, nil, "version: v1\nflags:\n  plugin:\n    sharedDevicesAllocationPolicy: balanced\n", `"balanced" is not one of distributed, packed`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append(args, "--config-file="+writeFile(t, tc.file))
			}
			_, err := parse(t, args, tc.env)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
	if _, err := parse(t, []string{"--config-file=/nonexistent/gpulet.yaml"}, nil); err == nil || !strings.Contains(err.Error(), "read config file") {
		t.Errorf("missing file: %v", err)
	}
}

func TestDisableHealthChecks(t *testing.T) {
	c, err := parse(t, nil, map[string]string{"DP_DISABLE_HEALTHCHECKS": "all"})
	if err != nil || !HealthDisabled(c) {
		t.Fatalf("all: %v %v", HealthDisabled(c), err)
	}
	c, err = parse(t, nil, map[string]string{"DP_DISABLE_HEALTHCHECKS": "48,79"})
	if err != nil || HealthDisabled(c) {
		t.Fatal(err)
	}
	p, _ := HealthPolicy(c)
	if p.Decide(hardware.Event{Kind: hardware.EventXID, XID: 48}).Action != health.Ignore {
		t.Error("listed XID not ignored")
	}
	if p.Decide(hardware.Event{Kind: hardware.EventXID, XID: 95}).Action != health.Reset {
		t.Error("unlisted XID ignored")
	}
}
