// Package plugin serves the kubelet device-plugin API (v1beta1): one gRPC
// server per advertised resource, registered with the kubelet and kept
// registered across kubelet restarts, socket deletion and dropped streams.
// The Manager keeps one server per resource and updates only the servers
// whose resource changed; Dial is the kubelet's side of a plugin socket.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/wait"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpulet/gpulet/internal/resources"
)

// Placer picks the best-connected devices for a request. One is built per
// device list (Options.Placement), so topology work is done once per
// inventory change, never per call.
type Placer interface {
	Preferred(ctx context.Context, available, mustInclude []string, size int) ([]string, error)
}

// preferredBudget bounds one placement search; the placer answers with the
// best set found by then.
const preferredBudget = 50 * time.Millisecond

// topologyWait bounds how long GetPreferredAllocation waits for the
// node's links while their scan, started with the server, is still running
// (well under a second on an 8-GPU node); past it the placer answers from
// NUMA alone.
const topologyWait = 10 * time.Second

// Options are shared by every resource server.
type Options struct {
	// PluginDir holds kubelet.sock and the plugins' sockets.
	PluginDir            string
	DeviceListStrategies []string
	DeviceIDStrategy     string
	PassDeviceSpecs      bool
	// MIGMinorsPath is the driver's mig-minors file, which maps a MIG
	// instance to its /dev/nvidia-caps nodes (default
	// cdispec.DefaultMIGMinorsPath; the simulator has its own).
	MIGMinorsPath string
	// CDIKind is the CDI device kind in CDI names (default DefaultCDIKind).
	CDIKind string
	// Placement builds the placer that answers GetPreferredAllocation; nil
	// turns the call off.
	Placement func(*resources.Resource) (Placer, error)
	Log       *slog.Logger
	// Poll is how often sockets are checked besides inotify (default 1s).
	Poll time.Duration
	// MPS hands out access to MPS control daemons for MPS-shared
	// resources; nil when nothing is shared through MPS.
	MPS MPSAccess
	// Observer, when set, is told about registrations, device lists sent
	// and allocations (metrics).
	Observer Observer
	// TakeOver registers and keeps the resource even while another device
	// plugin serves it (a migration); by default gpulet holds back.
	TakeOver bool
	// OnConflict, when set, is told when another plugin is found serving a
	// resource (c set) and when that ends (c nil). Called from the server's
	// own goroutine; it must not block for long.
	OnConflict func(resource string, c *Conflict)
}

// Conflict handling timings.
const (
	// peerSettle is how long after another plugin's socket appears it is
	// probed: the file exists from bind(), a moment before it answers.
	peerSettle = 300 * time.Millisecond
	// peerRecheck is how often a held-back server looks again (doubling up
	// to peerRecheckMax), and the backstop scan while registered.
	peerRecheck    = time.Second
	peerRecheckMax = 5 * time.Minute
	peerBackstop   = 30 * time.Second
	// takeOverDelay is how long a taking-over server waits, after the
	// kubelet restarted or another plugin registered, before it registers
	// (again): long enough to be the last registrant, which the kubelet's
	// device manager makes the one that serves allocations.
	takeOverDelay = 2 * time.Second
	// takeOverDrop is how long a taking-over server stays off its socket
	// before registering again, for the kubelet to drop its endpoint.
	takeOverDrop = 200 * time.Millisecond
)

// Observer is told what the servers do; implementations must be fast and
// safe for concurrent use.
type Observer interface {
	Registration(resource string, err error)
	ListAndWatchSent(resource string, devices int)
	Allocated(resource string, devices int)
}

func (o *Options) kubeletSocket() string { return filepath.Join(o.PluginDir, "kubelet.sock") }

// SocketName is the file name of a resource's plugin socket. "-" is
// doubled so the names of MIG resources that differ only in "." and "-"
// (mig-1g.23gb.me and mig-1g.23gb-me) get sockets of their own.
func SocketName(resource string) string {
	return "gpulet-" + strings.NewReplacer("-", "--", "/", "-", ".", "-").Replace(resource) + ".sock"
}

// Server is the device plugin of one resource.
type Server struct {
	pluginapi.UnimplementedDevicePluginServer
	opts   *Options
	name   string
	socket string
	log    *slog.Logger

	mu           sync.Mutex
	res          *resources.Resource
	placer       Placer
	changed      chan struct{} // closed and replaced on every update
	streams      int
	lastRegister time.Time
	stopping     bool
	// served counts the gRPC servers gpulet stopped itself: a stream that
	// ends because of that was not ended by the kubelet.
	served int

	resync chan struct{}
	// conflict is the conflict last reported (nil: none); owned by Run.
	conflict *Conflict
}

