package dra

// Applying a claim's sharing config, as NVIDIA's DRA driver applies it
// (facts from kubernetes-sigs/dra-driver-nvidia-gpu, cmd/gpu-kubelet-plugin
// device_state.go applySharingConfig and sharing.go):
//   - TimeSlicing (GpuConfig): each whole GPU of the config's devices gets
//     compute mode DEFAULT and the interval (nvidia-smi compute-policy
//     --set-timeslice: Default 0, Short 1, Medium 2, Long 3); Unprepare
//     sets the interval back to Default unless another claim still holds
//     the GPU (consumable capacity). A MigDeviceConfig's TimeSlicing sets
//     nothing (the interval is the whole GPU's).
//   - MPS: one control daemon for the config's devices of one claim (ID
//     <claim UID>-<first 5 hex digits of sha256 of the UUIDs joined by
//     ",">), seeing only them (CUDA_VISIBLE_DEVICES), with the config's
//     default active thread percentage and pinned memory limits (by UUID
//     or by index among the devices, in whole MiB); the whole GPUs get
//     compute mode EXCLUSIVE_PROCESS. Each container gets
//     CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps with the daemon's pipe
//     folder there and the MPS shm folder as /dev/shm. Unprepare quits the
//     daemon and sets compute mode DEFAULT.
// What is applied is saved in the claim's record before it is applied, so
// Unprepare, and the repair of a claim a crash left half done, undo it.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/hardware"
	"github.com/gpulet/gpulet/internal/mps"
)

// SharingControl is what applies claims' sharing configs. A nil field refuses,
// at Prepare and with the reason, the configs that need it.
type SharingControl struct {
	// Policy sets a whole GPU's compute mode and time-slice interval (the
	// backend's hardware.ComputePolicy). Without it TimeSlicing is applied
	// only at the Default interval, by leaving the GPU as it is.
	Policy hardware.ComputePolicy
	// MPS runs the per-claim control daemons (its Root and Control).
	MPS *mps.Manager
	// MPSReady, when set, says whether this host can run them
	// (mps.CheckHost); its error fails the Prepare of an MPS claim.
	MPSReady func() error
}

// appliedSharing is one config's sharing applied to some of a claim's
// devices, as recorded in the checkpoint.
type appliedSharing struct {
	Strategy string `json:"strategy"`
	// GPUs are the whole GPUs whose compute policy was set.
	GPUs []string `json:"gpus,omitempty"`
	// TimeSlice is the interval set (TimeSlicing).
	TimeSlice *int `json:"timeSlice,omitempty"`
	// MPS is the control daemon started (MPS).
	MPS *mps.Daemon `json:"mps,omitempty"`
}

// intervals maps NVIDIA's interval names to nvidia-smi's values.
var intervals = map[string]int{
	IntervalDefault: hardware.TimeSliceDefault, IntervalShort: hardware.TimeSliceShort,
	IntervalMedium: hardware.TimeSliceMedium, IntervalLong: hardware.TimeSliceLong,
}

// sharedDevice is one device a config applies to.
type sharedDevice struct {
	UUID  string
	GPU   string // the whole GPU's UUID; "" for a MIG instance
	Share bool   // a share of a device several claims may hold (consumable capacity)
}

