package dra

// The claim lifecycle: Prepare and Unprepare in two phases, each recorded
// in the checkpoint before and after the CDI spec is written or removed;
// repair at start; periodic cleanup of claims the API no longer has.
//
// Invariants:
//   - d.cp is always a checkpoint that is on disk (Driver.commit): memory
//     never runs ahead of the file, so a failed save is never answered
//     from memory on a retry.
//   - A claim's spec exists only while its record does: a record is saved
//     (PrepareStarted) before the spec is written, and the spec is removed
//     before the record is dropped (UnprepareStarted first).
//   - A crash at any point leaves a record that says what to undo; Start
//     undoes it (repair) before serving.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/gpulet/gpulet/internal/cdispec"
)

// DefaultCleanupInterval is how often prepared claims are checked against
// the API server (NVIDIA's driver checks every 10 minutes).
const DefaultCleanupInterval = 10 * time.Minute

// Steps of Prepare and Unprepare between which a crash is survivable; tests
// stop the driver at each (Driver.crashAt) as a kill would.
const (
	stepPrepareStarted    = "prepare: started saved"
	stepPrepareSpecs      = "prepare: specs written"
	stepPrepareCompleted  = "prepare: completed saved"
	stepUnprepareStarted  = "unprepare: started saved"
	stepUnprepareSpecs    = "unprepare: specs removed"
	stepUnprepareComplete = "unprepare: records dropped"
)

// errKilled is what a simulated crash answers; nothing after it runs.
var errKilled = errors.New("killed (test)")

// killed reports whether a test asked the driver to die at step.
func (d *Driver) killed(step string) bool { return d.crashAt != nil && d.crashAt(step) }

// commit saves next and, only once it is on disk, makes it the driver's
// checkpoint. Must hold d.mu.
func (d *Driver) commit(next *checkpoint) error {
	if err := next.save(d.cpPath); err != nil {
		return err
	}
	d.cp = next
	return nil
}

// release undoes what Prepare did for the claim uid of cp: its sharing
// (MPS daemons, compute policy; a GPU another claim of cp still holds
// keeps its time-slice), then its CDI specs, then its dynamic MIG
// instances. Each step is idempotent.
func (d *Driver) release(ctx context.Context, cp *checkpoint, uid string, pc preparedClaim) error {
	held := func(gpu string) bool {
		for other, o := range cp.Claims {
			if other == uid {
				continue
			}
			for _, p := range o.Devices {
				if p.UUID == gpu {
					return true
				}
			}
		}
		return false
	}
	if err := d.o.Sharing.undo(ctx, pc.Sharing, held); err != nil {
		return fmt.Errorf("undo the claim's sharing: %w", err)
	}
	if err := d.removeSpecs(uid, pc); err != nil {
		return err
	}
	if d.killed(stepUnprepareInstances) {
		return errKilled
	}
	return d.releaseMIG(ctx, cp, uid, pc)
}

// removeSpecs removes a claim's CDI spec, and NVIDIA's for a claim adopted
// from its driver; a spec already gone is no error.
func (d *Driver) removeSpecs(uid string, pc preparedClaim) error {
	if err := d.o.CDI.RemoveClaim(uid); err != nil {
		return err
	}
	if pc.ForeignSpec != "" {
		if err := os.Remove(pc.ForeignSpec); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove NVIDIA's CDI spec %s: %w", pc.ForeignSpec, err)
		}
	}
	return nil
}

