package inventory

import (
	"sync"
	"time"
)

// Health is the live health of one device (a GPU or a MIG instance).
type Health struct {
	Healthy bool      `json:"healthy"`
	Reason  string    `json:"reason,omitempty"`
	XID     uint64    `json:"xid,omitempty"`
	Since   time.Time `json:"since"`
}

// Snapshot is a consistent, immutable view of the store. Callers must not
// modify it.
type Snapshot struct {
	Version uint64
	Node    *Node
	Health  map[string]Health // by device UUID; a missing entry means healthy
}

// Healthy reports whether the device with that UUID is healthy.
func (s Snapshot) Healthy(uuid string) bool {
	h, ok := s.Health[uuid]
	return !ok || h.Healthy
}

// Store holds the node as last discovered and the health of its devices,
// and tells subscribers when either changes. It is safe for concurrent use.
type Store struct {
	mu     sync.Mutex
	snap   Snapshot
	subs   map[chan struct{}]struct{}
	nowFor func() time.Time
}

// NewStore returns a store holding node with every device healthy.
func NewStore(node *Node) *Store {
	return &Store{
		snap:   Snapshot{Version: 1, Node: node, Health: map[string]Health{}},
		subs:   map[chan struct{}]struct{}{},
		nowFor: time.Now,
	}
}

// Snapshot returns the current view. It is cheap: snapshots are replaced,
// never mutated.
func (s *Store) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// SetHealth records a device's health and reports whether it changed
// (healthy to unhealthy or back; a new reason while unhealthy also counts).
func (s *Store) SetHealth(uuid string, h Health) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.snap.Health[uuid]
	if !ok {
		old = Health{Healthy: true}
	}
	if old.Healthy == h.Healthy && (h.Healthy || (old.Reason == h.Reason && old.XID == h.XID)) {
		return false
	}
	if h.Since.IsZero() {
		h.Since = s.nowFor()
	}
	health := make(map[string]Health, len(s.snap.Health)+1)
	for k, v := range s.snap.Health {
		health[k] = v
	}
	if h.Healthy {
		delete(health, uuid)
	} else {
		health[uuid] = h
	}
	s.publish(Snapshot{Version: s.snap.Version + 1, Node: s.snap.Node, Health: health})
	return true
}

// SetNode replaces the discovered node (devices appeared or disappeared).
// Health of devices that are still there is kept.
func (s *Store) SetNode(node *Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	present := map[string]bool{}
	for _, g := range node.GPUs {
		present[g.UUID] = true
		for _, m := range g.MIGDevices {
			present[m.UUID] = true
		}
	}
	health := map[string]Health{}
	for k, v := range s.snap.Health {
		if present[k] {
			health[k] = v
		}
	}
	s.publish(Snapshot{Version: s.snap.Version + 1, Node: node, Health: health})
}

// SetLinks fills in the link matrix of node, a node DiscoverDevices
// returned with LinksPending, once its scan is done; links nil means the
// scan failed and placement goes by NUMA only. It reports false, changing
// nothing, when node is no longer the store's (a rediscovery replaced it,
// with its own links).
func (s *Store) SetLinks(node *Node, links [][]Link) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snap.Node != node || !node.LinksPending {
		return false
	}
	n := *node
	n.Links, n.LinksPending = links, false
	s.publish(Snapshot{Version: s.snap.Version + 1, Node: &n, Health: s.snap.Health})
	return true
}

// publish installs a new snapshot and wakes every subscriber. Must hold mu.
func (s *Store) publish(snap Snapshot) {
	s.snap = snap
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default: // a wake-up is already pending; it will read the newest snapshot
		}
	}
}

// Subscribe returns a channel that receives a value after each change
// (coalesced: a slow reader sees the latest snapshot, not every step) and a
// function that ends the subscription.
func (s *Store) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}