// NewServer returns the server of one resource, not yet serving. It keeps
// its own copy of opts: the caller's value is neither changed nor read later.
func NewServer(opts *Options, res resources.Resource) *Server {
	o := *opts
	if o.Poll == 0 {
		o.Poll = time.Second
	}
	s := &Server{
		opts:    &o,
		name:    res.Name,
		socket:  filepath.Join(o.PluginDir, SocketName(res.Name)),
		log:     o.Log.With("resource", res.Name),
		changed: make(chan struct{}),
		resync:  make(chan struct{}, 1),
	}
	s.Update(res)
	return s
}

// Update replaces the advertised devices; every ListAndWatch stream sends
// the new list at once.
func (s *Server) Update(res resources.Resource) {
	var placer Placer
	if s.opts.Placement != nil {
		var err error
		if placer, err = s.opts.Placement(&res); err != nil {
			s.log.Error("topology-aware placement unavailable for this device list; preferring devices in ID order", "err", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res = &res
	s.placer = placer
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Server) current() (*resources.Resource, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res, s.changed
}

func (s *Server) triggerResync() {
	select {
	case s.resync <- struct{}{}:
	default:
	}
}

// GetDevicePluginOptions tells the kubelet which optional calls we serve.
func (s *Server) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: s.opts.Placement != nil}, nil
}

// ListAndWatch sends the device list now and after every change.
func (s *Server) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	s.mu.Lock()
	s.streams++
	started, gen := time.Now(), s.served
	s.mu.Unlock()
	defer s.streamEnded(started, gen)
	var sent []resources.Device
	for {
		res, changed := s.current()
		// An update the kubelet cannot see (the links filled in, the
		// control devices) sends nothing.
		if sent == nil || !slices.Equal(sent, res.Devices) {
			if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: apiDevices(res)}); err != nil {
				return err
			}
			if o := s.opts.Observer; o != nil {
				o.ListAndWatchSent(s.name, len(res.Devices))
			}
			sent = res.Devices
			if sent == nil {
				sent = []resources.Device{}
			}
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// streamEnded re-registers when the kubelet dropped the stream of our
// current registration and opened no other: without a stream the kubelet
// will soon count our devices as gone.
func (s *Server) streamEnded(started time.Time, gen int) {
	s.mu.Lock()
	s.streams--
	current := !started.Before(s.lastRegister)
	ours := gen != s.served
	s.mu.Unlock()
	if !current || ours {
		return // the kubelet replaced an old registration's stream, or gpulet stopped serving it
	}
	time.AfterFunc(20*time.Millisecond, func() {
		s.mu.Lock()
		idle := s.streams == 0 && !s.stopping
		s.mu.Unlock()
		if idle {
			s.log.Info("kubelet ended the device stream; registering again")
			s.triggerResync()
		}
	})
}

func apiDevices(res *resources.Resource) []*pluginapi.Device {
	out := make([]*pluginapi.Device, len(res.Devices))
	for i, d := range res.Devices {
		h := pluginapi.Healthy
		if !d.Healthy {
			h = pluginapi.Unhealthy
		}
		dev := &pluginapi.Device{ID: d.ID, Health: h}
		if d.NUMA >= 0 {
			dev.Topology = &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: int64(d.NUMA)}}}
		}
		out[i] = dev
	}
	return out
}

