package daemon

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"testing"

	"github.com/gpulet/gpulet/internal/config"
)

// restart stops only the named components, in reverse start order, and
// starts them again in start order in their places; a component turned on
// starts, one turned off stays stopped; a failed start leaves the later
// named ones stopped and is returned.
func TestSupervisorRestart(t *testing.T) {
	var mu sync.Mutex
	var log []string
	note := func(s string) { mu.Lock(); log = append(log, s); mu.Unlock() }
	failing := ""
	comp := func(name string, on bool) component {
		if !on {
			return component{}
		}
		return component{name: name,
			start: func(context.Context) error {
				if name == failing {
					return errors.New("refused")
				}
				note("start " + name)
				return nil
			},
			run: func(ctx context.Context) error { <-ctx.Done(); note("stop " + name); return nil }}
	}
	mpsOn := false
	comps := func() []component {
		return []component{comp("a", true), comp("MPS", mpsOn), comp("b", true), comp("c", true)}
	}
	s := newSupervisor(context.Background(), slog.New(slog.DiscardHandler))
	for _, c := range comps() {
		if err := s.start(c); err != nil {
			t.Fatal(err)
		}
	}
	names := func() []string {
		var out []string
		for _, r := range s.running {
			out = append(out, r.name)
		}
		return out
	}
	log = nil
	if err := s.restart(map[string]bool{"MPS": true, "c": true, "a": true}, func() []component { mpsOn = true; return comps() }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"stop c", "stop a", "start a", "start MPS", "start c"}; !slices.Equal(log, want) {
		t.Errorf("restart did %v, want %v", log, want)
	}
	if got := names(); !slices.Equal(got, []string{"a", "MPS", "b", "c"}) {
		t.Errorf("running %v", got)
	}
	log = nil
	failing = "b"
	err := s.restart(map[string]bool{"b": true, "c": true}, func() []component { mpsOn = false; return comps() })
	if err == nil || !slices.Equal(names(), []string{"a", "MPS"}) {
		t.Errorf("failed restart: err %v, running %v; want an error and a, MPS (MPS was not named)", err, names())
	}
	if want := []string{"stop c", "stop b"}; !slices.Equal(log, want) {
		t.Errorf("failed restart did %v, want %v", log, want)
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
}

func TestAffected(t *testing.T) {
	base := func() *config.Config {
		return &config.Config{ResourceName: "nvidia.com/gpu", MIGStrategy: "none", DeviceListStrategy: []string{"envvar"}, DeviceIDStrategy: "uuid"}
	}
	ts := func(c *config.Config) {
		c.Sharing = config.Sharing{Strategy: config.SharingTimeSlicing, Resources: []config.SharedResource{{Name: "nvidia.com/gpu", Replicas: 4, Devices: config.SharedDevices{All: true}}}}
	}
	for _, tc := range []struct {
		name    string
		change  func(*config.Config)
		restart []string
		inPlace bool
	}{
		{"nothing", func(*config.Config) {}, nil, false},
		{"time-slicing", ts, []string{"label publisher", "metrics sampler"}, true},
		{"MPS", func(c *config.Config) { ts(c); c.Sharing.Strategy = config.SharingMPS },
			[]string{"MPS", "device plugin", "label publisher", "metrics sampler"}, true},
		{"MIG strategy", func(c *config.Config) { c.MIGStrategy = "mixed" }, []string{"label publisher", "metrics sampler"}, true},
		{"device-list strategy", func(c *config.Config) { c.DeviceListStrategy = []string{"cdi-cri"} }, []string{"CDI writer", "device plugin"}, false},
		{"id strategy", func(c *config.Config) { c.DeviceIDStrategy = "index" }, []string{"CDI writer", "device plugin"}, false},
		{"health", func(c *config.Config) { c.DisableHealthChecks = "48" }, []string{"health monitor"}, false},
		{"extra labels", func(c *config.Config) { c.Labels.Extra = map[string]string{"a": "b"} }, []string{"label publisher"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := base()
			tc.change(next)
			restart, inPlace := affected(base(), next)
			if got := slices.Sorted(maps.Keys(restart)); !slices.Equal(got, tc.restart) || inPlace != tc.inPlace {
				t.Errorf("restart %v in place %v; want %v %v", got, inPlace, tc.restart, tc.inPlace)
			}
		})
	}
}

// A setting that cannot change while gpulet runs keeps its value and is
// named; the others take the new one.
func TestKeepNotLive(t *testing.T) {
	old := &config.Config{Backend: "sim", DevicePluginPath: "/a", MIGStrategy: "none"}
	next := &config.Config{Backend: "nvml", DevicePluginPath: "/a", MIGStrategy: "mixed", DRA: config.DRAConfig{Enabled: true}}
	got := keepNotLive(old, next)
	if !slices.Equal(got, []string{"backend", "dra"}) {
		t.Errorf("named %v, want [backend dra]", got)
	}
	if next.Backend != "sim" || next.DRA.Enabled || next.MIGStrategy != "mixed" {
		t.Errorf("next %+v", next)
	}
}