// planSharing says what applying c to devs (in allocation order) takes, or
// why gpulet cannot: nil when there is nothing to do. Nothing is applied.
func (s SharingControl) planSharing(claimUID string, c *DeviceConfig, devs []sharedDevice, consumable bool) (*appliedSharing, error) {
	sh := c.Sharing
	if sh == nil {
		return nil, nil
	}
	var gpus, uuids []string
	for _, d := range devs {
		uuids = append(uuids, d.UUID)
		if d.GPU != "" && !slices.Contains(gpus, d.GPU) {
			gpus = append(gpus, d.GPU)
		}
	}
	switch sh.Strategy {
	case StrategyTimeSlicing:
		if c.Kind == KindMigDeviceConfig || len(gpus) == 0 {
			return nil, nil // the interval is the whole GPU's: nothing to set
		}
		name := IntervalDefault
		if sh.TimeSlicingConfig != nil && sh.TimeSlicingConfig.Interval != nil {
			name = *sh.TimeSlicingConfig.Interval
		}
		if s.Policy == nil {
			if name == IntervalDefault {
				return nil, nil // the GPU's own time-slicing, as it is
			}
			return nil, fmt.Errorf("%s sharing.timeSlicingConfig.interval %s: this node's backend cannot set time-slice intervals; use interval Default (or none)",
				c.Kind, strconv.Quote(name))
		}
		n := intervals[name]
		return &appliedSharing{Strategy: StrategyTimeSlicing, GPUs: gpus, TimeSlice: &n}, nil
	case StrategyMPS:
		switch {
		case s.MPS == nil:
			return nil, fmt.Errorf("%s sharing.strategy MPS: this gpulet cannot start MPS control daemons (no MPS control for its backend); drop the config", c.Kind)
		case consumable:
			return nil, fmt.Errorf("%s sharing.strategy MPS: MPS sharing is not supported when consumable capacity is enabled (--dra-consumable-capacity), as with NVIDIA's driver", c.Kind)
		case sh.MpsConfig.MultiUser != nil && *sh.MpsConfig.MultiUser:
			return nil, fmt.Errorf("%s sharing.mpsConfig.multiUser: gpulet does not start multi-user MPS control daemons; drop multiUser", c.Kind)
		}
		if s.MPSReady != nil {
			if err := s.MPSReady(); err != nil {
				return nil, fmt.Errorf("%s sharing.strategy MPS: %w", c.Kind, err)
			}
		}
		limits, err := pinnedLimits(sh.MpsConfig, uuids)
		if err != nil {
			return nil, fmt.Errorf("%s sharing.mpsConfig: %w", c.Kind, err)
		}
		sum := sha256.Sum256([]byte(strings.Join(uuids, ",")))
		daemon := &mps.Daemon{
			ID: claimUID + "-" + hex.EncodeToString(sum[:])[:5], UUIDs: uuids,
			ActiveThreadPercentage: sh.MpsConfig.DefaultActiveThreadPercentage, PinnedMemLimits: limits,
		}
		return &appliedSharing{Strategy: StrategyMPS, GPUs: gpus, MPS: daemon}, nil
	}
	return nil, fmt.Errorf("sharing strategy %q", sh.Strategy) // validate() refused it already
}

