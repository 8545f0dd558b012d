package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLeanBuildLinksNoKubernetesAPI: `make build-lean` (tag nokube) links
// no Kubernetes client, API types or DRA library: their package inits and
// pages are what made a plain device plugin cost more than NVIDIA's
// (docs/benchmarks.md). A new import that brings them back fails here.
func TestLeanBuildLinksNoKubernetesAPI(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command(goBin, "list", "-tags", "nokube", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps gave %d packages; want gpulet's dependencies", len(deps))
	}
	for _, p := range deps {
		for _, banned := range []string{"k8s.io/client-go/", "k8s.io/api/", "k8s.io/dynamic-resource-allocation/",
			"github.com/gpulet/gpulet/internal/kube", "github.com/gpulet/gpulet/internal/dra", "github.com/gpulet/gpulet/internal/labels/publish"} {
			// "a/b/" bans everything under a/b; "a/b" bans a/b and its subpackages, not a/bc.
			if strings.HasPrefix(p, banned) && (strings.HasSuffix(banned, "/") || p == banned || strings.HasPrefix(p, banned+"/")) {
				t.Errorf("the nokube build links %s", p)
			}
		}
	}
}
