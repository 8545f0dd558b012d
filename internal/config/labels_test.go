package config

import (
	"maps"
	"strings"
	"testing"
)

const labelsFileBody = `version: v1
flags:
  gfd:
    noTimestamp: true
    machineTypeFile: /host/sys/class/dmi/id/product_name
    outputFile: /out/gfd
    sleepInterval: 60s
gpulet:
  labels:
    node: "off"
    extra:
      accelerator: nvidia
      team: ml
`

func TestLabelSettingsPrecedence(t *testing.T) {
	file := writeFile(t, labelsFileBody)
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantExtra map[string]string
		wantMode  string
		wantMTF   string
		wantNoTS  bool
	}{
		{"defaults", nil, nil, map[string]string{}, "auto", "/sys/class/dmi/id/product_name", false},
		{"file", []string{"--config-file=" + file}, nil, map[string]string{"accelerator": "nvidia", "team": "ml"}, "off", "/host/sys/class/dmi/id/product_name", true},
		{"env over file", []string{"--config-file=" + file},
			map[string]string{"GPULET_EXTRA_LABELS": "accelerator=gpu", "GPULET_NODE_LABELS": "on", "GFD_NO_TIMESTAMP": "false", "NODE_NAME": "n1"},
			map[string]string{"accelerator": "gpu"}, "on", "/host/sys/class/dmi/id/product_name", false},
		{"flag over env", []string{"--config-file=" + file, "--extra-labels=a=b,c=d", "--machine-type-file=/x"},
			map[string]string{"GPULET_EXTRA_LABELS": "accelerator=gpu"}, map[string]string{"a": "b", "c": "d"}, "off", "/x", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, tt.args, tt.env)
			if err != nil {
				t.Fatal(err)
			}
			l := c.Labels
			if !maps.Equal(l.Extra, tt.wantExtra) && !(len(l.Extra) == 0 && len(tt.wantExtra) == 0) {
				t.Errorf("extra = %v, want %v", l.Extra, tt.wantExtra)
			}
			if l.NodeLabels != tt.wantMode || l.MachineTypeFile != tt.wantMTF || l.NoTimestamp != tt.wantNoTS {
				t.Errorf("mode %q machine file %q no-timestamp %v; want %q %q %v", l.NodeLabels, l.MachineTypeFile, l.NoTimestamp, tt.wantMode, tt.wantMTF, tt.wantNoTS)
			}
		})
	}
}

func TestGFDNotes(t *testing.T) {
	c, err := parse(t, []string{"--config-file=" + writeFile(t, labelsFileBody)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	notes := strings.Join(c.Notes, "\n")
	if !strings.Contains(notes, "flags.gfd.sleepInterval") || strings.Contains(notes, "machineTypeFile") || strings.Contains(notes, "noTimestamp") {
		t.Errorf("notes should name only the unused gfd fields:\n%s", notes)
	}
	if _, err := parse(t, []string{"--config-file=" + writeFile(t, "version: v1\nflags:\n  gfd:\n    machineTypFile: /x\n")}, nil); err == nil || !strings.Contains(err.Error(), `"machineTypFile"`) {
		t.Errorf("a typo in flags.gfd: err = %v, want it named", err)
	}
}

func TestLabelSettingsRefused(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--node-labels=maybe"}, `node-labels "maybe"`},
	} {
		if _, err := parse(t, tt.args, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want %q", tt.args, err, tt.want)
		}
	}
}

func TestPublishNodeLabels(t *testing.T) {
	inPod := map[string]string{"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
	tests := []struct {
		mode, node string
		env        map[string]string
		want       bool
		wantErr    bool
	}{
		{"auto", "n1", inPod, true, false},
		{"auto", "", inPod, false, false},
		{"auto", "n1", nil, false, false},
		{"off", "n1", inPod, false, false},
		{"on", "n1", nil, true, false},
		{"on", "", inPod, false, true},
	}
	for _, tt := range tests {
		c := &Config{Labels: LabelConfig{NodeLabels: tt.mode, NodeName: tt.node}}
		got, err := c.PublishNodeLabels(func(k string) string { return tt.env[k] })
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("mode %s node %q env %v: %v, %v; want %v, error %v", tt.mode, tt.node, tt.env, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestNodeFeatureAPISettings: GFD's useNodeFeatureAPI from the file, its
// environment variable and the flag, in that order of precedence; the
// namespace and pod from the downward API's variables (or GFD's NAMESPACE).
func TestNodeFeatureAPISettings(t *testing.T) {
	on := writeFile(t, "version: v1\nflags:\n  useNodeFeatureAPI: true\n")
	for _, tt := range []struct {
		name    string
		args    []string
		env     map[string]string
		wantAPI bool
		wantNS  string
		wantPod string
	}{
		{"default", nil, nil, false, "", ""},
		{"file", []string{"--config-file=" + on}, nil, true, "", ""},
		{"env over file", []string{"--config-file=" + on}, map[string]string{"USE_NODE_FEATURE_API": "false"}, false, "", ""},
		{"flag over env", []string{"--use-node-feature-api"}, map[string]string{"USE_NODE_FEATURE_API": "false"}, true, "", ""},
		{"downward API", nil, map[string]string{"USE_NODE_FEATURE_API": "true", "POD_NAMESPACE": "gpu-resources", "KUBERNETES_NAMESPACE": "x", "NAMESPACE": "y", "POD_NAME": "gpulet-abcde"},
			true, "gpu-resources", "gpulet-abcde"},
		{"KUBERNETES_NAMESPACE", nil, map[string]string{"KUBERNETES_NAMESPACE": "x", "NAMESPACE": "y"}, false, "x", ""},
		{"GFD's NAMESPACE", nil, map[string]string{"NAMESPACE": "y"}, false, "y", ""},
		{"flag over env", []string{"--namespace=z", "--pod-name=p"}, map[string]string{"POD_NAMESPACE": "gpu-resources", "POD_NAME": "q"}, false, "z", "p"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, tt.args, tt.env)
			if err != nil {
				t.Fatal(err)
			}
			if l := c.Labels; l.NodeFeatureAPI != tt.wantAPI || l.Namespace != tt.wantNS || l.PodName != tt.wantPod {
				t.Errorf("node feature API %v namespace %q pod %q; want %v %q %q", l.NodeFeatureAPI, l.Namespace, l.PodName, tt.wantAPI, tt.wantNS, tt.wantPod)
			}
			if strings.Contains(strings.Join(c.Notes, "\n"), "useNodeFeatureAPI") {
				t.Errorf("useNodeFeatureAPI is used now, yet noted as unused: %v", c.Notes)
			}
		})
	}
}