// repair makes the loaded checkpoint true for this boot before anything is
// served: records of an earlier boot are dropped, and every claim a crash
// left half prepared or half unprepared is rolled back (its spec removed,
// its record dropped); the kubelet prepares it again if it still wants it.
func (d *Driver) repair(bootID string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	next := d.cp.clone()
	rebooted := next.BootID != "" && next.BootID != bootID
	next.BootID = bootID
	for _, uid := range next.uids() {
		pc := next.Claims[uid]
		if !rebooted && pc.State == statePrepareCompleted {
			continue
		}
		if rebooted {
			// The daemons and compute policy did not survive the reboot;
			// undo what may be left, but a GPU gone since is no reason
			// not to start.
			if err := d.o.Sharing.undo(context.Background(), pc.Sharing, func(string) bool { return false }); err != nil {
				d.log.Warn("DRA claim of an earlier boot: sharing not undone", "claim", pc.Namespace+"/"+pc.Name, "err", err)
			}
			pc.Sharing = nil
		}
		if err := d.release(context.Background(), next, uid, pc); err != nil {
			return fmt.Errorf("roll back DRA claim %s/%s (%s): %w", pc.Namespace, pc.Name, pc.State, err)
		}
		delete(next.Claims, uid)
		reason := "interrupted by a crash"
		if rebooted {
			reason = "prepared before the node rebooted"
		}
		d.log.Info("DRA claim dropped", "claim", pc.Namespace+"/"+pc.Name, "uid", uid, "state", pc.State, "why", reason)
	}
	nvidia, err := d.adoptNVIDIA(next, bootID)
	if err != nil {
		return err
	}
	if nvidia == "" && next.BootID == d.cp.BootID && len(next.Claims) == len(d.cp.Claims) {
		// Instances no record holds (a crash between create and save,
		// or anyone's) go once the records are final.
		d.sweepMIG(context.Background(), next)
		return nil
	}
	if err := d.commit(next); err != nil {
		return fmt.Errorf("DRA checkpoint %s: %w", d.cpPath, err)
	}
	d.sweepMIG(context.Background(), next)
	if nvidia != "" {
		// Saved as gpulet's: NVIDIA's file is not read again.
		if err := os.Rename(nvidia, nvidia+nvidiaAdoptedSuffix); err != nil {
			return fmt.Errorf("move NVIDIA's DRA checkpoint aside: %w", err)
		}
	}
	return nil
}

// PrepareResourceClaims writes one CDI spec per claim and answers with its
// CDI device IDs. A claim already prepared (by this process or one before
// it) gets the recorded answer again without a new write; one a failed or
// crashed attempt left half prepared is rolled back and prepared afresh.
// Nothing is answered unless the checkpoint that records it is saved.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	fail := func(c *resourceapi.ResourceClaim, err error) {
		d.log.Warn("DRA claim not prepared", "claim", c.Namespace+"/"+c.Name, "uid", c.UID, "err", err)
		out[c.UID] = kubeletplugin.PrepareResult{Err: err}
	}
	next := d.cp.clone()
	inUse := d.inUse(next)
	var todo []*resourceapi.ResourceClaim
	for _, c := range claims {
		uid := string(c.UID)
		if pc, ok := next.Claims[uid]; ok && pc.State == statePrepareCompleted {
			// Already prepared: same answer. Rewrite the spec only if it
			// has gone (a cleared /var/run/cdi), so the names still resolve.
			if _, err := os.Stat(pc.SpecFile); err != nil && pc.SpecFile != "" {
				if _, err := d.writeSpec(c.UID, pc.Devices); err != nil {
					fail(c, err)
					continue
				}
			}
			out[c.UID] = kubeletplugin.PrepareResult{Devices: pc.result()}
			continue
		} else if ok {
			// Half prepared (or half unprepared) before: start over.
			if err := d.release(ctx, next, uid, pc); err != nil {
				fail(c, fmt.Errorf("roll back the earlier attempt: %w", err))
				continue
			}
			delete(next.Claims, uid)
		}
		pc, err := d.plan(c, inUse)
		if err != nil {
			fail(c, err)
			continue
		}
		if len(pc.Devices) == 0 {
			out[c.UID] = kubeletplugin.PrepareResult{} // nothing of ours in the claim
			continue
		}
		markInUse(inUse, uid, pc)
		next.Claims[uid] = pc
		todo = append(todo, c)
	}
	if len(todo) == 0 {
		if len(next.Claims) != len(d.cp.Claims) {
			_ = d.commit(next) // only roll-backs: a failure leaves records a retry rolls back again
		}
		return out, nil
	}
	failAll := func(err error) {
		for _, c := range todo {
			fail(c, err)
		}
	}

	// Phase 1: the records say "started" before any spec exists.
	if err := d.commit(next); err != nil {
		failAll(err)
		return out, nil
	}
	if d.killed(stepPrepareStarted) {
		failAll(errKilled)
		return out, nil
	}
	next = d.cp.clone()
	// abandon fails claim c after undoing what its Prepare made. If the undo
	// fails too, the record stays "started": a retry or the next start
	// undoes it again.
	abandon := func(c *resourceapi.ResourceClaim, pc preparedClaim, err error) {
		if uerr := d.release(ctx, next, string(c.UID), pc); uerr != nil {
			fail(c, errors.Join(err, uerr))
			return
		}
		fail(c, err)
		delete(next.Claims, string(c.UID))
	}
	var written []*resourceapi.ResourceClaim
	for _, c := range todo {
		pc, err := d.prepareMIG(ctx, next.Claims[string(c.UID)])
		if err != nil {
			abandon(c, pc, err)
			continue
		}
		next.Claims[string(c.UID)] = pc
		if d.killed(stepPrepareInstances) {
			failAll(errKilled)
			return out, nil
		}
		if err := d.o.Sharing.apply(ctx, pc.Sharing); err != nil {
			abandon(c, pc, fmt.Errorf("apply the claim's sharing config: %w", err))
			continue
		}
		spec, err := d.writeSpec(c.UID, pc.Devices)
		if err != nil {
			if uerr := d.release(ctx, next, string(c.UID), pc); uerr != nil {
				fail(c, errors.Join(err, uerr))
				continue
			}
			fail(c, err)
			delete(next.Claims, string(c.UID)) // WriteClaim leaves no spec on error
			continue
		}
		pc.SpecFile, pc.State = spec, statePrepareCompleted
		next.Claims[string(c.UID)] = pc
		written = append(written, c)
	}
	if d.killed(stepPrepareSpecs) {
		failAll(errKilled)
		return out, nil
	}
	// Phase 2: the records say "completed"; only now are the names handed out.
	if err := d.commit(next); err != nil {
		for _, c := range written {
			// The records on disk still say "started": a retry or the next
			// start rolls them back. Remove the specs now all the same.
			_ = d.o.CDI.RemoveClaim(string(c.UID))
			fail(c, err)
		}
		return out, nil
	}
	if d.killed(stepPrepareCompleted) {
		failAll(errKilled)
		return out, nil
	}
	for _, c := range written {
		pc := d.cp.Claims[string(c.UID)]
		d.log.Info("DRA claim prepared", "claim", c.Namespace+"/"+c.Name, "uid", c.UID, "devices", len(pc.Devices))
		out[c.UID] = kubeletplugin.PrepareResult{Devices: pc.result()}
	}
	return out, nil
}

