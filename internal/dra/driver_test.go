package dra

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/hardware/sim"
	"github.com/gpulet/gpulet/internal/hardware/sim/simtest"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/mps"
	"github.com/gpulet/gpulet/internal/waittest"
)

const testNode = "gpu-node-1"

// rig is a driver under test with what surrounds it on a node: the fake
// API server, the folders, and a kubelet-side gRPC client on its socket.
type rig struct {
	t       testing.TB
	client  *fake.Clientset
	store   *inventory.Store
	node    *inventory.Node
	sim     *sim.Backend
	opts    Options
	cdiDir  string
	driver  *Driver
	kubelet drapb.DRAPluginClient
	conn    *grpc.ClientConn
}

func newRig(t testing.TB, profile string) *rig {
	t.Helper()
	b, node := simtest.Backend(t, profile)
	migMinors := b.MIGMinorsPath()
	base, err := os.MkdirTemp("", "dra") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	r := &rig{
		t:      t,
		client: fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode, UID: "node-uid"}}),
		store:  inventory.NewStore(node),
		node:   node,
		sim:    b,
		cdiDir: filepath.Join(base, "cdi"),
	}
	bootID := filepath.Join(base, "boot_id")
	if err := os.WriteFile(bootID, []byte("boot-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.opts = Options{
		BootIDPath: bootID,
		NodeName:   testNode, Client: r.client, Store: r.store,
		CDI: &cdispec.Writer{
			Dir: r.cdiDir, Options: cdispec.Options{Kind: cdispec.ClaimKind}, MIGMinorsPath: migMinors,
		},
		PluginDir: filepath.Join(base, "plugin"), RegistrarDir: filepath.Join(base, "registry"),
		HealthResend: 50 * time.Millisecond,
		// As the daemon on the simulator: its compute policy and MPS
		// control stand-ins.
		Sharing: SharingControl{Policy: b, MPS: &mps.Manager{
			Root: filepath.Join(base, "mps"), Control: b.MPSControl(), Log: slog.New(slog.DiscardHandler)}},
		Log: slog.New(slog.DiscardHandler),
	}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *rig) start() {
	r.t.Helper()
	d, err := Start(context.Background(), r.opts)
	if err != nil {
		r.t.Fatal(err)
	}
	r.driver = d
	r.conn, err = grpc.NewClient("unix://"+filepath.Join(r.opts.PluginDir, "dra.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		r.t.Fatal(err)
	}
	r.kubelet = drapb.NewDRAPluginClient(r.conn)
}

func (r *rig) stop() {
	if r.driver == nil {
		return
	}
	r.conn.Close()
	if err := r.driver.Stop(); err != nil {
		r.t.Errorf("driver stopped with %v", err)
	}
	r.driver = nil
}

// claim creates an allocated ResourceClaim for devices (request "gpu").
func (r *rig) claim(name string, devices ...string) *resourceapi.ResourceClaim {
	r.t.Helper()
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-" + name)}}
	c.Status.Allocation = &resourceapi.AllocationResult{}
	for _, d := range devices {
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results,
			resourceapi.DeviceRequestAllocationResult{Request: "gpu", Driver: DriverName, Pool: testNode, Device: d})
	}
	if _, err := r.client.ResourceV1().ResourceClaims("default").Create(context.Background(), c, metav1.CreateOptions{}); err != nil {
		r.t.Fatal(err)
	}
	return c
}

func pbClaim(c *resourceapi.ResourceClaim) *drapb.Claim {
	return &drapb.Claim{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}
}

// prepare calls NodePrepareResources as the kubelet does and returns the
// claim's CDI IDs, or its error.
func (r *rig) prepare(c *resourceapi.ResourceClaim) ([]string, string) {
	r.t.Helper()
	resp, err := r.kubelet.NodePrepareResources(context.Background(), &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{pbClaim(c)}})
	if err != nil {
		r.t.Fatalf("NodePrepareResources: %v", err)
	}
	res := resp.Claims[string(c.UID)]
	if res == nil {
		r.t.Fatalf("no result for claim %s", c.UID)
	}
	var ids []string
	for _, d := range res.Devices {
		ids = append(ids, d.CdiDeviceIds...)
	}
	return ids, res.Error
}

func (r *rig) unprepare(c *resourceapi.ResourceClaim) string {
	r.t.Helper()
	resp, err := r.kubelet.NodeUnprepareResources(context.Background(), &drapb.NodeUnprepareResourcesRequest{Claims: []*drapb.Claim{pbClaim(c)}})
	if err != nil {
		r.t.Fatalf("NodeUnprepareResources: %v", err)
	}
	return resp.Claims[string(c.UID)].GetError()
}

func (r *rig) specPath(c *resourceapi.ResourceClaim) string {
	return filepath.Join(r.cdiDir, cdispec.ClaimSpecFile(cdispec.ClaimKind, string(c.UID)))
}

