package inventory

import (
	"context"
	"testing"
)

func TestSubsetKeepsIndexesAndLinks(t *testing.T) {
	n := &Node{GPUs: []GPU{{UUID: "a", Index: 0, Minor: 0}, {UUID: "b", Index: 1, Minor: 1}, {UUID: "c", Index: 2, Minor: 2}}}
	n.Links = [][]Link{{{}, {NVLinks: 1}, {NVLinks: 2}}, {{NVLinks: 1}, {}, {NVLinks: 3}}, {{NVLinks: 2}, {NVLinks: 3}, {}}}
	s := n.Subset(func(g GPU) bool { return g.UUID != "a" })
	if len(s.GPUs) != 2 || s.GPUs[0].Index != 1 || s.GPUs[1].Index != 2 {
		t.Fatalf("subset GPUs %+v", s.GPUs)
	}
	if s.Link(0, 1).NVLinks != 3 || len(n.GPUs) != 3 {
		t.Errorf("subset links %+v (original changed: %v)", s.Links, len(n.GPUs) != 3)
	}
	if err := s.Validate(); err != nil {
		t.Error(err)
	}
}

func TestViewFollowsSource(t *testing.T) {
	src := NewStore(&Node{GPUs: []GPU{{UUID: "a", Minor: 0}, {UUID: "b", Minor: 1}}})
	ctx, cancel := context.WithCancel(context.Background())
	view, wait := View(ctx, src, func(g GPU) bool { return g.UUID == "b" })
	defer func() { cancel(); wait() }()
	changes, stop := view.Subscribe()
	defer stop()
	src.SetHealth("a", Health{Reason: "x"}) // not the view's
	src.SetHealth("b", Health{Reason: "y"})
	for view.Snapshot().Healthy("b") {
		<-changes
	}
	if _, ok := view.Snapshot().Health["a"]; ok || len(view.Snapshot().Node.GPUs) != 1 {
		t.Errorf("view holds another side's GPU: %+v", view.Snapshot())
	}
	src.SetNode(&Node{GPUs: []GPU{{UUID: "a", Minor: 0}}}) // b disappears
	for len(view.Snapshot().Node.GPUs) != 0 {
		<-changes
	}
}
