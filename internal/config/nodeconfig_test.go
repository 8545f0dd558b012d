package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// WithFile reads the settings again with another file: the command line and
// the environment keep winning over the file, the file fills the rest, and
// the previous file's values do not stay behind.
func TestWithFileKeepsFlagsAndEnv(t *testing.T) {
	dir := t.TempDir()
	ts4 := filepath.Join(dir, "ts4")
	mig := filepath.Join(dir, "mig")
	for path, body := range map[string]string{
		ts4: "version: v1\nflags: {migStrategy: none}\nsharing:\n  timeSlicing:\n    resources:\n    - {name: nvidia.com/gpu, replicas: 4}\n",
		mig: "version: v1\nflags: {migStrategy: mixed, plugin: {deviceIDStrategy: index}}\n",
	} {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{"CONFIG_FILE_SRCDIR": dir, "DEVICE_LIST_STRATEGY": "cdi-cri,envvar", "CONFIG_FILE": ""}
	c := &Config{}
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	c.RunFlags(fs)
	if err := fs.Parse([]string{"--backend=sim", "--extra-labels=a=b,c=d", "--pass-device-specs"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Resolve(fs, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.NodeConfig.Dir != dir || c.NodeConfig.Label != DefaultNodeConfigLabel || !slices.Equal(c.NodeConfig.Fallbacks, []string{"named", "single"}) {
		t.Fatalf("node config settings %+v", c.NodeConfig)
	}
	// The environment's CONFIG_FILE is set later, as a chart would: the chosen file replaces it.
	env["CONFIG_FILE"] = "/etc/other.yaml"
	a, err := c.WithFile(ts4)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Validate(); err != nil {
		t.Fatalf("the chosen file is refused: %v", err)
	}
	if a.ConfigFile != ts4 || a.Sharing.Strategy != SharingTimeSlicing || a.Sharing.Resources[0].Replicas != 4 {
		t.Errorf("ts4: file %s, sharing %+v", a.ConfigFile, a.Sharing)
	}
	if a.Backend != "sim" || !a.PassDeviceSpecs || a.Labels.Extra["c"] != "d" || len(a.Labels.Extra) != 2 ||
		!slices.Equal(a.DeviceListStrategy, []string{"cdi-cri", "envvar"}) || a.NodeConfig.Dir != dir {
		t.Errorf("flags and environment lost: backend %s, pass %v, extra %v, strategies %v, dir %s",
			a.Backend, a.PassDeviceSpecs, a.Labels.Extra, a.DeviceListStrategy, a.NodeConfig.Dir)
	}
	b, err := a.WithFile(mig)
	if err != nil {
		t.Fatal(err)
	}
	if b.MIGStrategy != "mixed" || b.DeviceIDStrategy != "index" || b.Sharing.Strategy != SharingNone {
		t.Errorf("mig: strategy %s, ids %s, sharing %+v (ts4's left behind?)", b.MIGStrategy, b.DeviceIDStrategy, b.Sharing)
	}
	e, err := b.WithFile("")
	if err != nil {
		t.Fatal(err)
	}
	if e.ConfigFile != "" || e.MIGStrategy != DefaultMIGStrategy || e.DeviceIDStrategy != DefaultDeviceIDStrategy {
		t.Errorf("empty config: file %q, mig %s, ids %s", e.ConfigFile, e.MIGStrategy, e.DeviceIDStrategy)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("version: v1\nsharing: {timeSlicing: {resources: [{name: gpu, replicas: 1}]}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WithFile(bad); err == nil || !strings.Contains(err.Error(), "replicas=1") {
		t.Errorf("a bad file: %v", err)
	}
	if _, err := (&Config{}).WithFile(ts4); err == nil {
		t.Error("WithFile without Resolve worked")
	}
}

func TestNodeConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		nc   NodeConfigSettings
		file string
		err  string
	}{
		{name: "off", nc: NodeConfigSettings{Label: DefaultNodeConfigLabel}},
		{name: "on", nc: NodeConfigSettings{Dir: "/x", Label: DefaultNodeConfigLabel, Fallbacks: []string{"named", "single", "empty"}}},
		{name: "bad fallback", nc: NodeConfigSettings{Fallbacks: []string{"first"}}, err: `"first" is not one of`},
		{name: "no label", nc: NodeConfigSettings{Dir: "/x"}, err: "node-label must not be empty"},
		{name: "both files", nc: NodeConfigSettings{Dir: "/x", Label: "l"}, file: "/etc/c.yaml", err: "are both set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Config{NodeConfig: tc.nc, ConfigFile: tc.file}
			err := c.validateNodeConfig()
			if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("err %v, want %q", err, tc.err)
			}
		})
	}
}
