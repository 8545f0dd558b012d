package dra

// Claim configuration in NVIDIA's API (resource.nvidia.com/v1beta1
// GpuConfig and MigDeviceConfig), decoded as strictly as NVIDIA's driver
// decodes it, with its defaults and validation. The types are gpulet's;
// the field names, values and rules are NVIDIA's (facts from
// kubernetes-sigs/dra-driver-nvidia-gpu api/nvidia.com/resource/v1beta1).

import (
	bytespkg "bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// ConfigAPIVersion is the apiVersion of NVIDIA's opaque claim parameters.
const ConfigAPIVersion = "resource.nvidia.com/v1beta1"

// Kinds of NVIDIA's device configs gpulet reads.
const (
	KindGpuConfig       = "GpuConfig"
	KindMigDeviceConfig = "MigDeviceConfig"
)

// Sharing strategies and time-slice intervals, NVIDIA's values.
const (
	StrategyTimeSlicing = "TimeSlicing"
	StrategyMPS         = "MPS"

	IntervalDefault = "Default"
	IntervalShort   = "Short"
	IntervalMedium  = "Medium"
	IntervalLong    = "Long"
)

// DeviceConfig is a decoded GpuConfig or MigDeviceConfig.
type DeviceConfig struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Sharing    *Sharing `json:"sharing,omitempty"`
}

// Sharing is GpuSharing (both configs) or MigDeviceSharing (MPS only
// takes a config there).
type Sharing struct {
	Strategy          string             `json:"strategy"`
	TimeSlicingConfig *TimeSlicingConfig `json:"timeSlicingConfig,omitempty"`
	MpsConfig         *MpsConfig         `json:"mpsConfig,omitempty"`
}

type TimeSlicingConfig struct {
	Interval *string `json:"interval,omitempty"`
}

type MpsConfig struct {
	DefaultActiveThreadPercentage     *int                         `json:"defaultActiveThreadPercentage,omitempty"`
	DefaultPinnedDeviceMemoryLimit    *resource.Quantity           `json:"defaultPinnedDeviceMemoryLimit,omitempty"`
	DefaultPerDevicePinnedMemoryLimit map[string]resource.Quantity `json:"defaultPerDevicePinnedMemoryLimit,omitempty"`
	MultiUser                         *bool                        `json:"multiUser,omitempty"`
}

// DecodeDeviceConfig decodes one opaque parameter object strictly: an
// unknown field, apiVersion or kind is an error. It then applies NVIDIA's
// defaults (TimeSlicing without settings: interval Default; MPS without
// settings: an empty MPS config) and validation.
func DecodeDeviceConfig(raw []byte) (*DeviceConfig, error) {
	var c DeviceConfig
	dec := json.NewDecoder(bytespkg.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decode %s device config: %w", ConfigAPIVersion, err)
	}
	if c.APIVersion != ConfigAPIVersion {
		return nil, fmt.Errorf("device config apiVersion %q: gpulet reads %s", c.APIVersion, ConfigAPIVersion)
	}
	if c.Kind != KindGpuConfig && c.Kind != KindMigDeviceConfig {
		return nil, fmt.Errorf("device config kind %q: gpulet reads %s and %s", c.Kind, KindGpuConfig, KindMigDeviceConfig)
	}
	if c.Kind == KindMigDeviceConfig && c.Sharing != nil && c.Sharing.TimeSlicingConfig != nil {
		return nil, fmt.Errorf("decode %s: MigDeviceConfig.sharing has no timeSlicingConfig", ConfigAPIVersion)
	}
	c.normalize()
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("invalid %s: %w", c.Kind, err)
	}
	return &c, nil
}

func (c *DeviceConfig) normalize() {
	s := c.Sharing
	switch {
	case s == nil:
	case s.Strategy == StrategyTimeSlicing && s.TimeSlicingConfig == nil && c.Kind == KindGpuConfig:
		def := IntervalDefault
		s.TimeSlicingConfig = &TimeSlicingConfig{Interval: &def}
	case s.Strategy == StrategyMPS && s.MpsConfig == nil:
		s.MpsConfig = &MpsConfig{}
	}
}

