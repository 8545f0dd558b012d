package validate

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestPlanEnv(t *testing.T) {
	mig := "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
	tests := []struct {
		name    string
		env     map[string]string
		dir     []string // what the volume-mounts folder holds
		dirErr  error
		set     bool
		setTo   string
		expect  []string // nil: nothing checked
		noteHas string
	}{
		{name: "nothing set", env: map[string]string{}, noteHas: "not set: validating every GPU"},
		{name: "empty is unset", env: map[string]string{NvidiaVisibleDevices: " "}, noteHas: "not set"},
		{name: "only CUDA_VISIBLE_DEVICES", env: map[string]string{CUDAVisibleDevices: "1"}, noteHas: "CUDA_VISIBLE_DEVICES=1 is used as it is"},
		{
			name: "one UUID from the plugin",
			env:  map[string]string{NvidiaVisibleDevices: uuidA},
			set:  true, setTo: uuidA, expect: []string{uuidA}, noteHas: "set to the same UUIDs",
		},
		{
			name: "UUID list with spaces and empty entries",
			env:  map[string]string{NvidiaVisibleDevices: " " + uuidA + " ,, " + uuidB + ","},
			set:  true, setTo: uuidA + "," + uuidB, expect: []string{uuidA, uuidB},
		},
		{
			name: "MIG UUID",
			env:  map[string]string{NvidiaVisibleDevices: mig},
			set:  true, setTo: mig, expect: []string{mig},
		},
		{name: "all", env: map[string]string{NvidiaVisibleDevices: "all"}, noteHas: "=all: validating every GPU"},
		{name: "void (CDI)", env: map[string]string{NvidiaVisibleDevices: "void"}, noteHas: "passed another way (CDI)"},
		{
			name: "none hides every GPU",
			env:  map[string]string{NvidiaVisibleDevices: "none"},
			set:  true, setTo: "", expect: []string{}, noteHas: "CUDA_VISIBLE_DEVICES is set empty",
		},
		{
			name:   "none with CUDA_VISIBLE_DEVICES set leaves it",
			env:    map[string]string{NvidiaVisibleDevices: "none", CUDAVisibleDevices: "0"},
			expect: []string{}, noteHas: "no GPU was allocated",
		},
		{
			name:    "indices are not translated",
			env:     map[string]string{NvidiaVisibleDevices: "0,2"},
			noteHas: "lists device indices (0,2), which a container runtime renumbers",
		},
		{
			name:    "a mix of index and UUID is not translated",
			env:     map[string]string{NvidiaVisibleDevices: uuidA + ",1"},
			noteHas: "device indices",
		},
		{
			name:    "CUDA_VISIBLE_DEVICES set differently wins",
			env:     map[string]string{NvidiaVisibleDevices: uuidA, CUDAVisibleDevices: uuidB},
			noteHas: "CUDA_VISIBLE_DEVICES=" + uuidB + " is set and wins",
		},
		{
			name:   "CUDA_VISIBLE_DEVICES already the same list",
			env:    map[string]string{NvidiaVisibleDevices: uuidA + "," + uuidB, CUDAVisibleDevices: uuidA + ", " + uuidB},
			expect: []string{uuidA, uuidB}, noteHas: "already names the same UUIDs",
		},
		{
			name: "volume-mounts folder, sorted",
			env:  map[string]string{NvidiaVisibleDevices: VolumeMountRoot},
			dir:  []string{uuidB, uuidA},
			set:  true, setTo: uuidA + "," + uuidB, expect: []string{uuidA, uuidB},
			noteHas: "the device files in " + VolumeMountRoot,
		},
		{
			name:    "volume-mounts folder missing",
			env:     map[string]string{NvidiaVisibleDevices: VolumeMountRoot},
			dirErr:  os.ErrNotExist,
			noteHas: "cannot be read: file does not exist",
		},
		{
			name:    "volume-mounts folder empty",
			env:     map[string]string{NvidiaVisibleDevices: VolumeMountRoot},
			dir:     []string{},
			noteHas: "lists no device",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			readDir := func(dir string) ([]string, error) {
				if dir != VolumeMountRoot {
					t.Errorf("read folder %q", dir)
				}
				return append([]string(nil), tt.dir...), tt.dirErr
			}
			p := PlanEnv(lookup, readDir)
			if p.Set != tt.set || p.SetCUDAVisible != tt.setTo {
				t.Errorf("sets CUDA_VISIBLE_DEVICES: %v %q, want %v %q", p.Set, p.SetCUDAVisible, tt.set, tt.setTo)
			}
			if !reflect.DeepEqual(p.Expected, tt.expect) {
				t.Errorf("Expected = %#v, want %#v", p.Expected, tt.expect)
			}
			if !strings.Contains(p.Note, tt.noteHas) {
				t.Errorf("Note = %q, want it to contain %q", p.Note, tt.noteHas)
			}
			v, ok := tt.env[NvidiaVisibleDevices]
			if p.NvidiaVisible != v || p.NvidiaSet != ok {
				t.Errorf("NVIDIA_VISIBLE_DEVICES recorded as %q %v", p.NvidiaVisible, p.NvidiaSet)
			}
		})
	}
}

func TestApply(t *testing.T) {
	tests := []struct {
		name string
		plan EnvPlan
		want map[string]string
	}{
		{"nothing to set", EnvPlan{}, map[string]string{}},
		{"a list", EnvPlan{Set: true, SetCUDAVisible: uuidA}, map[string]string{CUDAVisibleDevices: uuidA}},
		{"empty hides all", EnvPlan{Set: true}, map[string]string{CUDAVisibleDevices: ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]string{}
			err := tt.plan.Apply(func(k, v string) error { got[k] = v; return nil })
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Apply set %v (err %v), want %v", got, err, tt.want)
			}
		})
	}
	boom := errors.New("boom")
	if err := (EnvPlan{Set: true}).Apply(func(string, string) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Apply hid the setenv error: %v", err)
	}
}

func TestReadDeviceDir(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{uuidA, uuidB} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ReadDeviceDir(dir)
	if err != nil || !reflect.DeepEqual(got, []string{uuidA, uuidB}) {
		t.Errorf("ReadDeviceDir = %v, %v", got, err)
	}
	if _, err := ReadDeviceDir(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing folder: %v", err)
	}
}