// plan checks a claim's allocation against the node and the claims already
// holding devices (inUse: UUID → claim UID), and returns its record,
// PrepareStarted, without writing anything. Must hold d.mu.
func (d *Driver) plan(c *resourceapi.ResourceClaim, inUse map[string]string) (preparedClaim, error) {
	snap := d.o.Store.Snapshot()
	byName := map[string]entry{}
	for _, e := range catalog(snap.Node, d.o.Devices.DynamicMIG) {
		byName[e.Name] = e
	}
	pc := preparedClaim{State: statePrepareStarted, Namespace: c.Namespace, Name: c.Name}
	results := d.claimResults(c)
	var (
		configs []opaqueConfig
		devCfgs []*DeviceConfig // by device, as pc.Devices
		shared  []sharedDevice
	)
	if len(results) > 0 {
		var err error
		if configs, err = decodeConfigs(c.Status.Allocation.Devices.Config); err != nil {
			return pc, fmt.Errorf("claim configuration: %w", err)
		}
	}
	for _, r := range results {
		if r.Pool != d.pool {
			return pc, fmt.Errorf("device %s is allocated from pool %q, but this node's pool is %q", r.Device, r.Pool, d.pool)
		}
		e, ok := byName[r.Device]
		if !ok {
			return pc, fmt.Errorf("device %s is not on this node (any more); delete the pod so its claim is allocated again", r.Device)
		}
		if t := untolerated(Taints(snap, e.UUID, e.Parent), r.Tolerations); t != nil {
			return pc, fmt.Errorf("device %s (%s) is unhealthy (taint %s=%s:%s) and the claim does not tolerate it; delete the pod so its claim is allocated again",
				r.Device, e.UUID, t.Key, t.Value, t.Effect)
		}
		cfg, err := configFor(configs, r.Request, e.MIG >= 0 || e.Place != nil)
		if err != nil {
			return pc, fmt.Errorf("device %s, request %s: %w", r.Device, r.Request, err)
		}
		admin := r.AdminAccess != nil && *r.AdminAccess
		// A share of a device published for several claims (consumable
		// capacity) only conflicts with a claim holding it whole.
		owner, busy := inUse[e.UUID]
		if r.ShareID != nil {
			owner, busy = inUse[exclusiveKey(e.UUID)]
		}
		if e.Place != nil {
			owner, busy = "", false // no UUID yet: its GPU and slices are checked below
		}
		if o := d.migConflict(inUse, string(c.UID), e); o != "" {
			owner, busy = o, true
		}
		if busy && !admin && owner != string(c.UID) {
			return pc, fmt.Errorf("device %s is already prepared for claim %s; refusing to hand it out twice", r.Device, owner)
		}
		if admin && e.Place != nil {
			return pc, fmt.Errorf("device %s is a MIG placement created for its claim; admin access to it is not supported", r.Device)
		}
		pd := preparedDevice{
			Requests: []string{r.Request}, Pool: r.Pool, Device: r.Device, UUID: e.UUID, AdminAccess: admin, ShareID: r.ShareID,
			CDIDeviceIDs: []string{cdispec.ClaimDeviceID(d.o.CDI.Options.Kind, cdiName(c.UID, r.Device))},
		}
		if p := e.Place; p != nil {
			pd.MIG = &migRecord{GPU: e.Parent, ProfileID: p.Profile.ID, Profile: p.Profile.Name, Start: p.Start, Size: p.Profile.MemorySlices}
		}
		pc.Devices = append(pc.Devices, pd)
		gpu := e.UUID
		if e.MIG >= 0 {
			gpu = ""
		}
		devCfgs = append(devCfgs, cfg)
		shared = append(shared, sharedDevice{UUID: e.UUID, GPU: gpu, Share: r.ShareID != nil})
	}
	// Each config applies once, to all the devices it is for, as NVIDIA's
	// driver groups them (one MPS daemon for them all).
	var order []*DeviceConfig
	groups := map[*DeviceConfig][]int{}
	for i, cfg := range devCfgs {
		if _, ok := groups[cfg]; !ok {
			order = append(order, cfg)
		}
		groups[cfg] = append(groups[cfg], i)
	}
	for _, cfg := range order {
		var devs []sharedDevice
		for _, i := range groups[cfg] {
			devs = append(devs, shared[i])
		}
		a, err := d.o.Sharing.planSharing(string(c.UID), cfg, devs, d.o.Devices.ConsumableCapacity)
		if err != nil {
			var names []string
			for _, i := range groups[cfg] {
				names = append(names, pc.Devices[i].Device+" (request "+pc.Devices[i].Requests[0]+")")
			}
			return pc, fmt.Errorf("%s: %w", strings.Join(names, ", "), err)
		}
		if a == nil {
			continue
		}
		for _, i := range groups[cfg] {
			if pc.Devices[i].MIG != nil {
				return pc, fmt.Errorf("%s: %w", pc.Devices[i].Device, errNoDynamicSharing)
			}
		}
		if a.MPS != nil {
			for _, i := range groups[cfg] {
				pc.Devices[i].MPSDaemon = a.MPS.ID
			}
		}
		pc.Sharing = append(pc.Sharing, *a)
	}
	return pc, nil
}

