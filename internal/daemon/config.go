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
	rc := resources.Config{
		ResourceName: c.ResourceName, MIGStrategy: c.MIGStrategy,
		Replicas: c.Replicas, RenameByDefault: c.RenameByDefault,
		SharedName: c.SharedResourceName, FailRequestsGreaterThanOne: c.FailRequestsGreaterThanOne,
	}
	if c.Replicas > 1 {
		return rc // the command line's replicas replace the file's sharing
	}
	rc.MPS = c.Sharing.Strategy == config.SharingMPS
	for _, r := range c.Sharing.Resources {
		sel := resources.Selector{Count: r.Devices.Count, List: r.Devices.List}
		rc.Shares = append(rc.Shares, resources.Share{Name: r.Name, Rename: r.Rename, Replicas: r.Replicas, Devices: sel})
	}
	return rc
}

// SharingSummary says what sharing the settings apply, for the start-up log.
func SharingSummary(c *config.Config) []string {
	rc := ResourcesConfig(c)
	if rc.Replicas > 1 {
		s := fmt.Sprintf("time-slicing from --replicas: every device %d ways", rc.Replicas)
		if len(c.Sharing.Resources) > 0 {
			s += " (the config file's sharing section is replaced)"
		}
		return []string{s}
	}
	var out []string
	for _, sh := range rc.Shares {
		to := sh.Name
		if sh.Rename != "" {
			to = sh.Rename
		}
		out = append(out, fmt.Sprintf("%s: %s devices of %s shared %d ways as %s (fail requests > 1: %v)",
			c.Sharing.Strategy, sh.Devices, sh.Name, sh.Replicas, to, rc.FailRequestsGreaterThanOne))
	}
	return out
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

// LabelOptions are the options of labels.Compute from the settings.
func LabelOptions(c *config.Config) labels.Options {
	return labels.Options{
		Resources: ResourcesConfig(c), MachineTypeFile: c.Labels.MachineTypeFile,
		NoTimestamp: c.Labels.NoTimestamp, Extra: c.Labels.Extra,
	}
}
