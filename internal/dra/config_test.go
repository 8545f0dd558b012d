package dra

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/mps"
)

func opaque(driver, params string) resourceapi.DeviceAllocationConfiguration {
	js, err := yaml.YAMLToJSON([]byte(params))
	if err != nil {
		panic(err)
	}
	return resourceapi.DeviceAllocationConfiguration{Source: resourceapi.AllocationConfigSourceClaim, DeviceConfiguration: resourceapi.DeviceConfiguration{
		Opaque: &resourceapi.OpaqueDeviceConfiguration{Driver: driver, Parameters: runtime.RawExtension{Raw: js}},
	}}
}

// Decoding is strict and validates as NVIDIA's driver does; gpulet then
// applies what it can and refuses the rest with a reason.
func TestDeviceConfigs(t *testing.T) {
	const hdr = "apiVersion: resource.nvidia.com/v1beta1\n"
	tests := []struct {
		name    string
		configs []resourceapi.DeviceAllocationConfiguration
		mig     bool
		wantErr string // "" = applied (with the capabilities the simulator has)
		bareErr string // "" = as wantErr; else the error without them (no compute policy, no MPS)
	}{
		{"no config", nil, false, "", ""},
		{"empty GpuConfig", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig")}, false, "", ""},
		{"another driver's config is ignored", []resourceapi.DeviceAllocationConfiguration{opaque("nic.example.com", "anything: [1]")}, false, "", ""},
		{"not opaque", []resourceapi.DeviceAllocationConfiguration{{Source: resourceapi.AllocationConfigSourceClaim}}, false, "only opaque parameters", ""},
		{"unknown field", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharin: {}")}, false, "unknown field", ""},
		{"unknown kind", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: VfioDeviceConfig")}, false, "kind", ""},
		{"wrong version", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, "apiVersion: resource.nvidia.com/v1alpha1\nkind: GpuConfig")}, false, "apiVersion", ""},
		{"unknown strategy", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: Exclusive}")}, false, "unknown GPU sharing strategy", ""},
		{"unknown interval", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: TimeSlicing, timeSlicingConfig: {interval: Forever}}")}, false, "unknown time-slice interval", ""},
		{"TimeSlicing with an MPS config", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: TimeSlicing, mpsConfig: {}}")}, false, "cannot use mpsConfig", ""},
		{"thread percentage over 100", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: MPS, mpsConfig: {defaultActiveThreadPercentage: 101}}")}, false, "between 0 and 100", ""},
		{"pinned limit below 1Mi", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: MPS, mpsConfig: {defaultPinnedDeviceMemoryLimit: 10Ki}}")}, false, "invalid limit", ""},
		{"TimeSlicing defaults to the Default interval: applied", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: TimeSlicing}")}, false, "", ""},
		{"TimeSlicing Long", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: TimeSlicing, timeSlicingConfig: {interval: Long}}")}, false, "", "cannot set time-slice intervals"},
		{"MPS", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: MPS}")}, false, "", "cannot start MPS control daemons"},
		{"MPS multi-user: refused", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: MPS, mpsConfig: {multiUser: true}}")}, false, "multi-user", "cannot start MPS"},
		{"MPS pinned limit of a device index the config lacks", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: MPS, mpsConfig: {defaultPerDevicePinnedMemoryLimit: {\"1\": 1Gi}}}")}, false, "invalid device index 1", "cannot start MPS"},
		{"MPS pinned limit of a device that is neither UUID nor index", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: MPS, mpsConfig: {defaultPerDevicePinnedMemoryLimit: {GPU-other: 1Gi}}}")}, false, "neither a UUID", "cannot start MPS"},
		{"MigDeviceConfig MPS", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: MigDeviceConfig\nsharing: {strategy: MPS, mpsConfig: {defaultActiveThreadPercentage: 30}}")}, true, "", "cannot start MPS"},
		{"MigDeviceConfig TimeSlicing sets nothing", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: MigDeviceConfig\nsharing: {strategy: TimeSlicing}")}, true, "", ""},
		{"a GpuConfig for all requests does not touch a MIG device", []resourceapi.DeviceAllocationConfiguration{opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: MPS}")}, true, "", ""},
		{"a GpuConfig naming a MIG request", func() []resourceapi.DeviceAllocationConfiguration {
			c := opaque(DriverName, hdr+"kind: GpuConfig")
			c.Requests = []string{"gpu"}
			return []resourceapi.DeviceAllocationConfiguration{c}
		}(), true, "cannot apply GpuConfig", ""},
		{"the claim's config overrides the class's", func() []resourceapi.DeviceAllocationConfiguration {
			claim := opaque(DriverName, hdr+"kind: GpuConfig")
			class := opaque(DriverName, hdr+"kind: GpuConfig\nsharing: {strategy: MPS}")
			class.Source = resourceapi.AllocationConfigSourceClass
			return []resourceapi.DeviceAllocationConfiguration{claim, class}
		}(), false, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := applyConfig(capable, tc.configs, "gpu", tc.mig)
			if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
			bare := tc.bareErr
			if bare == "" {
				bare = tc.wantErr
			}
			_, err = applyConfig(SharingControl{}, tc.configs, "gpu", tc.mig)
			if (err == nil) != (bare == "") || (err != nil && !strings.Contains(err.Error(), bare)) {
				t.Fatalf("without compute policy and MPS: error %v, want %q", err, bare)
			}
		})
	}
}

// capable has what the simulator has: a compute policy and MPS control
// (planning starts nothing).
var capable = SharingControl{Policy: hardware.NvidiaSMI{Path: "/nonexistent"}, MPS: &mps.Manager{}}

// applyConfig plans the sharing of the config the request gets, for one
// whole GPU (or MIG instance).
func applyConfig(ctl SharingControl, configs []resourceapi.DeviceAllocationConfiguration, request string, mig bool) (*appliedSharing, error) {
	cs, err := decodeConfigs(configs)
	if err != nil {
		return nil, err
	}
	c, err := configFor(cs, request, mig)
	if err != nil {
		return nil, err
	}
	dev := sharedDevice{UUID: "GPU-x", GPU: "GPU-x"}
	if mig {
		dev = sharedDevice{UUID: "MIG-x"}
	}
	return ctl.planSharing("uid", c, []sharedDevice{dev}, false)
}

// NVIDIA's quickstart claims (test/e2e/testdata/quickstart, unchanged): each
// request's configuration is applied (on a node with the simulator's
// capabilities). gpu-test6 selects on an `index` attribute no driver
// publishes: the scheduler, not Prepare, fails it.
func TestQuickstartClaims(t *testing.T) {
	want := map[string]map[string]string{ // file → request → error substring ("" = runs)
		"gpu-test1.yaml":    {"gpu": ""},
		"gpu-test2.yaml":    {"gpu": ""},
		"gpu-test3.yaml":    {"gpu": ""},
		"gpu-test4.yaml":    {"mig-1g-5gb-0": "", "mig-1g-5gb-1": "", "mig-2g-10gb": "", "mig-3g-20gb": ""},
		"gpu-test5.yaml":    {"ts-gpu": "", "mps-gpu": ""},
		"gpu-test6.yaml":    {"gpu": ""},
		"gpu-test-mps.yaml": {"mps-gpu": ""},
	}
	for file, reqs := range want {
		t.Run(file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("..", "..", "test", "e2e", "testdata", "quickstart", file))
			if err != nil {
				t.Fatal(err)
			}
			seen := 0
			for _, doc := range strings.Split(string(data), "\n---") {
				var head struct{ Kind string }
				if yaml.Unmarshal([]byte(doc), &head) != nil {
					continue
				}
				var spec resourceapi.DeviceClaim
				switch head.Kind {
				case "ResourceClaim":
					var c resourceapi.ResourceClaim
					if err := yaml.UnmarshalStrict([]byte(doc), &c); err != nil {
						t.Fatal(err)
					}
					spec = c.Spec.Devices
				case "ResourceClaimTemplate":
					var c resourceapi.ResourceClaimTemplate
					if err := yaml.UnmarshalStrict([]byte(doc), &c); err != nil {
						t.Fatal(err)
					}
					spec = c.Spec.Spec.Devices
				default:
					continue
				}
				// What the scheduler copies into the allocation: the
				// claim's configs, marked as the claim's.
				var configs []resourceapi.DeviceAllocationConfiguration
				for _, c := range spec.Config {
					configs = append(configs, resourceapi.DeviceAllocationConfiguration{
						Source: resourceapi.AllocationConfigSourceClaim, Requests: c.Requests, DeviceConfiguration: c.DeviceConfiguration})
				}
				for _, r := range spec.Requests {
					wantErr, ok := reqs[r.Name]
					if !ok || r.Exactly == nil {
						t.Fatalf("request %s not expected", r.Name)
					}
					seen++
					_, err := applyConfig(capable, configs, r.Name, r.Exactly.DeviceClassName == "mig.nvidia.com")
					if (err == nil) != (wantErr == "") || (err != nil && !strings.Contains(err.Error(), wantErr)) {
						t.Errorf("request %s: error %v, want %q", r.Name, err, wantErr)
					}
				}
			}
			if seen != len(reqs) {
				t.Errorf("%d requests checked, want %d", seen, len(reqs))
			}
		})
	}
}

// Any opaque parameters: decoding never panics, a decoded config is valid
// (validate accepts it again), and planning its sharing for two GPUs,
// with and without the capabilities, never panics and, for MPS, gives
// limits only for those GPUs, in whole MiB.
func FuzzDecodeDeviceConfig(f *testing.F) {
	for _, seed := range []string{
		`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig"}`,
		`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`,
		`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultActiveThreadPercentage":50,"defaultPinnedDeviceMemoryLimit":"10Gi","defaultPerDevicePinnedMemoryLimit":{"1":"5Gi","GPU-a":"1Mi"}}}}`,
		`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"MPS"}}`,
		`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"multiUser":true}}}`,
		`{"kind":"GpuConfig","sharing":null}`,
	} {
		f.Add([]byte(seed))
	}
	uuids := []string{"GPU-a", "GPU-b"}
	devs := []sharedDevice{{UUID: "GPU-a", GPU: "GPU-a"}, {UUID: "GPU-b", GPU: "GPU-b"}}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := DecodeDeviceConfig(raw)
		if err != nil {
			return
		}
		if err := c.validate(); err != nil {
			t.Fatalf("decoded config fails validation: %v", err)
		}
		for _, ctl := range []SharingControl{capable, {}} {
			a, err := ctl.planSharing("uid", c, devs, false)
			if err != nil || a == nil || a.MPS == nil {
				continue
			}
			for dev, l := range a.MPS.PinnedMemLimits {
				if !slices.Contains(uuids, dev) || !strings.HasSuffix(l, "M") || strings.HasPrefix(l, "0") || strings.HasPrefix(l, "-") {
					t.Fatalf("pinned limit %q for %q", l, dev)
				}
			}
		}
	})
}
