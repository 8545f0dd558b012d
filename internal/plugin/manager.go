package plugin

import (
	"context"
	"sync"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/resources"
)

// Manager keeps one Server per resource in step with the inventory: a new
// resource gets a server, a changed one an update, an unchanged one nothing
// (an update rebuilds its placer and wakes its streams). A resource that loses all
// its devices keeps its server with an empty list, so the kubelet sees the
// capacity drop instead of a vanished plugin.
type Manager struct {
	Opts      *Options
	Store     *inventory.Store
	Resources resources.Config

	mu      sync.Mutex
	servers map[string]*Server
	// reconfigured wakes Run after SetResources.
	reconfigured chan struct{}
}

// SetResources replaces the resources config while Run serves, as a change
// of the inventory would: a resource whose devices, replicas or name
// changed gets its new device list on its ListAndWatch streams (the
// kubelet updates its capacity; containers keep their devices), a new one
// a server that registers, one gone an empty list; the others see nothing.
func (m *Manager) SetResources(rc resources.Config) {
	m.mu.Lock()
	m.Resources = rc
	if m.reconfigured == nil {
		m.reconfigured = make(chan struct{}, 1)
	}
	wake := m.reconfigured
	m.mu.Unlock()
	select {
	case wake <- struct{}{}:
	default:
	}
}

// Servers returns the running servers by resource name.
func (m *Manager) Servers() map[string]*Server {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]*Server, len(m.servers))
	for k, v := range m.servers {
		out[k] = v
	}
	return out
}

// Run serves until ctx ends and every server has removed its socket.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.servers = map[string]*Server{}
	if m.reconfigured == nil {
		m.reconfigured = make(chan struct{}, 1)
	}
	reconfigured := m.reconfigured
	m.mu.Unlock()
	changes, unsubscribe := m.Store.Subscribe()
	defer unsubscribe()

	var wg sync.WaitGroup
	errs := make(chan error, 1)
	defer wg.Wait() // runs after cancel: every server stops and removes its socket
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := func(s *Server) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Run(ctx); err != nil {
				select {
				case errs <- err:
				default:
				}
			}
		}()
	}
	m.apply(start)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return err
		case <-changes:
			m.apply(start)
		case <-reconfigured:
			m.apply(start)
		}
	}
}

// apply brings the servers in step with the store's current snapshot;
// start runs a newly created server.
func (m *Manager) apply(start func(*Server)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	built := resources.Build(m.Store.Snapshot(), m.Resources)
	present := map[string]bool{}
	for _, r := range built {
		present[r.Name] = true
		if s, ok := m.servers[r.Name]; ok {
			if old, _ := s.current(); !old.Equal(&r) {
				s.Update(r)
			}
			continue
		}
		s := NewServer(m.Opts, r)
		m.servers[r.Name] = s
		start(s)
	}
	for name, s := range m.servers {
		if !present[name] {
			old, _ := s.current()
			empty := *old
			empty.Devices = nil
			if len(old.Devices) > 0 {
				s.Update(empty)
			}
		}
	}
}
