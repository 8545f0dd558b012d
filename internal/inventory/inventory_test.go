package inventory

import (
	"encoding/json"
	"strings"
	"testing"
)

func node(uuids ...string) *Node {
	n := &Node{}
	for i, u := range uuids {
		n.GPUs = append(n.GPUs, GPU{UUID: u, Index: i, Minor: i})
	}
	return n
}

func TestStoreHealthChangesAndNotifies(t *testing.T) {
	s := NewStore(node("GPU-a", "GPU-b"))
	ch, stop := s.Subscribe()
	defer stop()
	if s.SetHealth("GPU-a", Health{Healthy: true}) {
		t.Error("healthy → healthy reported as a change")
	}
	select {
	case <-ch:
		t.Fatal("notified without a change")
	default:
	}
	v := s.Snapshot().Version
	if !s.SetHealth("GPU-a", Health{Reason: "XID 48", XID: 48}) {
		t.Fatal("fault not reported as a change")
	}
	if s.SetHealth("GPU-a", Health{Reason: "XID 48", XID: 48}) {
		t.Error("the same fault twice reported as a change")
	}
	if !s.SetHealth("GPU-a", Health{Reason: "XID 79", XID: 79}) {
		t.Error("a new reason while unhealthy is a change")
	}
	// Two changes, one pending wake-up: a slow reader reads the newest state.
	<-ch
	select {
	case <-ch:
		t.Fatal("wake-ups not coalesced")
	default:
	}
	snap := s.Snapshot()
	if snap.Version != v+2 || snap.Healthy("GPU-a") || snap.Health["GPU-a"].XID != 79 || snap.Health["GPU-a"].Since.IsZero() {
		t.Errorf("snapshot %+v", snap)
	}
	old := snap
	s.SetHealth("GPU-a", Health{Healthy: true})
	if old.Healthy("GPU-a") {
		t.Error("an earlier snapshot changed under its reader")
	}
	if !s.Snapshot().Healthy("GPU-a") || len(s.Snapshot().Health) != 0 {
		t.Error("recovery not recorded")
	}
}

func TestSetNodeKeepsHealthOfRemainingDevices(t *testing.T) {
	s := NewStore(node("GPU-a", "GPU-b"))
	s.SetHealth("GPU-a", Health{Reason: "x"})
	s.SetHealth("GPU-b", Health{Reason: "y"})
	s.SetNode(node("GPU-b", "GPU-c"))
	h := s.Snapshot().Health
	if _, ok := h["GPU-a"]; ok || h["GPU-b"].Reason != "y" || len(h) != 1 {
		t.Errorf("health after rediscovery %+v", h)
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		n    *Node
		want string
	}{
		{"ok", node("GPU-a", "GPU-b"), ""},
		{"no uuid", node(""), "has no UUID"},
		{"dup uuid", node("GPU-a", "GPU-a"), "appears twice"},
		{"dup minor", &Node{GPUs: []GPU{{UUID: "a", Minor: 1}, {UUID: "b", Minor: 1}}}, "minor 1 appears twice"},
		{"short links", &Node{GPUs: node("a", "b").GPUs, Links: [][]Link{{{}, {}}}}, "1 rows for 2 GPUs"},
		{"asymmetric", &Node{GPUs: node("a", "b").GPUs, Links: [][]Link{{{}, {NVLinks: 1}}, {{NVLinks: 2}, {}}}}, "not symmetric"},
		{"mig dup", &Node{GPUs: []GPU{{UUID: "a", MIGDevices: []MIGDevice{{UUID: "a"}}}}}, "MIG device"},
	}
	for _, tc := range cases {
		err := tc.n.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestLevelNamesRoundTrip(t *testing.T) {
	for _, l := range []Level{LevelSYS, LevelNODE, LevelPHB, LevelPXB, LevelPIX, LevelSame} {
		b, _ := json.Marshal(l)
		var back Level
		if err := json.Unmarshal(b, &back); err != nil || back != l {
			t.Errorf("%v → %s → %v (%v)", l, b, back, err)
		}
	}
	if _, err := ParseLevel("NV2"); err == nil {
		t.Error("NV2 is not a PCIe level")
	}
	if LevelPIX <= LevelPXB || LevelPXB <= LevelPHB || LevelPHB <= LevelNODE || LevelNODE <= LevelSYS {
		t.Error("levels must order closest highest, as the pair score needs")
	}
}

// TestSetLinksFillsPendingNodeOnly: the links of a node discovered without
// them reach the store (and its subscribers) with the health kept; links
// scanned for a node a rediscovery has since replaced, or for a node that
// has its links, change nothing.
func TestSetLinksFillsPendingNodeOnly(t *testing.T) {
	links := [][]Link{{{}, {NVLinks: 4}}, {{NVLinks: 4}, {}}}
	pending := node("GPU-a", "GPU-b")
	pending.LinksPending = true
	s := NewStore(pending)
	s.SetHealth("GPU-b", Health{Healthy: false, Reason: "xid 79"})
	ch, stop := s.Subscribe()
	defer stop()
	if !s.SetLinks(pending, links) {
		t.Fatal("SetLinks on the pending node changed nothing")
	}
	select {
	case <-ch:
	default:
		t.Error("subscribers were not told about the links")
	}
	snap := s.Snapshot()
	if snap.Node.LinksPending || snap.Node.Link(0, 1).NVLinks != 4 || snap.Healthy("GPU-b") || pending.Links != nil {
		t.Errorf("after SetLinks: pending %v, links %v, GPU-b healthy %v; the discovered node changed: %v",
			snap.Node.LinksPending, snap.Node.Links, snap.Healthy("GPU-b"), pending.Links != nil)
	}
	if s.SetLinks(snap.Node, nil) {
		t.Error("SetLinks replaced the links of a node that has them")
	}
	stale := node("GPU-a", "GPU-b")
	stale.LinksPending = true
	s.SetNode(node("GPU-a"))
	if s.SetLinks(stale, links) || s.Snapshot().Node.Links != nil {
		t.Error("SetLinks applied the links of a node the store no longer holds")
	}
}
