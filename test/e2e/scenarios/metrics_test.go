package scenarios

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Series is one sample of gpulet's /metrics (Prometheus text format).
type Series struct {
	Name   string
	Labels map[string]string
	Value  string
}

var (
	seriesRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$`)
	labelRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// ParseMetrics reads the samples of a Prometheus text exposition (comments
// skipped).
func ParseMetrics(text string) []Series {
	var out []Series
	for l := range strings.Lines(text) {
		l = strings.TrimRight(l, "\n")
		m := seriesRE.FindStringSubmatch(l)
		if m == nil || strings.HasPrefix(l, "#") {
			continue
		}
		sr := Series{Name: m[1], Labels: map[string]string{}, Value: m[3]}
		for _, lm := range labelRE.FindAllStringSubmatch(m[2], -1) {
			sr.Labels[lm[1]] = lm[2]
		}
		out = append(out, sr)
	}
	return out
}

// Metrics scrapes the GPU node's gpulet /metrics through the API server's
// pod proxy.
func (s *S) Metrics() ([]Series, error) {
	p, err := s.GpuletPodOn(s.Node)
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, fmt.Errorf("no gpulet pod on %s", s.Node)
	}
	b, err := s.Client.CoreV1().Pods(s.Namespace).ProxyGet("http", p.Name, "9401", "metrics", nil).DoRaw(s.ctx)
	if err != nil {
		return nil, fmt.Errorf("/metrics of %s: %w", p.Name, err)
	}
	return ParseMetrics(string(b)), nil
}

// Select is the series named name whose labels include every k=v of match.
func Select(all []Series, name string, match map[string]string) []Series {
	var out []Series
	for _, sr := range all {
		if sr.Name != name {
			continue
		}
		ok := true
		for k, v := range match {
			if sr.Labels[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, sr)
		}
	}
	return out
}

// MetricIs is a condition: exactly one series name{match} with value want.
func (s *S) MetricIs(name string, match map[string]string, want string) func() error {
	return func() error {
		m, err := s.Metrics()
		if err != nil {
			return err
		}
		got := Select(m, name, match)
		if len(got) != 1 || got[0].Value != want {
			return fmt.Errorf("%s%v: %v, want one series of value %s", name, match, got, want)
		}
		return nil
	}
}

// GpuletReadyIs is a condition: the GPU node's gpulet pod's Ready condition is ready.
func (s *S) GpuletReadyIs(ready bool) func() error {
	return func() error {
		p, err := s.GpuletPodOn(s.Node)
		if err != nil {
			return err
		}
		if p == nil || PodReady(p) != ready {
			return fmt.Errorf("gpulet pod on %s: Ready is not %v", s.Node, ready)
		}
		return nil
	}
}

// scenarioMetrics: /metrics (through the API server's pod proxy) has 8
// DCGM_FI_DEV_GPU_UTIL series and gpulet_ready 1; a 2-GPU pod is attributed
// (namespace, pod, container) on exactly its GPUs' series and disappears when
// it ends; an XID shows in DCGM_FI_DEV_XID_ERRORS and gpulet_device_healthy;
// `gpulet sim driver down` turns the pod NotReady and Allocatable 0,
// `driver up` brings both back.
func scenarioMetrics(s *S) {
	var m []Series
	s.Eventually(30*time.Second, "gpulet's /metrics", func() (err error) { m, err = s.Metrics(); return err })
	if n := len(Select(m, "DCGM_FI_DEV_GPU_UTIL", nil)); n != s.SimGPUs {
		s.Fatalf("/metrics has %d DCGM_FI_DEV_GPU_UTIL series, want %d", n, s.SimGPUs)
	}
	if r := Select(m, "gpulet_ready", nil); len(r) != 1 || r[0].Value != "1" {
		s.Fatalf("/metrics does not say gpulet_ready 1: %v", r)
	}
	s.Logf("/metrics: %d series", len(m))

	// Attribution: a running pod's GPUs carry its namespace/pod/container, and only those.
	s.HoldJob("gpu2-metrics", 2)
	s.Eventually(90*time.Second, "gpu2-metrics Running", s.HoldRunning("gpu2-metrics"))
	p := s.MustJobPod("gpu2-metrics")
	uuids := s.PodGPUs(p, 2)
	s.Eventually(60*time.Second, p.Name+" attributed on its GPUs' series", func() error {
		m, err := s.Metrics()
		if err != nil {
			return err
		}
		var got []string
		for _, sr := range Select(m, "DCGM_FI_DEV_GPU_UTIL", map[string]string{"pod": p.Name}) {
			if sr.Labels["namespace"] != "default" || sr.Labels["container"] != "main" {
				return fmt.Errorf("series %v lacks namespace=default or container=main", sr.Labels)
			}
			got = append(got, sr.Labels["UUID"])
		}
		slices.Sort(got)
		if !slices.Equal(got, uuids) {
			return fmt.Errorf("series with pod=%s: %v, want %v", p.Name, got, uuids)
		}
		return nil
	})
	s.Logf("pod %s attributed on exactly its GPUs: %v", p.Name, uuids)
	s.Release(p)
	s.Eventually(60*time.Second, "gpu2-metrics COMPLETIONS 1/1", s.JobComplete("gpu2-metrics"))
	s.Eventually(60*time.Second, p.Name+" gone from the series", func() error {
		m, err := s.Metrics()
		if err != nil {
			return err
		}
		if got := Select(m, "DCGM_FI_DEV_GPU_UTIL", map[string]string{"pod": p.Name}); len(got) > 0 {
			return fmt.Errorf("still attributed: %v", got)
		}
		return nil
	})

	// An XID: counted per GPU and the GPU's health series drops.
	cleared := false
	s.Cleanup(func() {
		if !cleared {
			s.GpuletOnNode("sim", "clear", "--all", "--sim-root="+s.SimRoot)
			s.GpuletOnNode("sim", "driver", "up", "--sim-root="+s.SimRoot)
		}
	})
	s.GpuletOnNode("sim", "fault", "--sim-root="+s.SimRoot, "--gpu=3", "--xid=48")
	gpu3 := map[string]string{"gpu": "3"}
	s.Eventually(60*time.Second, "XID 48 on GPU 3 in /metrics", func() error {
		if err := s.MetricIs("DCGM_FI_DEV_XID_ERRORS", gpu3, "48")(); err != nil {
			return err
		}
		return s.MetricIs("gpulet_device_healthy", gpu3, "0")()
	})
	s.GpuletOnNode("sim", "clear", "--sim-root="+s.SimRoot, "--gpu=3")
	s.Eventually(60*time.Second, "GPU 3 healthy in /metrics", s.MetricIs("gpulet_device_healthy", gpu3, "1"))
	s.Eventually(60*time.Second, "Allocatable back to 8", s.NodeGPUsAre("8/8"))

	// The driver goes away (unloaded, upgraded): not ready, no allocatable GPU; back when it returns.
	t0 := time.Now()
	s.GpuletOnNode("sim", "driver", "down", "--sim-root="+s.SimRoot)
	s.Eventually(60*time.Second, "gpulet pod not Ready", s.GpuletReadyIs(false))
	s.Timing("driver down -> gpulet pod not Ready (API server)", time.Since(t0))
	s.Eventually(60*time.Second, "Allocatable 0", s.NodeGPUsAre("8/0"))
	if err := s.MetricIs("gpulet_ready", nil, "0")(); err != nil {
		s.Fatalf("without a driver: %v", err)
	}
	t0 = time.Now()
	s.GpuletOnNode("sim", "driver", "up", "--sim-root="+s.SimRoot)
	cleared = true
	s.Eventually(90*time.Second, "gpulet pod Ready", s.GpuletReadyIs(true))
	s.Timing("driver up -> gpulet pod Ready (API server)", time.Since(t0))
	s.Eventually(60*time.Second, "Allocatable 8", s.GPUs8AndStable)
}
