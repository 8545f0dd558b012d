package metrics

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/podresources"
	"github.com/gpulet/gpulet/internal/podresources/podresourcestest"
	"github.com/gpulet/gpulet/internal/resources"
)

// simNode starts a simulated node of profile and an exporter attached to it.
func simNode(t testing.TB, profile string, opts Options) (*Exporter, *sim.Backend, *inventory.Store) {
	t.Helper()
	b, node := simtest.Backend(t, profile)
	store := inventory.NewStore(node)
	if opts.Hostname == "" {
		opts.Hostname = "node-1"
	}
	e := New(opts)
	e.SetDriverUp(true)
	e.Attach(Source{Store: store, Backend: b, Advertised: func(s inventory.Snapshot) []resources.Resource {
		return resources.Build(s, resources.Config{ResourceName: "nvidia.com/gpu", MIGStrategy: "mixed"})
	}})
	return e, b, store
}

func gather(t testing.TB, e *Exporter) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := e.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// TestDashboardMetricsArePresent: every metric NVIDIA's dcgm-exporter
// dashboard queries has a series per GPU with the labels it selects on.
func TestDashboardMetricsArePresent(t *testing.T) {
	e, _, _ := simNode(t, "dgx-h100", Options{})
	if err := e.SampleOnce(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	mfs := gather(t, e)
	f, err := os.Open("testdata/dcgm-dashboard-queries.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		line := strings.Fields(sc.Text())
		if len(line) == 0 || strings.HasPrefix(line[0], "#") {
			continue
		}
		n++
		mf, ok := mfs[line[0]]
		if !ok {
			t.Errorf("%s: the dashboard queries it, the scrape has no series", line[0])
			continue
		}
		if len(mf.GetMetric()) != 8 {
			t.Errorf("%s: %d series, want one per GPU (8)", line[0], len(mf.GetMetric()))
		}
		for _, m := range mf.GetMetric() {
			for _, l := range line[1:] {
				if labels(m)[l] == "" {
					t.Errorf("%s: series without label %s: %v", line[0], l, labels(m))
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no dashboard metrics read")
	}
}

// TestDCGMLabels: a GPU series carries dcgm-exporter's labels; a MIG
// instance's carries its GPU's UUID and GPU_I_PROFILE/GPU_I_ID.
func TestDCGMLabels(t *testing.T) {
	e, _, store := simNode(t, "testdata/h200-mig.yaml", Options{})
	if err := e.SampleOnce(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	node := store.Snapshot().Node
	g := node.GPUs[0]
	mf := gather(t, e)["DCGM_FI_DEV_FB_USED"]
	if mf == nil {
		t.Fatal("no DCGM_FI_DEV_FB_USED")
	}
	l := labels(mf.GetMetric()[0])
	for k, want := range map[string]string{"gpu": "0", "UUID": g.UUID, "pci_bus_id": g.PCIBusID, "device": "nvidia0",
		"modelName": g.Name, "Hostname": "node-1", "DCGM_FI_DRIVER_VERSION": node.DriverVersion} {
		if l[k] != want {
			t.Errorf("label %s = %q, want %q (%v)", k, l[k], want, l)
		}
	}
	migs := 0
	for _, g := range node.GPUs {
		migs += len(g.MIGDevices)
	}
	if migs == 0 {
		t.Fatal("profile has no MIG instances")
	}
	found := 0
	for _, m := range mf.GetMetric() {
		if l := labels(m); l["GPU_I_PROFILE"] != "" && l["GPU_I_ID"] != "" {
			found++
		}
	}
	if found != migs {
		t.Errorf("%d MIG series, want %d", found, migs)
	}
}

// TestPodAttribution: the series of a GPU a container holds carry its
// namespace, pod and container, read from a PodResources server on a real
// unix socket; the simulator's held GPU is busy, the others idle.
func TestPodAttribution(t *testing.T) {
	e, b, store := simNode(t, "pcie-4x-l4", Options{})
	uuid := store.Snapshot().Node.GPUs[2].UUID
	stub := podresourcestest.Start(t, podresourcestest.Pod{Namespace: "ml", Name: "train-0",
		Containers: map[string]map[string][]string{"trainer": {"nvidia.com/gpu": {uuid}}}})
	c, err := podresources.Dial(stub.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := e.SampleOnce(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	_ = b
	for _, m := range gather(t, e)["DCGM_FI_DEV_GPU_UTIL"].GetMetric() {
		l := labels(m)
		held := l["UUID"] == uuid
		if got := l["namespace"] + "/" + l["pod"] + "/" + l["container"]; held != (got == "ml/train-0/trainer") || !held && got != "//" {
			t.Errorf("GPU %s: owner %q", l["UUID"], got)
		}
		if busy := m.GetGauge().GetValue() >= 80; busy != held {
			t.Errorf("GPU %s held=%v: utilisation %v", l["UUID"], held, m.GetGauge().GetValue())
		}
	}
}

// blocking is a telemetry source whose driver never answers; entered is
// closed once a sample call is stuck in it.
type blocking struct {
	hardware.Backend
	once    *sync.Once
	entered chan struct{}
}

func (b blocking) Sample(ctx context.Context, _ string) (hardware.Sample, error) {
	b.once.Do(func() { close(b.entered) })
	<-ctx.Done()
	return hardware.Sample{}, ctx.Err()
}

// TestScrapeNeverWaitsOnTheBackend: with sampling stuck in a driver call,
// /metrics still answers at once, with the health series.
func TestScrapeNeverWaitsOnTheBackend(t *testing.T) {
	e, b, store := simNode(t, "dgx-h100", Options{Interval: time.Hour, SampleTimeout: time.Hour})
	stuck := blocking{Backend: b, once: new(sync.Once), entered: make(chan struct{})}
	e.Attach(Source{Store: store, Backend: stuck, Advertised: func(inventory.Snapshot) []resources.Resource { return nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-stuck.entered: // the sweep is now blocked in the driver
	case <-time.After(10 * time.Second):
		t.Fatal("the background sweep never called the backend")
	}
	srv := httptest.NewServer(e.Handler())
	defer srv.Close()
	start := time.Now()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if took := time.Since(start); took > time.Second {
		t.Errorf("scrape took %s while the backend hangs", took)
	}
	if !strings.Contains(string(body), "gpulet_device_healthy{") {
		t.Errorf("no health series in the scrape:\n%s", body)
	}
}

// TestGpuletSeriesAndProbes: observer calls show up as gpulet_* series;
// /readyz follows registration and the driver.
func TestGpuletSeriesAndProbes(t *testing.T) {
	e, _, store := simNode(t, "pcie-4x-l4", Options{Version: "v9", Commit: "c0ffee"})
	uuid := store.Snapshot().Node.GPUs[1].UUID
	srv := httptest.NewServer(e.Handler())
	defer srv.Close()
	code := func(path string) int {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := code("/healthz"); c != 200 {
		t.Errorf("/healthz = %d", c)
	}
	if c := code("/readyz"); c != 503 {
		t.Errorf("/readyz before registration = %d, want 503", c)
	}
	e.Registration("nvidia.com/gpu", nil)
	if c := code("/readyz"); c != 200 {
		t.Errorf("/readyz after registration = %d, want 200", c)
	}
	e.SetDriverUp(false)
	if c := code("/readyz"); c != 503 {
		t.Errorf("/readyz without the driver = %d, want 503", c)
	}
	e.ListAndWatchSent("nvidia.com/gpu", 4)
	e.Allocated("nvidia.com/gpu", 2)
	e.DeviceEvent(hardware.Event{Kind: hardware.EventXID, UUID: uuid, XID: 48})
	h := inventory.Health{Healthy: false, XID: 48, Reason: "double-bit ECC"}
	store.SetHealth(uuid, h)
	e.HealthChanged(uuid, h)
	e.DriverCall("GetUtilizationRates", time.Millisecond, false)
	e.DriverCall("GetPowerUsage", 5*time.Second, true)
	mfs := gather(t, e)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		value  float64
	}{
		{"gpulet_build_info", map[string]string{"version": "v9", "commit": "c0ffee"}, 1},
		{"gpulet_kubelet_registrations_total", map[string]string{"resource": "nvidia.com/gpu", "result": "success"}, 1},
		{"gpulet_list_and_watch_updates_total", map[string]string{"resource": "nvidia.com/gpu"}, 1},
		{"gpulet_allocations_total", map[string]string{"resource": "nvidia.com/gpu"}, 1},
		{"gpulet_allocated_devices_total", map[string]string{"resource": "nvidia.com/gpu"}, 2},
		{"gpulet_xid_events_total", map[string]string{"xid": "48"}, 1},
		{"gpulet_health_transitions_total", map[string]string{"to": "unhealthy", "xid": "48"}, 1},
		{"gpulet_device_healthy", map[string]string{"UUID": uuid}, 0},
		{"gpulet_device_unhealthy_info", map[string]string{"UUID": uuid, "xid": "48", "reason": "double-bit ECC"}, 1},
		{"DCGM_FI_DEV_XID_ERRORS", map[string]string{"UUID": uuid}, 48},
		{"gpulet_nvml_call_timeouts_total", map[string]string{"call": "GetPowerUsage"}, 1},
		{"gpulet_driver_up", nil, 0},
		{"gpulet_ready", nil, 0},
	} {
		mf := mfs[tc.name]
		found := false
		for _, m := range mf.GetMetric() {
			l := labels(m)
			match := true
			for k, v := range tc.labels {
				match = match && l[k] == v
			}
			if !match {
				continue
			}
			found = true
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			if v != tc.value {
				t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, v, tc.value)
			}
		}
		if !found {
			t.Errorf("%s%v: no series", tc.name, tc.labels)
		}
	}
	if mfs["gpulet_nvml_call_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleCount() == 0 {
		t.Error("no NVML call latency recorded")
	}
}

// TestPromlint: gpulet's own series are promlint-clean. dcgm-exporter's
// names are kept as they are for its dashboards; the only problems allowed
// there are the ones its names themselves have.
func TestPromlint(t *testing.T) {
	e, _, _ := simNode(t, "h200", Options{})
	e.Registration("nvidia.com/gpu", nil)
	e.DriverCall("Init", time.Millisecond, false)
	if err := e.SampleOnce(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	mfs, err := e.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	inherent := map[string]bool{
		`counter metrics should have "_total" suffix`:                   true, // DCGM_FI_DEV_*_COUNTER, _ROWS, _CONSUMPTION
		`label names should be written in 'snake_case' not 'camelCase'`: true, // modelName
		`metric name should not include type 'counter'`:                 true, // DCGM_FI_DEV_PCIE_REPLAY_COUNTER
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "DCGM_") && inherent[p.Text] {
			continue
		}
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// BenchmarkScrape8GPU is one /metrics scrape of an 8-GPU node with
// telemetry, pod labels and gpulet's own series.
func BenchmarkScrape8GPU(b *testing.B) {
	e, _, store := simNode(b, "dgx-h100", Options{})
	node := store.Snapshot().Node
	stub := podresourcestest.Start(b, podresourcestest.Pod{Namespace: "ml", Name: "train-0",
		Containers: map[string]map[string][]string{"trainer": {"nvidia.com/gpu": {node.GPUs[0].UUID, node.GPUs[1].UUID}}}})
	c, err := podresources.Dial(stub.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := e.SampleOnce(context.Background(), c); err != nil {
		b.Fatal(err)
	}
	h := e.Handler()
	req := httptest.NewRequest("GET", "/metrics", nil)
	b.ReportAllocs()
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkSample8GPU is one background sweep of the simulated 8-GPU node
// (PodResources List over a unix socket, then every GPU's sample).
func BenchmarkSample8GPU(b *testing.B) {
	e, _, _ := simNode(b, "dgx-h100", Options{})
	stub := podresourcestest.Start(b)
	c, err := podresources.Dial(stub.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		if err := e.SampleOnce(context.Background(), c); err != nil {
			b.Fatal(err)
		}
	}
}

// fixed is a telemetry source that reads the same sample on every device.
type fixed struct {
	hardware.Backend
	s hardware.Sample
}

func (f fixed) Sample(context.Context, string) (hardware.Sample, error) { return f.s, nil }

// TestSampleFieldsToSeries: each Sample field feeds its dcgm-exporter
// series in the Sample's unit, and a field the backend could not read
// (left out of Have) gives no series rather than a 0.
func TestSampleFieldsToSeries(t *testing.T) {
	full := hardware.Sample{
		Have: hardware.FieldGPUUtil | hardware.FieldMemCopyUtil | hardware.FieldFB | hardware.FieldFBReserved |
			hardware.FieldGPUTemp | hardware.FieldPower | hardware.FieldEnergy | hardware.FieldSMClock | hardware.FieldMemClock |
			hardware.FieldPCIeReplays | hardware.FieldRemappedRows | hardware.FieldTensorActive,
		GPUUtil: 87, MemCopyUtil: 41, FBUsedMiB: 10243, FBFreeMiB: 133000, FBReservedMiB: 528,
		GPUTempC: 54, PowerW: 312.456, EnergyMJ: 9876543210, SMClockMHz: 1980, MemClockMHz: 2619,
		PCIeReplays: 3, RemappedCorrectable: 2, RemappedUncorrectable: 1, RowRemapFailure: true, TensorActive: 0.5,
	}
	series := map[string]float64{
		"DCGM_FI_DEV_GPU_UTIL": 87, "DCGM_FI_DEV_MEM_COPY_UTIL": 41,
		"DCGM_FI_DEV_FB_USED": 10243, "DCGM_FI_DEV_FB_FREE": 133000, "DCGM_FI_DEV_FB_RESERVED": 528,
		"DCGM_FI_DEV_GPU_TEMP": 54, "DCGM_FI_DEV_POWER_USAGE": 312.456, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 9876543210,
		"DCGM_FI_DEV_SM_CLOCK": 1980, "DCGM_FI_DEV_MEM_CLOCK": 2619, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 3,
		"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 2, "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 1,
		"DCGM_FI_DEV_ROW_REMAP_FAILURE": 1, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.5,
	}
	for _, tc := range []struct {
		name   string
		absent hardware.Field
		gone   []string
	}{
		{name: "every field"},
		{name: "old driver: no reserved memory", absent: hardware.FieldFBReserved, gone: []string{"DCGM_FI_DEV_FB_RESERVED"}},
		{name: "no power or energy", absent: hardware.FieldPower | hardware.FieldEnergy, gone: []string{"DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"}},
		{name: "no remapping", absent: hardware.FieldRemappedRows, gone: []string{"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_ROW_REMAP_FAILURE"}},
		{name: "no utilisation", absent: hardware.FieldGPUUtil | hardware.FieldMemCopyUtil, gone: []string{"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, b, store := simNode(t, "dgx-h100", Options{})
			s := full
			s.Have &^= tc.absent
			e.Attach(Source{Store: store, Backend: fixed{b, s}, Advertised: func(inventory.Snapshot) []resources.Resource { return nil }})
			if err := e.SampleOnce(context.Background(), nil); err != nil {
				t.Fatal(err)
			}
			mfs := gather(t, e)
			for name, want := range series {
				mf, ok := mfs[name]
				if slices.Contains(tc.gone, name) {
					if ok {
						t.Errorf("%s: %d series for a field the backend did not read", name, len(mf.GetMetric()))
					}
					continue
				}
				if !ok || len(mf.GetMetric()) != 8 {
					t.Errorf("%s: want 8 series (one per GPU), got %v", name, mf.GetMetric())
					continue
				}
				for _, m := range mf.GetMetric() {
					if got := m.GetGauge().GetValue() + m.GetCounter().GetValue(); got != want {
						t.Errorf("%s{UUID=%s} = %v, want %v", name, labels(m)["UUID"], got, want)
					}
				}
			}
		})
	}
}

// While the kubelet's PodResources API fails, the last attribution is kept
// for OwnersGrace only: past it the series name no pod that may be gone.
func TestPodAttributionDropsStaleOwners(t *testing.T) {
	for _, tt := range []struct {
		grace time.Duration
		want  string // the held GPU's owner after the kubelet stops answering
	}{
		{time.Hour, "ml/train-0/trainer"},
		{time.Nanosecond, "//"},
	} {
		e, _, store := simNode(t, "pcie-4x-l4", Options{OwnersGrace: tt.grace})
		uuid := store.Snapshot().Node.GPUs[1].UUID
		stub := podresourcestest.Start(t, podresourcestest.Pod{Namespace: "ml", Name: "train-0",
			Containers: map[string]map[string][]string{"trainer": {"nvidia.com/gpu": {uuid}}}})
		c, err := podresources.Dial(stub.Socket)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.SampleOnce(context.Background(), c); err != nil {
			t.Fatal(err)
		}
		owner := func() string {
			for _, m := range gather(t, e)["DCGM_FI_DEV_GPU_UTIL"].GetMetric() {
				if l := labels(m); l["UUID"] == uuid {
					return l["namespace"] + "/" + l["pod"] + "/" + l["container"]
				}
			}
			return "no series"
		}
		if got := owner(); got != "ml/train-0/trainer" {
			t.Fatalf("owner %q before the failure", got)
		}
		c.Close() // every List fails from now on
		for range 2 {
			if err := e.SampleOnce(context.Background(), c); err == nil {
				t.Fatal("SampleOnce on a closed PodResources client reported no error")
			}
		}
		if got := owner(); got != tt.want {
			t.Errorf("grace %v: owner %q while PodResources fails, want %q", tt.grace, got, tt.want)
		}
	}
}

// Label values that are not UTF-8 (a driver's product name, a reason) do
// not panic the scrape: they are served with U+FFFD in their place.
func TestNonUTF8LabelValues(t *testing.T) {
	e, _, store := simNode(t, "pcie-4x-l4", Options{Hostname: "node-\xff"})
	node := *store.Snapshot().Node
	node.GPUs = append([]inventory.GPU(nil), node.GPUs...)
	node.GPUs[0].Name = "NVIDIA L4 \xc3\x28"
	store.SetNode(&node)
	store.SetHealth(node.GPUs[0].UUID, inventory.Health{Reason: "XID \xfe 79"})
	if err := e.SampleOnce(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	mfs := gather(t, e)
	var seen bool
	for _, m := range mfs["DCGM_FI_DEV_GPU_UTIL"].GetMetric() {
		if l := labels(m); l["UUID"] == node.GPUs[0].UUID {
			seen = true
			if l["modelName"] != "NVIDIA L4 \uFFFD(" || l["Hostname"] != "node-\uFFFD" {
				t.Errorf("labels %v", l)
			}
		}
	}
	if !seen {
		t.Error("the GPU with a non-UTF-8 name has no series")
	}
	if len(mfs["gpulet_device_unhealthy_info"].GetMetric()) == 0 {
		t.Error("the non-UTF-8 reason dropped the unhealthy series")
	}
}

// Another device plugin serving gpulet's resource: held back, /readyz is
// degraded with the reason and the conflict gauge names the endpoint;
// taking over, gpulet is ready and the gauge says so; cleared, no series.
func TestDevicePluginConflict(t *testing.T) {
	e, _, _ := simNode(t, "pcie-4x-l4", Options{})
	srv := httptest.NewServer(e.Handler())
	defer srv.Close()
	readyz := func() (int, string) {
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	gauge := func() map[string]string {
		for _, m := range gather(t, e)["gpulet_device_plugin_conflict"].GetMetric() {
			return labels(m)
		}
		return nil
	}
	e.Registration("nvidia.com/gpu", nil)
	e.Conflict("nvidia.com/gpu", "nvidia-gpu.sock", "socket", true, "nvidia.com/gpu is also served by nvidia-gpu.sock")
	if c, body := readyz(); c != 503 || !strings.Contains(body, "degraded: nvidia.com/gpu is also served by nvidia-gpu.sock") {
		t.Errorf("/readyz held back = %d %q, want 503 degraded with the reason", c, body)
	}
	if l := gauge(); l["endpoint"] != "nvidia-gpu.sock" || l["action"] != "hold-back" || l["signal"] != "socket" {
		t.Errorf("gpulet_device_plugin_conflict labels %v", l)
	}
	e.Conflict("nvidia.com/gpu", "nvidia-gpu.sock", "socket", false, "taking over")
	if c, _ := readyz(); c != 200 {
		t.Errorf("/readyz taking over = %d, want 200", c)
	}
	if l := gauge(); l["action"] != "take-over" {
		t.Errorf("gpulet_device_plugin_conflict labels %v, want action take-over", l)
	}
	e.Conflict("nvidia.com/gpu", "", "", false, "")
	if l := gauge(); l != nil {
		t.Errorf("conflict cleared but the gauge still has %v", l)
	}
}
