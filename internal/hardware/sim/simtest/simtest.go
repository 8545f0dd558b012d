// Package simtest gives tests a simulated GPU node: one helper instead of a
// copy per package.
package simtest

import (
	"bytes"
	"context"
	"testing"

	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/inventory"
)

// Profile loads a built-in profile by name, or parses profile YAML.
func Profile(t testing.TB, profile string) *sim.Profile {
	t.Helper()
	var p *sim.Profile
	var err error
	if bytes.ContainsAny([]byte(profile), ":\n") {
		p, err = sim.ParseProfile([]byte(profile))
	} else {
		p, err = sim.LoadProfile(profile)
	}
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Node is the node the simulator discovers for profile (a built-in name or
// YAML), with its device nodes, MIG minors and fault file under a
// temporary folder.
func Node(t testing.TB, profile string) *inventory.Node {
	t.Helper()
	_, n := Backend(t, profile)
	return n
}

// Backend is Node with the simulator that serves it (for faults, its MIG
// minors, its telemetry).
func Backend(t testing.TB, profile string) (*sim.Backend, *inventory.Node) {
	t.Helper()
	return BackendOf(t, Profile(t, profile))
}

// BackendOf is Backend for a profile already loaded.
func BackendOf(t testing.TB, p *sim.Profile) (*sim.Backend, *inventory.Node) {
	t.Helper()
	b, err := sim.New(p, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	n, err := b.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b, n
}
