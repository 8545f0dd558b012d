package inventory

import "context"

// Subset returns a copy of n holding only the GPUs keep accepts (with their
// MIG devices), and the link matrix restricted to them. GPUs keep their
// index and minor, so names derived from them do not change. The result
// shares GPU values' MIG slices with n; callers must not modify either.
func (n *Node) Subset(keep func(GPU) bool) *Node {
	out := *n
	out.GPUs = nil
	var pos []int
	for i, g := range n.GPUs {
		if keep(g) {
			out.GPUs = append(out.GPUs, g)
			pos = append(pos, i)
		}
	}
	out.Links = nil
	if len(n.Links) == len(n.GPUs) && len(n.Links) > 0 {
		out.Links = make([][]Link, len(pos))
		for a, i := range pos {
			out.Links[a] = make([]Link, len(pos))
			for b, j := range pos {
				out.Links[a][b] = n.Link(i, j)
			}
		}
	}
	return &out
}

// View returns a store that holds the part of src's node keep accepts and
// the health of those devices, and keeps it in step with src until ctx
// ends. It is how two consumers (the device plugin and DRA) each see only
// the GPUs they own. The returned wait blocks until following has stopped.
func View(ctx context.Context, src *Store, keep func(GPU) bool) (view *Store, wait func()) {
	changes, unsubscribe := src.Subscribe()
	snap := src.Snapshot()
	view = NewStore(snap.Node.Subset(keep))
	syncHealth(view, snap)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer unsubscribe()
		node := snap.Node
		for {
			select {
			case <-ctx.Done():
				return
			case <-changes:
			}
			s := src.Snapshot()
			if s.Node != node {
				node = s.Node
				view.SetNode(s.Node.Subset(keep))
			}
			syncHealth(view, s)
		}
	}()
	return view, func() { <-done }
}

// syncHealth copies the health of view's devices from snap.
func syncHealth(view *Store, snap Snapshot) {
	for _, g := range view.Snapshot().Node.GPUs {
		view.SetHealth(g.UUID, healthOf(snap, g.UUID))
		for _, m := range g.MIGDevices {
			view.SetHealth(m.UUID, healthOf(snap, m.UUID))
		}
	}
}

func healthOf(s Snapshot, uuid string) Health {
	if h, ok := s.Health[uuid]; ok {
		return h
	}
	return Health{Healthy: true}
}