// writeSpec writes the claim's CDI spec, one CDI device per DRA device.
func (d *Driver) writeSpec(uid types.UID, devs []preparedDevice) (string, error) {
	var cd []cdispec.ClaimDevice
	seen := map[string]bool{}
	for _, p := range devs {
		name := cdiName(uid, p.Device)
		if seen[name] { // two requests may share a device (admin access)
			continue
		}
		seen[name] = true
		dev := cdispec.ClaimDevice{Name: name, UUID: p.UUID}
		if p.MPSDaemon != "" {
			var err error
			if dev.Env, dev.Mounts, err = d.o.Sharing.mpsEdits(p.MPSDaemon); err != nil {
				return "", err
			}
		}
		cd = append(cd, dev)
	}
	return d.o.CDI.WriteClaim(withInstances(d.o.Store.Snapshot().Node, devs), string(uid), cd)
}

// cdiName is a claim device's CDI name, <claim UID>-<device>, as NVIDIA's:
// unique per claim, so a runtime's cached spec never resolves a stale one.
func cdiName(uid types.UID, device string) string { return string(uid) + "-" + device }

// inUse maps each device UUID held by a claim of cp (not through admin
// access) to that claim's UID, and exclusiveKey(UUID) to the claim holding
// it whole (not a share). A claim whose Prepare failed holds nothing: its
// spec was removed and its record is rolled back on retry or start.
func (d *Driver) inUse(cp *checkpoint) map[string]string {
	out := map[string]string{}
	for uid, pc := range cp.Claims {
		if pc.State != statePrepareStarted {
			markInUse(out, uid, pc)
		}
	}
	return out
}

func markInUse(inUse map[string]string, uid string, pc preparedClaim) {
	for _, p := range pc.Devices {
		if p.AdminAccess {
			continue
		}
		markMIGInUse(inUse, uid, p)
		if p.UUID == "" {
			continue // a placement not created yet
		}
		inUse[p.UUID] = uid
		if p.ShareID == nil {
			inUse[exclusiveKey(p.UUID)] = uid
		}
	}
}

