package metrics

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/podresources"
)

// dcgmLabels are dcgm-exporter's labels, in its order, then its
// Kubernetes ones. GPU_I_* are empty for a whole GPU and the pod labels for
// a free one; Prometheus stores an empty label as absent, as dcgm-exporter
// leaves them out.
var dcgmLabels = []string{"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname",
	"GPU_I_PROFILE", "GPU_I_ID", "DCGM_FI_DRIVER_VERSION", "namespace", "pod", "container"}

// field is one dcgm-exporter series fed by a Sample field.
type field struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	have  hardware.Field
	value func(hardware.Sample) float64
}

func dcgm(name, help string, typ prometheus.ValueType, have hardware.Field, value func(hardware.Sample) float64) field {
	return field{prometheus.NewDesc(name, help, dcgmLabels, nil), typ, have, value}
}

// fields uses dcgm-exporter's names, types, units and help texts.
var fields = []field{
	dcgm("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", prometheus.GaugeValue, hardware.FieldGPUUtil, func(s hardware.Sample) float64 { return s.GPUUtil }),
	dcgm("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", prometheus.GaugeValue, hardware.FieldMemCopyUtil, func(s hardware.Sample) float64 { return s.MemCopyUtil }),
	dcgm("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", prometheus.GaugeValue, hardware.FieldFB, func(s hardware.Sample) float64 { return s.FBUsedMiB }),
	dcgm("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", prometheus.GaugeValue, hardware.FieldFB, func(s hardware.Sample) float64 { return s.FBFreeMiB }),
	dcgm("DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB).", prometheus.GaugeValue, hardware.FieldFBReserved, func(s hardware.Sample) float64 { return s.FBReservedMiB }),
	dcgm("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", prometheus.GaugeValue, hardware.FieldGPUTemp, func(s hardware.Sample) float64 { return s.GPUTempC }),
	dcgm("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", prometheus.GaugeValue, hardware.FieldPower, func(s hardware.Sample) float64 { return s.PowerW }),
	dcgm("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "Total energy consumption since boot (in mJ).", prometheus.CounterValue, hardware.FieldEnergy, func(s hardware.Sample) float64 { return s.EnergyMJ }),
	dcgm("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", prometheus.GaugeValue, hardware.FieldSMClock, func(s hardware.Sample) float64 { return s.SMClockMHz }),
	dcgm("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", prometheus.GaugeValue, hardware.FieldMemClock, func(s hardware.Sample) float64 { return s.MemClockMHz }),
	dcgm("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "Total number of PCIe retries.", prometheus.CounterValue, hardware.FieldPCIeReplays, func(s hardware.Sample) float64 { return s.PCIeReplays }),
	dcgm("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for uncorrectable errors", prometheus.CounterValue, hardware.FieldRemappedRows, func(s hardware.Sample) float64 { return s.RemappedUncorrectable }),
	dcgm("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for correctable errors", prometheus.CounterValue, hardware.FieldRemappedRows, func(s hardware.Sample) float64 { return s.RemappedCorrectable }),
	dcgm("DCGM_FI_DEV_ROW_REMAP_FAILURE", "Whether remapping of rows has failed", prometheus.GaugeValue, hardware.FieldRemappedRows, func(s hardware.Sample) float64 { return b2f(s.RowRemapFailure) }),
	dcgm("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "Ratio of cycles the tensor (HMMA) pipe is active.", prometheus.GaugeValue, hardware.FieldTensorActive, func(s hardware.Sample) float64 { return s.TensorActive }),
}

var (
	xidDesc       = prometheus.NewDesc("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", dcgmLabels, nil)
	healthyDesc   = prometheus.NewDesc("gpulet_device_healthy", "1 if the device (GPU or MIG instance) is healthy and advertised as such, else 0.", []string{"gpu", "UUID", "GPU_I_ID"}, nil)
	unhealthyDesc = prometheus.NewDesc("gpulet_device_unhealthy_info", "Why an unhealthy device is unhealthy (one series per unhealthy device, always 1).", []string{"gpu", "UUID", "GPU_I_ID", "xid", "reason"}, nil)
)

// deviceCollector builds the per-device series at scrape time from the
// store and the last sweep: no driver call happens here.
type deviceCollector struct{ e *Exporter }

func (c deviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, f := range fields {
		ch <- f.desc
	}
	ch <- xidDesc
	ch <- healthyDesc
	ch <- unhealthyDesc
}

func (c deviceCollector) Collect(ch chan<- prometheus.Metric) {
	e := c.e
	src := e.src.Load()
	if src == nil {
		return
	}
	snap := src.Store.Snapshot()
	last := e.last.Load()
	if last == nil {
		last = &sampled{}
	}
	e.mu.Lock()
	lastXID := make(map[string]uint64, len(e.lastXID))
	for k, v := range e.lastXID {
		lastXID[k] = v
	}
	e.mu.Unlock()
	node := snap.Node
	for _, g := range node.GPUs {
		gpu := strconv.Itoa(g.Index)
		base := []string{gpu, g.UUID, g.PCIBusID, "nvidia" + strconv.Itoa(g.Minor), g.Name, e.opts.Hostname, "", "", node.DriverVersion}
		c.device(ch, snap, last, g.UUID, base, gpu, "")
		for _, m := range g.MIGDevices {
			mb := append([]string(nil), base...)
			mb[6], mb[7] = m.Profile, strconv.Itoa(m.GI)
			c.device(ch, snap, last, m.UUID, mb, gpu, mb[7])
		}
		// dcgm-exporter reports the last XID per GPU, 0 when none.
		for _, o := range ownersOr(last.owners[g.UUID]) {
			constMetric(ch, xidDesc, prometheus.GaugeValue, float64(lastXID[g.UUID]), withOwner(base, o)...)
		}
	}
}

// device sends one device's health and telemetry series.
func (c deviceCollector) device(ch chan<- prometheus.Metric, snap inventory.Snapshot, last *sampled, uuid string, base []string, gpu, gi string) {
	idUUID := base[1] // dcgm-exporter labels a MIG instance with its GPU's UUID and GPU_I_ID
	h, unhealthy := snap.Health[uuid]
	unhealthy = unhealthy && !h.Healthy
	constMetric(ch, healthyDesc, prometheus.GaugeValue, b2f(!unhealthy), gpu, idUUID, gi)
	if unhealthy {
		constMetric(ch, unhealthyDesc, prometheus.GaugeValue, 1, gpu, idUUID, gi, strconv.FormatUint(h.XID, 10), h.Reason)
	}
	s, ok := last.samples[uuid]
	if !ok {
		return
	}
	owners := ownersOr(last.owners[uuid])
	for _, f := range fields {
		if !s.Has(f.have) {
			continue
		}
		v := f.value(s)
		for _, o := range owners {
			constMetric(ch, f.desc, f.typ, v, withOwner(base, o)...)
		}
	}
}

// constMetric sends one series. Label values come from the driver and the
// kubelet (names, reasons, pods): bytes that are not UTF-8 are replaced
// (U+FFFD) rather than letting the client library panic on them, and a
// series it still refuses is left out of this scrape.
func constMetric(ch chan<- prometheus.Metric, desc *prometheus.Desc, typ prometheus.ValueType, v float64, lvs ...string) {
	for i, l := range lvs {
		if !utf8.ValidString(l) {
			lvs[i] = strings.ToValidUTF8(l, "\uFFFD")
		}
	}
	if m, err := prometheus.NewConstMetric(desc, typ, v, lvs...); err == nil {
		ch <- m
	}
}

// ownersOr lists a device's owners, or one empty owner for a free device.
func ownersOr(o []podresources.Owner) []podresources.Owner {
	if len(o) == 0 {
		return []podresources.Owner{{}}
	}
	return o
}

func withOwner(base []string, o podresources.Owner) []string {
	return append(append(make([]string, 0, len(dcgmLabels)), base...), o.Namespace, o.Pod, o.Container)
}