// GetPreferredAllocation answers from the topology-aware placer. Input that
// cannot come from a correct kubelet (unknown or repeated IDs, must-include
// devices not offered, an impossible size) is refused with InvalidArgument
// naming the IDs, as Allocate refuses them. The kubelet fails the pod if
// this call fails, so a placer error or a placer answer that is not a valid
// choice falls back to a valid choice in ID order rather than an error.
func (s *Server) GetPreferredAllocation(ctx context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	res, placer := s.placement(ctx)
	resp := &pluginapi.PreferredAllocationResponse{}
	for _, cr := range req.ContainerRequests {
		if err := checkPreferred(res, cr); err != nil {
			return nil, err
		}
		size := int(cr.AllocationSize)
		var ids []string
		var err error
		if placer != nil {
			pctx, cancel := context.WithTimeout(ctx, preferredBudget)
			ids, err = placer.Preferred(pctx, cr.AvailableDeviceIDs, cr.MustIncludeDeviceIDs, size)
			cancel()
			if err == nil {
				err = checkAnswer(cr, ids)
			}
			if err != nil {
				s.log.Warn("placement failed; preferring devices in ID order", "err", err)
			}
		}
		if placer == nil || err != nil {
			ids = inOrder(cr.AvailableDeviceIDs, cr.MustIncludeDeviceIDs, size)
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

// placement returns the device list and its placer once the node's links
// are known: a call that arrives while they are still being scanned waits
// for them, for at most topologyWait or until ctx ends, so it gets the
// same topology-aware answer as a later one.
func (s *Server) placement(ctx context.Context) (*resources.Resource, Placer) {
	var timeout <-chan time.Time
	for {
		s.mu.Lock()
		res, placer, changed := s.res, s.placer, s.changed
		s.mu.Unlock()
		if !res.LinksPending || s.opts.Placement == nil {
			return res, placer
		}
		if timeout == nil {
			s.log.Info("waiting for the GPU links before placing", "limit", topologyWait)
			t := time.NewTimer(topologyWait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-changed:
		case <-ctx.Done():
			s.log.Warn("GPU links not scanned yet and the request ended; placing by NUMA only", "err", ctx.Err())
			return res, placer
		case <-timeout:
			s.log.Warn("GPU links not scanned yet; placing by NUMA only", "waited", topologyWait)
			return res, placer
		}
	}
}

// checkPreferred refuses a request no correct kubelet sends, naming every
// offending ID.
func checkPreferred(res *resources.Resource, cr *pluginapi.ContainerPreferredAllocationRequest) error {
	var problems []string
	avail := make(map[string]bool, len(cr.AvailableDeviceIDs))
	var unknown, repeated []string
	for _, id := range cr.AvailableDeviceIDs {
		if avail[id] {
			repeated = append(repeated, id)
			continue
		}
		avail[id] = true
		if _, ok := res.Device(id); !ok {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		problems = append(problems, fmt.Sprintf("unknown %s devices offered: %s", res.Name, quoted(unknown)))
	}
	if len(repeated) > 0 {
		problems = append(problems, fmt.Sprintf("devices offered more than once: %s", quoted(repeated)))
	}
	var notOffered, mustRepeated []string
	must := make(map[string]bool, len(cr.MustIncludeDeviceIDs))
	for _, id := range cr.MustIncludeDeviceIDs {
		switch {
		case must[id]:
			mustRepeated = append(mustRepeated, id)
		case !avail[id]:
			notOffered = append(notOffered, id)
		}
		must[id] = true
	}
	if len(notOffered) > 0 {
		problems = append(problems, fmt.Sprintf("must-include devices not among the available ones: %s", quoted(notOffered)))
	}
	if len(mustRepeated) > 0 {
		problems = append(problems, fmt.Sprintf("must-include devices listed more than once: %s", quoted(mustRepeated)))
	}
	size := int(cr.AllocationSize)
	switch {
	case size <= 0:
		problems = append(problems, fmt.Sprintf("allocation size %d, want at least 1", size))
	case size > len(avail):
		problems = append(problems, fmt.Sprintf("allocation size %d exceeds the %d distinct devices available", size, len(avail)))
	case len(must) > size:
		problems = append(problems, fmt.Sprintf("%d must-include devices exceed the allocation size %d", len(must), size))
	}
	if len(problems) > 0 {
		return status.Errorf(codes.InvalidArgument, "GetPreferredAllocation for %s: %s", res.Name, strings.Join(problems, "; "))
	}
	return nil
}

// checkAnswer verifies a placer's answer against a checked request: size
// distinct offered devices including every must-include one.
func checkAnswer(cr *pluginapi.ContainerPreferredAllocationRequest, ids []string) error {
	if len(ids) != int(cr.AllocationSize) {
		return fmt.Errorf("placer answered %d devices for a request of %d", len(ids), cr.AllocationSize)
	}
	got := make(map[string]bool, len(ids))
	for _, id := range ids {
		if got[id] {
			return fmt.Errorf("placer answered %q twice", id)
		}
		got[id] = true
		if !slices.Contains(cr.AvailableDeviceIDs, id) {
			return fmt.Errorf("placer answered %q, which was not offered", id)
		}
	}
	for _, id := range cr.MustIncludeDeviceIDs {
		if !got[id] {
			return fmt.Errorf("placer left out must-include device %q", id)
		}
	}
	return nil
}

// quoted lists IDs for an error message, at most 8 of them.
func quoted(ids []string) string {
	const most = 8
	var b strings.Builder
	for i, id := range ids {
		if i == most {
			fmt.Fprintf(&b, " and %d more", len(ids)-most)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", id)
	}
	return b.String()
}

// inOrder takes the required devices, then available ones in order.
func inOrder(available, must []string, size int) []string {
	out := make([]string, 0, size)
	seen := map[string]bool{}
	for _, list := range [][]string{must, available} {
		for _, id := range list {
			if len(out) == size {
				return out
			}
			if !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	return out
}

// Allocate answers each container with its devices, in the configured
// device-list strategies.
func (s *Server) Allocate(ctx context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	res, _ := s.current()
	resp := &pluginapi.AllocateResponse{ContainerResponses: make([]*pluginapi.ContainerAllocateResponse, 0, len(req.ContainerRequests))}
	for _, cr := range req.ContainerRequests {
		if res.MaxPerContainer > 0 && len(cr.DevicesIds) > res.MaxPerContainer && anyReplica(cr.DevicesIds) {
			return nil, status.Errorf(codes.InvalidArgument,
				"a container may ask for at most %d %s (time-sliced replicas of one GPU are not more GPUs; failRequestsGreaterThanOne is set), got %d",
				res.MaxPerContainer, res.Name, len(cr.DevicesIds))
		}
		devs, err := lookup(res, cr.DevicesIds)
		if err != nil {
			return nil, err
		}
		c, err := s.opts.containerResponse(res, devs)
		if err != nil {
			return nil, err
		}
		if err := s.opts.addMPS(ctx, res, devs, c); err != nil {
			return nil, err
		}
		resp.ContainerResponses = append(resp.ContainerResponses, c)
	}
	if o := s.opts.Observer; o != nil {
		for _, cr := range req.ContainerRequests {
			o.Allocated(s.name, len(cr.DevicesIds))
		}
	}
	return resp, nil
}

// PreStartContainer checks that the devices are still known and healthy.
func (s *Server) PreStartContainer(_ context.Context, req *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	res, _ := s.current()
	if _, err := lookup(res, req.DevicesIds); err != nil {
		return nil, err
	}
	return &pluginapi.PreStartContainerResponse{}, nil
}

// Run serves and keeps the server registered until ctx ends, then stops
// serving and removes its socket. It returns an error only when it cannot
// serve at all (the plugin folder is unusable).
func (s *Server) Run(ctx context.Context) error {
	if err := os.MkdirAll(s.opts.PluginDir, 0o755); err != nil {
		return fmt.Errorf("device plugin folder %s: %w", s.opts.PluginDir, err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", s.opts.PluginDir, err)
	}
	defer w.Close()
	if err := w.Add(s.opts.PluginDir); err != nil {
		return fmt.Errorf("watch %s: %w", s.opts.PluginDir, err)
	}

	var (
		srv    *grpc.Server
		served os.FileInfo // the socket we listen on
		// registered is true while the kubelet at kubeletSeen knows our
		// current socket. The kubelet (1.37) refuses a second registration
		// of a connected plugin and forgets the live one while doing so, so
		// gpulet registers only when something changed.
		registered    bool
		kubeletSeen   os.FileInfo // kubelet.sock at our last registration
		waitingLogged bool
		retry         = time.NewTimer(time.Hour)
		// The wait before the next registration try: 50ms doubling to 5s,
		// from 5ms right after kubelet.sock appears.
		retries = func(first time.Duration) wait.Backoff {
			return wait.Backoff{Duration: first, Factor: 2, Cap: 5 * time.Second, Steps: math.MaxInt32}
		}
		backoff = retries(50 * time.Millisecond)
		// Another plugin serving our resource (peers.go): peers fires
		// the next look at the folder's other sockets; notBefore holds a
		// taking-over registration back until the other plugin has
		// registered; clearing waits for a second look that finds nothing.
		peers        = time.NewTimer(time.Hour)
		peerBackoff  = peerRecheck
		notBefore    time.Time
		clearPending bool
		// peerCreated: another plugin's socket appeared since the last
		// look (it started, or restarted with the kubelet, and registers).
		peerCreated bool
		// reassert: taking over, register again once notBefore has passed,
		// from a fresh socket after the kubelet has dropped the current one
		// (kubelet 1.37 refuses a second registration of a connected socket
		// and then loses track of it).
		reassert bool
	)
	retry.Stop()
	peers.Stop()
	stopServing := func() {
		if srv != nil {
			s.mu.Lock()
			s.served++
			s.mu.Unlock()
			srv.Stop()
			srv = nil
		}
	}
	withdraw := func() {
		stopServing()
		if served != nil {
			if fi, err := os.Lstat(s.socket); err == nil && os.SameFile(fi, served) {
				os.Remove(s.socket)
			}
			served = nil
		}
		registered = false
	}
	defer func() {
		s.mu.Lock()
		s.stopping = true
		s.mu.Unlock()
		withdraw()
		s.log.Info("device plugin stopped")
	}()
	holding := func() bool { return s.conflict != nil && !s.conflict.TakingOver }

	// checkPeers looks for another plugin serving our resource; replaced
	// says the kubelet ended our stream while it kept running. Held back,
	// gpulet stops serving so the kubelet drops its endpoint, and looks
	// again with backoff; taking over, it registers (again) once the other
	// plugin has had time to register.
	checkPeers := func(replaced bool) {
		c := s.findConflict(ctx, replaced)
		if c == nil && s.conflict != nil && !clearPending {
			// The other plugin may be between its socket's removal and
			// its new one (it restarts when the kubelet does).
			clearPending = true
			peers.Reset(peerRecheck)
			return
		}
		clearPending = false
		if c != nil {
			c.TakingOver = s.opts.TakeOver
		}
		old := s.conflict
		fresh := s.setConflict(c)
		created := peerCreated
		peerCreated = false
		switch {
		case c == nil:
			if old != nil && old.Signal != "stream-replaced" {
				peerBackoff = peerRecheck
			}
		case c.TakingOver:
			if fresh || replaced || created {
				reassert = true
				notBefore = time.Now().Add(takeOverDelay)
				retry.Reset(takeOverDelay)
			}
		default:
			withdraw()
			peers.Reset(peerBackoff)
			peerBackoff = min(peerBackoff*2, peerRecheckMax)
		}
	}

	// reconcile serves on our socket and registers if the kubelet does not
	// know it; force registers again even so (the kubelet dropped our stream).
	reconcile := func(force bool) {
		if holding() {
			return
		}
		if wait := time.Until(notBefore); wait > 0 {
			retry.Reset(wait)
			return
		}
		if reassert {
			reassert = false
			if kfi, err := os.Stat(s.opts.kubeletSocket()); err == nil && registered && sameFile(kfi, kubeletSeen) {
				withdraw()
				retry.Reset(takeOverDrop)
				return
			}
		}
		fi, err := os.Lstat(s.socket)
		if err != nil || !sameFile(fi, served) {
			stopServing()
			registered = false
			srv, served, err = s.serve()
			if err != nil {
				s.log.Error("cannot serve the device plugin socket; retrying", "socket", s.socket, "err", err)
				retry.Reset(time.Second)
				return
			}
		}
		kfi, err := os.Stat(s.opts.kubeletSocket())
		if err != nil || !sameFile(kfi, kubeletSeen) || force {
			registered = false
		}
		if registered {
			return
		}
		if err == nil {
			err = s.register(ctx)
		}
		if err != nil && strings.Contains(err.Error(), "already connected") {
			// The kubelet still holds a connection to our socket, and has
			// just forgotten it while refusing this registration. Serving
			// a fresh socket ends that connection; the next try is clean.
			s.log.Info("kubelet refused a second registration; serving a fresh socket and registering again", "err", err)
			stopServing()
			served = nil
			retry.Reset(max(50*time.Millisecond, backoff.Step()))
			return
		}
		if err != nil {
			s.log.Debug("registration failed", "err", err)
			if !waitingLogged {
				s.log.Warn("kubelet not reachable; gpulet keeps serving and registers as soon as kubelet.sock appears",
					"kubelet_socket", s.opts.kubeletSocket(), "err", err)
				waitingLogged = true
			}
			retry.Reset(backoff.Step())
			return
		}
		registered, kubeletSeen = true, kfi
		retry.Stop() // a pending retry would be a second registration
		waitingLogged = false
		backoff = retries(50 * time.Millisecond)
	}
	checkPeers(false)
	if s.conflict != nil && s.conflict.TakingOver {
		// The other plugin registered before us: registering now makes
		// gpulet the last registrant.
		notBefore = time.Time{}
	}
	reconcile(false)

	poll := time.NewTicker(s.opts.Poll)
	defer poll.Stop()
	backstop := time.NewTicker(peerBackstop)
	defer backstop.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.resync:
			if kubeletSeen != nil && s.kubeletAnswers(kubeletSeen) {
				// The kubelet ended our stream and kept running: another
				// registration replaced ours. Re-register at most once
				// now; again only with backoff.
				s.mu.Lock()
				lasted := time.Since(s.lastRegister)
				s.mu.Unlock()
				if lasted > time.Minute {
					peerBackoff = peerRecheck
				}
				checkPeers(true)
				if s.conflict != nil {
					continue
				}
			}
			reconcile(true)
		case <-retry.C:
			reconcile(false)
		case <-peers.C:
			checkPeers(false)
			reconcile(false)
		case <-backstop.C:
			if !holding() {
				checkPeers(false)
				reconcile(false)
			}
		case ev := <-w.Events:
			name := filepath.Base(ev.Name)
			switch {
			case ev.Name == s.opts.kubeletSocket() && ev.Op.Has(fsnotify.Create):
				s.log.Info("kubelet.sock created (kubelet restarted); registering again")
				// The file appears at bind(), a moment before listen(): a
				// refused first try is retried within milliseconds.
				backoff = retries(5 * time.Millisecond)
				if s.conflict != nil && s.conflict.TakingOver {
					// The other plugin registers again too: be last.
					notBefore = time.Now().Add(takeOverDelay)
					reassert = true
				}
				// Not forced: the retry timer may already have registered
				// with this very kubelet.sock.
				reconcile(false)
			case ev.Name == s.socket && ev.Op.Has(fsnotify.Remove):
				// Our own stale-socket removal at start also lands here;
				// reconcile tells the two apart by the socket's inode.
				reconcile(false)
			case ev.Name != s.opts.kubeletSocket() && !IsOwnSocket(name) && strings.HasSuffix(name, ".sock") &&
				(ev.Op.Has(fsnotify.Create) || ev.Op.Has(fsnotify.Remove)):
				// Another plugin came or went: look once it answers.
				peerCreated = peerCreated || ev.Op.Has(fsnotify.Create)
				peers.Reset(peerSettle)
			}
		case err := <-w.Errors:
			s.log.Warn("inotify error; relying on polling", "err", err)
		case <-poll.C:
			// Backstop for missed inotify events (a recreated folder).
			reconcile(false)
		}
	}
}

// setConflict records c as the current conflict (nil: none) and tells
// OnConflict when that changed; it reports whether c is a new conflict.
func (s *Server) setConflict(c *Conflict) bool {
	old := s.conflict
	if (old == nil && c == nil) || (old != nil && c != nil && *old == *c) {
		return false
	}
	s.conflict = c
	if s.opts.OnConflict != nil {
		s.opts.OnConflict(s.name, c)
	}
	return c != nil
}

// kubeletAnswers reports whether the kubelet we registered with still
// serves kubelet.sock: then a stream it ended was ended on purpose.
func (s *Server) kubeletAnswers(seen os.FileInfo) bool {
	fi, err := os.Stat(s.opts.kubeletSocket())
	if err != nil || !sameFile(fi, seen) {
		return false
	}
	c, err := net.DialTimeout("unix", s.opts.kubeletSocket(), 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// sameFile reports whether two stats are of one file. A new socket can get
// the inode of a deleted one, so the creation time must match too.
func sameFile(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.ModTime().Equal(b.ModTime())
}

// serve listens on the plugin socket (replacing a stale one) and serves.
func (s *Server) serve() (*grpc.Server, os.FileInfo, error) {
	if err := os.Remove(s.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("remove stale socket: %w", err)
	}
	lis, err := net.Listen("unix", s.socket)
	if err != nil {
		return nil, nil, err
	}
	fi, err := os.Lstat(s.socket)
	if err != nil {
		lis.Close()
		return nil, nil, err
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, s)
	go func() {
		// Serve returns when stopServing stops srv; nothing to report then.
		_ = srv.Serve(lis)
	}()
	return srv, fi, nil
}

// register tells the kubelet about our socket.
func (s *Server) register(ctx context.Context) error {
	// Bounded so a kubelet that hangs cannot stall the loop for long.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+s.opts.kubeletSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	s.mu.Lock()
	s.lastRegister = time.Now()
	s.mu.Unlock()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     filepath.Base(s.socket),
		ResourceName: s.name,
		Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: s.opts.Placement != nil},
	})
	if o := s.opts.Observer; o != nil {
		o.Registration(s.name, err)
	}
	if err != nil {
		return err // gRPC status errors do not wrap syscall errors; their text says it
	}
	s.log.Info("registered with kubelet", "endpoint", filepath.Base(s.socket))
	return nil
}