// exclusiveKey is the inUse key of a device held whole.
func exclusiveKey(uuid string) string { return "exclusive/" + uuid }

func (pc preparedClaim) result() []kubeletplugin.Device {
	out := make([]kubeletplugin.Device, 0, len(pc.Devices))
	for _, p := range pc.Devices {
		out = append(out, kubeletplugin.Device{
			Requests: p.Requests, PoolName: p.Pool, DeviceName: p.Device, CDIDeviceIDs: p.CDIDeviceIDs, ShareID: p.ShareID,
		})
	}
	return out
}

// UnprepareResourceClaims removes each claim's spec and forgets it. A claim
// not prepared (or already unprepared) is no error. Success is answered
// only once the checkpoint no longer holds the claim.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[types.UID]error, len(claims))
	next := d.cp.clone()
	var todo []kubeletplugin.NamespacedObject
	for _, c := range claims {
		out[c.UID] = nil
		pc, ok := next.Claims[string(c.UID)]
		if !ok {
			continue
		}
		pc.State = stateUnprepareStarted
		next.Claims[string(c.UID)] = pc
		todo = append(todo, c)
	}
	if len(todo) == 0 {
		return out, nil
	}
	failAll := func(err error) {
		for _, c := range todo {
			out[c.UID] = err
		}
	}
	// Phase 1: the records say "unprepare started" while specs still exist.
	if err := d.commit(next); err != nil {
		failAll(err)
		return out, nil
	}
	if d.killed(stepUnprepareStarted) {
		failAll(errKilled)
		return out, nil
	}
	next = d.cp.clone()
	var removed []kubeletplugin.NamespacedObject
	for _, c := range todo {
		if err := d.release(ctx, next, string(c.UID), next.Claims[string(c.UID)]); err != nil {
			out[c.UID] = err
			continue
		}
		delete(next.Claims, string(c.UID))
		removed = append(removed, c)
	}
	if d.killed(stepUnprepareSpecs) {
		failAll(errKilled)
		return out, nil
	}
	// Phase 2: the records are gone; the devices are free.
	if err := d.commit(next); err != nil {
		for _, c := range removed {
			out[c.UID] = err
		}
		return out, nil
	}
	if d.killed(stepUnprepareComplete) {
		failAll(errKilled)
		return out, nil
	}
	for _, c := range removed {
		d.log.Info("DRA claim unprepared", "claim", c.String(), "uid", c.UID)
	}
	return out, nil
}

// cleanup unprepares every recorded claim whose ResourceClaim is gone from
// the API server or was replaced by one of the same name (another UID): no
// pod can use it any more, and the kubelet, which may have lost track of
// it, would otherwise never release its devices and spec. A claim the API
// server cannot be asked about now is left for the next round.
func (d *Driver) cleanup(ctx context.Context) {
	d.mu.Lock()
	recorded := d.cp.clone()
	d.mu.Unlock()
	var stale []kubeletplugin.NamespacedObject
	for _, uid := range recorded.uids() {
		pc := recorded.Claims[uid]
		if pc.Name == "" {
			continue
		}
		getCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
		claim, err := d.o.Client.ResourceV1().ResourceClaims(pc.Namespace).Get(getCtx, pc.Name, metav1.GetOptions{})
		cancel()
		var why string
		switch {
		case apierrors.IsNotFound(err):
			why = "claim deleted"
		case err != nil:
			d.log.Warn("DRA cleanup: claim not checked; next round retries", "claim", pc.Namespace+"/"+pc.Name, "err", err)
			continue
		case string(claim.UID) != uid:
			why = "claim replaced (UID " + string(claim.UID) + ")"
		default:
			continue
		}
		d.log.Info("DRA cleanup: unpreparing a claim the API server no longer has", "claim", pc.Namespace+"/"+pc.Name, "uid", uid, "why", why)
		stale = append(stale, kubeletplugin.NamespacedObject{
			UID: types.UID(uid), NamespacedName: types.NamespacedName{Namespace: pc.Namespace, Name: pc.Name},
		})
	}
	if len(stale) == 0 {
		return
	}
	res, _ := d.UnprepareResourceClaims(ctx, stale)
	for uid, err := range res {
		if err != nil {
			d.log.Warn("DRA cleanup: unprepare failed; next round retries", "uid", uid, "err", err)
		}
	}
}