// pinnedLimits are the daemon's pinned memory limits by UUID, as NVIDIA's
// driver derives them: the default for every device, then the per-device
// ones, each keyed by a UUID of the devices or an index among them.
func pinnedLimits(c *MpsConfig, uuids []string) (map[string]string, error) {
	out := map[string]string{}
	mib := func(q int64) string { return strconv.FormatInt(q>>20, 10) + "M" }
	if l := c.DefaultPinnedDeviceMemoryLimit; l != nil {
		for _, u := range uuids {
			out[u] = mib(l.Value())
		}
	}
	for _, k := range slices.Sorted(maps.Keys(c.DefaultPerDevicePinnedMemoryLimit)) {
		v := c.DefaultPerDevicePinnedMemoryLimit[k]
		id := k
		if !slices.Contains(uuids, k) {
			i, err := strconv.Atoi(k)
			if err != nil {
				return nil, fmt.Errorf("invalid device %q in defaultPerDevicePinnedMemoryLimit: neither a UUID of the claim's devices nor an index", k)
			}
			if i < 0 || i >= len(uuids) {
				return nil, fmt.Errorf("invalid device index %d in defaultPerDevicePinnedMemoryLimit: the config has %d devices", i, len(uuids))
			}
			id = uuids[i]
		}
		out[id] = mib(v.Value())
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// apply applies a claim's recorded sharing, in order. On error it has
// undone nothing: the caller undoes the whole record (undo is idempotent).
func (s SharingControl) apply(ctx context.Context, all []appliedSharing) error {
	for _, a := range all {
		switch a.Strategy {
		case StrategyTimeSlicing:
			for _, g := range a.GPUs {
				if err := s.Policy.SetComputeMode(ctx, g, hardware.ComputeModeDefault); err != nil {
					return fmt.Errorf("set compute mode of %s: %w", g, err)
				}
				if err := s.Policy.SetTimeSlice(ctx, g, *a.TimeSlice); err != nil {
					return fmt.Errorf("set time-slice of %s: %w", g, err)
				}
			}
		case StrategyMPS:
			if s.MPS == nil {
				return errors.New("the claim's record has an MPS control daemon, but this gpulet has no MPS control")
			}
			if s.Policy != nil {
				for _, g := range a.GPUs {
					if err := s.Policy.SetComputeMode(ctx, g, hardware.ComputeModeExclusiveProcess); err != nil {
						return fmt.Errorf("set compute mode of %s: %w", g, err)
					}
				}
			}
			if err := s.MPS.StartDaemon(ctx, *a.MPS); err != nil {
				return err
			}
		}
	}
	return nil
}

// undo reverses a claim's recorded sharing: MPS daemons quit, compute mode
// DEFAULT, time-slice Default, except on GPUs held(uuid) says another claim
// still holds. Every step is tried; the errors are joined.
func (s SharingControl) undo(ctx context.Context, all []appliedSharing, held func(uuid string) bool) error {
	var errs []error
	for _, a := range slices.Backward(all) {
		switch a.Strategy {
		case StrategyMPS:
			if s.MPS == nil {
				errs = append(errs, fmt.Errorf("MPS control daemon %s: this gpulet has no MPS control to stop it", a.MPS.ID))
				continue
			}
			if err := s.MPS.StopDaemon(ctx, a.MPS.ID, a.MPS.UUIDs); err != nil {
				errs = append(errs, err)
			}
			if s.Policy != nil {
				for _, g := range a.GPUs {
					if err := s.Policy.SetComputeMode(ctx, g, hardware.ComputeModeDefault); err != nil {
						errs = append(errs, fmt.Errorf("reset compute mode of %s: %w", g, err))
					}
				}
			}
		case StrategyTimeSlicing:
			if s.Policy == nil {
				continue
			}
			for _, g := range a.GPUs {
				if held(g) {
					continue
				}
				if err := s.Policy.SetTimeSlice(ctx, g, hardware.TimeSliceDefault); err != nil {
					errs = append(errs, fmt.Errorf("reset time-slice of %s: %w", g, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// mpsEdits are the CDI edits of a device served by the MPS daemon id.
func (s SharingControl) mpsEdits(id string) ([]string, []*specs.Mount, error) {
	if s.MPS == nil {
		return nil, nil, fmt.Errorf("device served by MPS control daemon %s, but this gpulet has no MPS control", id)
	}
	a := s.MPS.DaemonAccess(id)
	var env []string
	for _, k := range slices.Sorted(maps.Keys(a.Env)) {
		env = append(env, k+"="+a.Env[k])
	}
	var mounts []*specs.Mount
	for _, m := range a.Mounts {
		mounts = append(mounts, &specs.Mount{HostPath: m.Host, ContainerPath: m.Container, Options: []string{"rw", "nosuid", "nodev", "bind"}})
	}
	return env, mounts, nil
}

// mpsDaemons are the MPS control daemons a claim's record says it has.
func mpsDaemons(all []appliedSharing) []mps.Daemon {
	var out []mps.Daemon
	for _, a := range all {
		if a.Strategy == StrategyMPS && a.MPS != nil {
			out = append(out, *a.MPS)
		}
	}
	return out
}

// MPS control daemons run in gpulet's container and end with it, while the
// claims they serve outlive it: a started driver starts them again.
const (
	mpsRestoreRetryFirst = time.Second
	mpsRestoreRetryMax   = time.Minute
)

// restoreMPS starts again the MPS control daemon of every prepared claim
// that has one, with its recorded settings (ID, folders, thread percentage,
// pinned limits); a daemon still answering in its pipe folder is reused
// (mps.Manager.StartDaemon). It returns the claims whose daemon did not
// start, each logged; restoreMPSRetry retries them.
func (d *Driver) restoreMPS(ctx context.Context, uids []string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var failed []string
	for _, uid := range uids {
		pc, ok := d.cp.Claims[uid]
		if !ok || pc.State != statePrepareCompleted {
			continue // unprepared since
		}
		var errs []error
		for _, dm := range mpsDaemons(pc.Sharing) {
			if d.o.Sharing.MPS == nil {
				errs = append(errs, fmt.Errorf("MPS control daemon %s: this gpulet has no MPS control to start it", dm.ID))
				continue
			}
			if err := d.o.Sharing.MPS.StartDaemon(ctx, dm); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			d.log.Warn("DRA claim's MPS control daemon not restarted; retrying", "claim", pc.Namespace+"/"+pc.Name, "uid", uid, "err", err)
			failed = append(failed, uid)
		}
	}
	return failed
}

// restoreMPSRetry retries restoreMPS for uids with backoff until each
// daemon started, its claim was unprepared, or ctx ended.
func (d *Driver) restoreMPSRetry(ctx context.Context, uids []string) {
	backoff := wait.Backoff{Duration: mpsRestoreRetryFirst, Factor: 2, Cap: mpsRestoreRetryMax, Steps: math.MaxInt32}
	for len(uids) > 0 {
		t := time.NewTimer(backoff.Step())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		uids = d.restoreMPS(ctx, uids)
	}
}

// mpsClaims are the prepared claims of cp with an MPS control daemon.
func (cp *checkpoint) mpsClaims() []string {
	var out []string
	for _, uid := range cp.uids() {
		if pc := cp.Claims[uid]; pc.State == statePrepareCompleted && len(mpsDaemons(pc.Sharing)) > 0 {
			out = append(out, uid)
		}
	}
	return out
}
