package daemon

import (
	"errors"
	"fmt"
	"github.com/gpulet/gpulet/internal/allocator"
	"github.com/gpulet/gpulet/internal/labels"
	"strconv"
	"strings"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/plugin"
	"github.com/gpulet/gpulet/internal/resources"
)

// Validate checks the resolved settings before anything starts: config's
// own checks, then each layer's view of its part (config cannot import the
// layers, so the wiring does it).
func Validate(c *config.Config) error {
	var errs []error
	if err := c.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DeviceIDStrategy != "" || len(c.DeviceListStrategy) > 0 {
		if err := plugin.ValidateStrategies(c.DeviceListStrategy, c.DeviceIDStrategy); err != nil {
			errs = append(errs, err)
		}
	}
	if c.SharedDevicesAllocationPolicy != "" {
		if _, err := allocator.ParsePolicy(c.SharedDevicesAllocationPolicy); err != nil {
			errs = append(errs, err)
		}
	}
	if err := labels.Labels(c.Labels.Extra).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("extra-labels: %w", err))
	}
	if err := ResourcesConfig(c).Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := HealthPolicy(c); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ResourcesConfig is the part of the settings that shapes resources.
func ResourcesConfig(c *config.Config) resources.Config {
	return resources.Config{
		ResourceName: c.ResourceName, MIGStrategy: c.MIGStrategy,
		Replicas: c.Replicas, RenameByDefault: c.RenameByDefault,
		SharedName: c.SharedResourceName, FailRequestsGreaterThanOne: c.FailRequestsGreaterThanOne,
	}
}

// HealthPolicy builds the XID policy from the settings.
func HealthPolicy(c *config.Config) (*health.Policy, error) {
	overrides := map[uint64]health.Action{}
	ignored, _, err := health.ParseXIDList(c.DisableHealthChecks)
	if err != nil {
		return nil, fmt.Errorf("disable-health-checks: %w", err)
	}
	for _, x := range ignored {
		overrides[x] = health.Ignore
	}
	for k, v := range c.XIDOverrides {
		x, err := strconv.ParseUint(strings.TrimSpace(k), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("xid-policy: %q is not an XID number", k)
		}
		overrides[x] = health.Action(strings.TrimSpace(v))
	}
	p, err := health.NewPolicy(overrides)
	if err != nil {
		return nil, fmt.Errorf("xid-policy: %w", err)
	}
	return p, nil
}

// HealthDisabled reports whether health checks are off entirely.
func HealthDisabled(c *config.Config) bool {
	_, all, _ := health.ParseXIDList(c.DisableHealthChecks)
	return all
}