func (c *DeviceConfig) validate() error {
	s := c.Sharing
	if s == nil {
		return nil
	}
	switch s.Strategy {
	case StrategyTimeSlicing:
		if s.MpsConfig != nil {
			return fmt.Errorf("cannot use mpsConfig with the %q strategy", StrategyTimeSlicing)
		}
		if c.Kind == KindMigDeviceConfig {
			return nil
		}
		iv := ""
		if s.TimeSlicingConfig.Interval != nil {
			iv = *s.TimeSlicingConfig.Interval
		}
		switch iv {
		case IntervalDefault, IntervalShort, IntervalMedium, IntervalLong:
			return nil
		}
		return fmt.Errorf("unknown time-slice interval: %q, supported time-slice intervals: %s, %s, %s, %s",
			iv, IntervalDefault, IntervalShort, IntervalMedium, IntervalLong)
	case StrategyMPS:
		if s.TimeSlicingConfig != nil {
			return fmt.Errorf("cannot use timeSlicingConfig with the %q strategy", StrategyMPS)
		}
		if p := s.MpsConfig.DefaultActiveThreadPercentage; p != nil && (*p < 0 || *p > 100) {
			return fmt.Errorf("active thread percentage %d must be between 0 and 100", *p)
		}
		if l := s.MpsConfig.DefaultPinnedDeviceMemoryLimit; l != nil && l.Value()>>20 <= 0 {
			return fmt.Errorf("invalid limit: default pinned device memory limit %s is below 1Mi", l.String())
		}
		for k, v := range s.MpsConfig.DefaultPerDevicePinnedMemoryLimit {
			if v.Value()>>20 <= 0 {
				return fmt.Errorf("invalid limit: pinned device memory limit %s of device %q is below 1Mi", v.String(), k)
			}
		}
		return nil
	}
	return fmt.Errorf("unknown GPU sharing strategy: %q, supported GPU sharing strategies: %s, %s", s.Strategy, StrategyTimeSlicing, StrategyMPS)
}

// opaqueConfig is one decoded config with the requests it names (none:
// every request of a matching device type).
type opaqueConfig struct {
	requests []string
	config   *DeviceConfig
}

// decodeConfigs reads an allocation's configs in precedence order (the
// class's, then the claim's; later wins): configs for other drivers are
// skipped, as NVIDIA's driver skips them; a config that is not opaque is
// an error, as it is there.
func decodeConfigs(configs []resourceapi.DeviceAllocationConfiguration) ([]opaqueConfig, error) {
	var class, claim []resourceapi.DeviceAllocationConfiguration
	for _, c := range configs {
		switch c.Source {
		case resourceapi.AllocationConfigSourceClass:
			class = append(class, c)
		case resourceapi.AllocationConfigSourceClaim:
			claim = append(claim, c)
		default:
			return nil, fmt.Errorf("invalid config source %q", c.Source)
		}
	}
	var out []opaqueConfig
	for _, c := range append(class, claim...) {
		if c.Opaque == nil {
			return nil, errors.New("only opaque parameters are supported by this driver")
		}
		if c.Opaque.Driver != DriverName {
			continue
		}
		dc, err := DecodeDeviceConfig(c.Opaque.Parameters.Raw)
		if err != nil {
			return nil, err
		}
		out = append(out, opaqueConfig{requests: c.Requests, config: dc})
	}
	return out, nil
}

// configFor picks the config of one allocated device: the last config
// naming its request (which must be of the device's kind), else the last
// one naming no request whose kind fits the device, else the default (no
// sharing).
func configFor(configs []opaqueConfig, request string, mig bool) (*DeviceConfig, error) {
	kind := KindGpuConfig
	if mig {
		kind = KindMigDeviceConfig
	}
	for _, c := range slices.Backward(configs) {
		if slices.Contains(c.requests, request) {
			if c.config.Kind != kind {
				return nil, fmt.Errorf("cannot apply %s to request %q: its device needs a %s", c.config.Kind, request, kind)
			}
			return c.config, nil
		}
		if len(c.requests) == 0 && c.config.Kind == kind {
			return c.config, nil
		}
	}
	return &DeviceConfig{APIVersion: ConfigAPIVersion, Kind: kind}, nil
}
