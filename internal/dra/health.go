package dra

import (
	"context"
	"time"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/gpulet/gpulet/internal/inventory"
)

// WatchHealthStatus streams gpulet's health of every DRA device to the
// kubelet (DRAResourceHealth), which shows it in the status of pods using
// the device: a report at once, then one after every change of the store
// and at least every HealthResend so the kubelet never marks it stale.
func (d *Driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	changes, unsubscribe := d.o.Store.Subscribe()
	defer unsubscribe()
	tick := time.NewTicker(d.o.HealthResend)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case reports <- d.healthReport(d.o.Store.Snapshot()):
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
		case <-tick.C:
		}
	}
}

// healthReport covers every device of the catalog, tainted or not:
// a pod may still hold a device that became unhealthy.
func (d *Driver) healthReport(snap inventory.Snapshot) kubeletplugin.DeviceHealthReport {
	now := time.Now()
	var r kubeletplugin.DeviceHealthReport
	for _, e := range catalog(snap.Node, d.o.Devices.DynamicMIG) {
		h := kubeletplugin.DeviceHealth{
			PoolName: d.pool, DeviceName: e.Name, Health: kubeletplugin.HealthStatusHealthy,
			LastUpdated: now, HealthCheckTimeout: 3 * d.o.HealthResend,
		}
		for _, uuid := range []string{e.UUID, e.Parent} {
			if bad, ok := snap.Health[uuid]; ok && uuid != "" && !bad.Healthy {
				h.Health = kubeletplugin.HealthStatusUnhealthy
				h.Message = bad.Reason
				if !bad.Since.IsZero() {
					h.LastUpdated = bad.Since
				}
				break
			}
		}
		r.Devices = append(r.Devices, h)
	}
	return r
}