// sliceDevices waits until the published slices hold exactly want.
func sliceDevices(t testing.TB, client kubernetes.Interface, want []string) {
	t.Helper()
	waittest.UntilSays(t, 10*time.Second, fmt.Sprintf("published devices %v", want), func() (bool, string) {
		got := publishedNames(t, client)
		return slices.Equal(got, want), fmt.Sprint(got)
	})
}

func publishedNames(t testing.TB, client kubernetes.Interface) []string {
	list, err := client.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list.Items {
		if s.Spec.Driver != DriverName || s.Spec.NodeName == nil || *s.Spec.NodeName != testNode || s.Spec.Pool.Name != testNode {
			t.Fatalf("slice %s: driver %s node %v pool %s", s.Name, s.Spec.Driver, s.Spec.NodeName, s.Spec.Pool.Name)
		}
		for _, d := range s.Spec.Devices {
			names = append(names, d.Name)
		}
	}
	slices.Sort(names)
	return names
}

func gpuNames(n int) []string {
	var out []string
	for i := range n {
		out = append(out, GPUName(inventory.GPU{Minor: i}))
	}
	slices.Sort(out)
	return out
}

func TestPrepareUnprepareGRPC(t *testing.T) {
	r := newRig(t, "dgx-h100")
	sliceDevices(t, r.client, gpuNames(8))

	one := r.claim("one", "gpu-3")
	two := r.claim("two", "gpu-0", "gpu-1")
	tests := []struct {
		name    string
		claim   *resourceapi.ResourceClaim
		wantIDs []string
		wantErr bool
	}{
		{"one GPU", one, []string{"k8s.gpu.nvidia.com/claim=uid-one-gpu-3"}, false},
		{"two GPUs", two, []string{"k8s.gpu.nvidia.com/claim=uid-two-gpu-0", "k8s.gpu.nvidia.com/claim=uid-two-gpu-1"}, false},
		{"prepared again: same answer", one, []string{"k8s.gpu.nvidia.com/claim=uid-one-gpu-3"}, false},
		{"a device another claim holds", r.claim("thief", "gpu-3"), nil, true},
		{"a device not on the node", r.claim("ghost", "gpu-9"), nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ids, errMsg := r.prepare(tc.claim)
			if (errMsg != "") != tc.wantErr {
				t.Fatalf("error %q, want error: %v", errMsg, tc.wantErr)
			}
			if !slices.Equal(ids, tc.wantIDs) {
				t.Fatalf("CDI IDs %v, want %v", ids, tc.wantIDs)
			}
			if tc.wantErr {
				if _, err := os.Stat(r.specPath(tc.claim)); err == nil {
					t.Error("a refused claim got a spec")
				}
				return
			}
			// The IDs resolve through the CDI library to the GPUs' nodes.
			names, errs := cdispec.Resolve(r.cdiDir)
			if len(errs) != 0 {
				t.Fatalf("specs do not load: %v", errs)
			}
			for _, id := range ids {
				if !slices.Contains(names, id) {
					t.Errorf("%s does not resolve (have %v)", id, names)
				}
			}
		})
	}

	if msg := r.unprepare(one); msg != "" {
		t.Fatal(msg)
	}
	if _, err := os.Stat(r.specPath(one)); !os.IsNotExist(err) {
		t.Errorf("spec of an unprepared claim still there: %v", err)
	}
	if msg := r.unprepare(one); msg != "" {
		t.Errorf("second unprepare: %s", msg)
	}
	// gpu-3 is free again.
	if ids, msg := r.prepare(r.claim("next", "gpu-3")); msg != "" || len(ids) != 1 {
		t.Errorf("gpu-3 after unprepare: %v %q", ids, msg)
	}
}

func TestPrepareMIG(t *testing.T) {
	r := newRig(t, migProfile)
	c := r.claim("mig", "gpu-1-mig-1g5gb-19-1")
	ids, msg := r.prepare(c)
	if msg != "" || len(ids) != 1 {
		t.Fatalf("%v %q", ids, msg)
	}
	spec, err := os.ReadFile(r.specPath(c))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"/dev/nvidia1"`, `"/dev/nvidia-caps/nvidia-cap`, `"name":"uid-mig-gpu-1-mig-1g5gb-19-1"`} {
		if !strings.Contains(string(spec), want) {
			t.Errorf("spec lacks %s:\n%s", want, spec)
		}
	}
}

