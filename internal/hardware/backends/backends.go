// Package backends opens the hardware backend the settings name: NVML,
// the simulator, or auto (NVML when its library loads, else the
// simulator). It is the one place above package hardware that knows the
// concrete backends; the daemon takes what it opens as a hardware.Backend.
package backends

import (
	"fmt"
	"log/slog"

	"github.com/gpulet/gpulet/internal/config"
	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/hardware/nvml"
	"github.com/gpulet/gpulet/internal/hardware/sim"
)

// Open opens the backend cfg names.
func Open(cfg *config.Config, log *slog.Logger) (hardware.Backend, error) {
	nvmlOpts := nvml.Options{DriverRoot: cfg.DriverRoot, DevRoot: cfg.DevRoot}
	switch cfg.Backend {
	case "nvml":
		return nvml.New(nvmlOpts)
	case "sim":
		return openSim(cfg)
	case "auto":
		b, err := nvml.New(nvmlOpts)
		if err == nil {
			return b, nil
		}
		log.Info("no usable NVML; simulating a GPU node", "profile", cfg.SimProfile, "nvml", err)
		return openSim(cfg)
	}
	return nil, fmt.Errorf("backend %q is not one of auto, sim, nvml", cfg.Backend)
}

// Opener is Open bound to cfg and log, as the daemon takes it.
func Opener(cfg *config.Config, log *slog.Logger) func() (hardware.Backend, error) {
	return func() (hardware.Backend, error) { return Open(cfg, log) }
}

func openSim(cfg *config.Config) (hardware.Backend, error) {
	p, err := sim.LoadProfile(cfg.SimProfile)
	if err != nil {
		return nil, err
	}
	return sim.New(p, cfg.SimRoot)
}
