package scenarios

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// scenarios maps a scenario id of test/e2e/scenarios.sh's table to its Go
// body. run.sh runs one at a time: GPULET_E2E_SCENARIO=<id> and
// -test.run '^TestScenarios$'.
var scenarios = map[string]func(*S){
	"ds":             scenarioDS,
	"seed-job":       scenarioSeedJob,
	"sharing":        scenarioSharing,
	"fault":          scenarioFault,
	"restarts":       scenarioRestarts,
	"no-gpu":         scenarioNoGPU,
	"cdi":            scenarioCDI,
	"cdi-video":      scenarioCDIVideo,
	"labels":         scenarioLabels,
	"metrics":        scenarioMetrics,
	"dra":            scenarioDRA,
	"dra-ext":        scenarioDRAExt,
	"node-config":    scenarioNodeConfig,
	"two-node":       scenarioTwoNode,
	"mig":            scenarioMIG,
	"nvml":           scenarioNVML,
	"dra-mig":        scenarioDRAMIG,
	"policy":         scenarioPolicy,
	"dra-quickstart": scenarioDRAQuickstart,
	"dra-capacity":   scenarioDRACapacity,
	"dra-migrate":    scenarioDRAMigrate,
	"upgrade":        scenarioUpgrade,
}

// Env is what run.sh knows about the cluster, from the environment.
type Env struct {
	W          string // the run's work folder (nsrun, nsrun2, pki/)
	Logs       string // the run's log folder (timings.tsv)
	Gpulet     string // the gpulet binary, run on the nodes through nsrun/nsrun2
	CBin       string // containerd's binaries (ctr)
	Node       string // the GPU node
	Node2      string // the CPU-only node
	Namespace  string // gpulet's namespace
	DaemonSet  string // gpulet's DaemonSet
	SimRoot    string // the simulator's root on the node
	SimProfile string // the simulated node's profile
	SimGPUs    int    // how many GPUs that profile has
	Manifests  string // test/e2e/manifests
	DeployDir  string // deploy/
	// DeployedAt is when run.sh applied the DaemonSet (Unix ms; 0 when unknown).
	DeployedAt int64

	Config *rest.Config
	Client kubernetes.Interface
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// loadEnv reads the environment run.sh sets; it skips the test when the
// e2e cluster is not there (plain `go test ./...`).
func loadEnv(t *testing.T) *Env {
	t.Helper()
	w := os.Getenv("GPULET_E2E_W")
	if w == "" {
		t.Skip("GPULET_E2E_W is not set: the e2e scenarios run only under test/e2e/run.sh (make e2e)")
	}
	e := &Env{
		W:          w,
		Logs:       envOr("GPULET_E2E_LOGS", filepath.Join(w, "logs")),
		Gpulet:     os.Getenv("GPULET_E2E_GPULET"),
		CBin:       os.Getenv("GPULET_E2E_CBIN"),
		Node:       envOr("GPULET_E2E_NODE", "e2e-node"),
		Node2:      envOr("GPULET_E2E_NODE2", "e2e-node2"),
		Namespace:  envOr("GPULET_E2E_NAMESPACE", "gpu-resources"),
		DaemonSet:  envOr("GPULET_E2E_DAEMONSET", "gpulet"),
		SimRoot:    envOr("GPULET_E2E_SIM_ROOT", "/var/lib/gpulet/sim"),
		SimProfile: envOr("GPULET_E2E_SIM_PROFILE", "dgx-h100"),
		SimGPUs:    8,
		Manifests:  os.Getenv("GPULET_E2E_MANIFESTS"),
		DeployDir:  os.Getenv("GPULET_E2E_DEPLOY"),
	}
	if e.Manifests == "" {
		e.Manifests = "../manifests"
	}
	if e.DeployDir == "" {
		e.DeployDir = "../../../deploy"
	}
	if v := os.Getenv("GPULET_E2E_DEPLOYED_MS"); v != "" {
		e.DeployedAt = atoi64(t, v)
	}
	if e.Gpulet == "" {
		t.Fatal("GPULET_E2E_GPULET (the gpulet binary for the nodes) is not set")
	}
	kc := envOr("KUBECONFIG", filepath.Join(w, "pki", "kubeconfig"))
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatalf("kubeconfig %s: %v", kc, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client for %s: %v", kc, err)
	}
	e.Config, e.Client = cfg, cs
	return e
}

// TestScenarios runs the scenario GPULET_E2E_SCENARIO names as a subtest of
// that name.
func TestScenarios(t *testing.T) {
	e := loadEnv(t)
	id := os.Getenv("GPULET_E2E_SCENARIO")
	run, ok := scenarios[id]
	if !ok {
		ids := make([]string, 0, len(scenarios))
		for k := range scenarios {
			ids = append(ids, k)
		}
		sort.Strings(ids)
		t.Fatalf("GPULET_E2E_SCENARIO=%q is not a Go scenario (have: %s)", id, strings.Join(ids, " "))
	}
	t.Run(id, func(t *testing.T) { run(newS(t, e)) })
}

// TestScenariosRegistered: every Go scenario is in scenarios.sh's table, and
// scenarios.sh has no bash body left for it (a scenario lives in one place).
func TestScenariosRegistered(t *testing.T) {
	b, err := os.ReadFile("../scenarios.sh")
	if err != nil {
		t.Fatal(err)
	}
	sh := string(b)
	for id := range scenarios {
		if !strings.Contains(sh, "\t\""+id+"|") {
			t.Errorf("scenario %q has no entry in scenarios.sh's SCENARIOS table", id)
		}
		fn := "scenario_" + strings.ReplaceAll(id, "-", "_") + "() {"
		if strings.Contains(sh, fn) && id != "ds" {
			t.Errorf("scenarios.sh still defines %s: delete the bash body of a scenario ported to Go", fn)
		}
	}
}