func TestCheckpointRestart(t *testing.T) {
	r := newRig(t, "dgx-h100")
	c := r.claim("kept", "gpu-2")
	ids, msg := r.prepare(c)
	if msg != "" {
		t.Fatal(msg)
	}
	before, err := os.Stat(r.specPath(c))
	if err != nil {
		t.Fatal(err)
	}

	r.stop()
	r.start()
	again, msg := r.prepare(c)
	if msg != "" || !slices.Equal(again, ids) {
		t.Fatalf("after restart: %v %q, want %v", again, msg, ids)
	}
	after, err := os.Stat(r.specPath(c))
	if err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("spec rewritten after restart (%v → %v, %v)", before.ModTime(), after.ModTime(), err)
	}
	// The restarted driver knows gpu-2 is taken.
	if _, msg := r.prepare(r.claim("other", "gpu-2")); msg == "" {
		t.Error("gpu-2 handed out twice across a restart")
	}
	// Unprepare after a restart, with the claim gone from the API.
	r.client.ResourceV1().ResourceClaims("default").Delete(context.Background(), c.Name, metav1.DeleteOptions{})
	r.stop()
	r.start()
	if msg := r.unprepare(c); msg != "" {
		t.Fatal(msg)
	}
	if _, err := os.Stat(r.specPath(c)); !os.IsNotExist(err) {
		t.Errorf("spec still there after unprepare across a restart: %v", err)
	}
}

func TestCheckpointCorrupt(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, CheckpointFile)
	for name, data := range map[string]string{"garbage": "{not json", "other version": `{"version": 9, "claims": {}}`} {
		os.WriteFile(path, []byte(data), 0o600)
		if _, err := loadCheckpoint(path); err == nil || !strings.Contains(err.Error(), "move the file away") {
			t.Errorf("%s: %v, want an error that says what to do", name, err)
		}
	}
}

// publishedTaints waits until the published device name has taints that
// match want (key=value:effect, sorted), and returns them.
func publishedTaints(t testing.TB, client kubernetes.Interface, name string, want []string) {
	t.Helper()
	waittest.UntilSays(t, 10*time.Second, fmt.Sprintf("device %s with taints %v", name, want), func() (bool, string) {
		list, err := client.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var got []string
		for _, sl := range list.Items {
			for _, d := range sl.Spec.Devices {
				if d.Name == name {
					for _, tn := range d.Taints {
						got = append(got, tn.Key+"="+tn.Value+":"+string(tn.Effect))
					}
				}
			}
		}
		slices.Sort(got)
		return slices.Equal(got, want), fmt.Sprint(got)
	})
}

// A fault taints the device in the slice (NVIDIA's keys): a claim that
// does not tolerate it is refused, one that does gets it; recovery removes
// the taint.
func TestHealthTaintsAndRestores(t *testing.T) {
	r := newRig(t, "dgx-h100")
	all := gpuNames(8)
	sliceDevices(t, r.client, all)
	bad := r.node.GPUs[5].UUID

	r.store.SetHealth(bad, inventory.Health{Reason: "XID 48 (double-bit ECC)", XID: 48, Since: time.Now()})
	publishedTaints(t, r.client, "gpu-5", []string{"gpu.nvidia.com/xid=48:NoSchedule"})
	sliceDevices(t, r.client, all) // still published
	if _, msg := r.prepare(r.claim("late", "gpu-5")); !strings.Contains(msg, "gpu.nvidia.com/xid=48:NoSchedule") {
		t.Errorf("a claim not tolerating the taint: %q, want a refusal naming the taint", msg)
	}
	tol := r.claim("diag", "gpu-5")
	tol.Status.Allocation.Devices.Results[0].Tolerations = []resourceapi.DeviceToleration{
		{Key: TaintKeyXID, Operator: resourceapi.DeviceTolerationOpExists, Effect: resourceapi.DeviceTaintEffectNoSchedule}}
	if _, err := r.client.ResourceV1().ResourceClaims("default").UpdateStatus(context.Background(), tol, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if ids, msg := r.prepare(tol); msg != "" || len(ids) != 1 {
		t.Errorf("a claim tolerating the taint: %v %q", ids, msg)
	}

	r.store.SetHealth(bad, inventory.Health{Healthy: true})
	publishedTaints(t, r.client, "gpu-5", nil)
	r.store.SetHealth(r.node.GPUs[2].UUID, inventory.Health{Reason: "XID 79", XID: 79})
	publishedTaints(t, r.client, "gpu-2", []string{"gpu.nvidia.com/gpu-lost=:NoSchedule"})
}

func TestHealthStream(t *testing.T) {
	r := newRig(t, "dgx-h100")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reports := make(chan kubeletplugin.DeviceHealthReport, 1)
	go func() { _ = r.driver.WatchHealthStatus(ctx, reports) }()
	first := <-reports
	if len(first.Devices) != 8 || first.Devices[0].Health != "Healthy" {
		t.Fatalf("first report %+v", first)
	}
	r.store.SetHealth(r.node.GPUs[1].UUID, inventory.Health{Reason: "XID 79"})
	deadline := time.After(5 * time.Second)
	for {
		select {
		case rep := <-reports:
			for _, d := range rep.Devices {
				if d.DeviceName == "gpu-1" && d.Health == "Unhealthy" && d.Message == "XID 79" && d.PoolName == testNode {
					return
				}
			}
		case <-deadline:
			t.Fatal("no report of gpu-1 unhealthy")
		}
	}
}
