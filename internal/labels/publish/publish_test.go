package publish

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/labels"
	"github.com/gpulet/gpulet/internal/waittest"
)

const nodeName = "gpu-node-1"

func newClient(lbls, ann map[string]string) *fake.Clientset {
	return fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: lbls, Annotations: ann}})
}

func nodeOf(t *testing.T, c *fake.Clientset) *corev1.Node {
	t.Helper()
	n, err := c.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// patches returns the bodies of the node patches the client received.
func patches(c *fake.Clientset) []map[string]any {
	var out []map[string]any
	for _, a := range c.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			var m map[string]any
			_ = json.Unmarshal(p.GetPatch(), &m)
			out = append(out, m)
		}
	}
	return out
}

func TestSync(t *testing.T) {
	foreign := map[string]string{"kubernetes.io/hostname": nodeName, "team": "ml"}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := maps.Clone(base)
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name       string
		labels     map[string]string
		ann        map[string]string
		want       labels.Labels
		wantWrite  bool
		wantLabels map[string]string
		wantAnn    string
	}{
		{
			name:       "first labelling adds labels and the owned record, foreign untouched",
			labels:     foreign,
			want:       labels.Labels{"nvidia.com/gpu.count": "8", "accelerator": "nvidia"},
			wantWrite:  true,
			wantLabels: with(foreign, "nvidia.com/gpu.count", "8", "accelerator", "nvidia"),
			wantAnn:    "accelerator,nvidia.com/gpu.count",
		},
		{
			name:       "unchanged: no write",
			labels:     with(foreign, "nvidia.com/gpu.count", "8"),
			ann:        map[string]string{OwnedAnnotation: "nvidia.com/gpu.count"},
			want:       labels.Labels{"nvidia.com/gpu.count": "8"},
			wantLabels: with(foreign, "nvidia.com/gpu.count", "8"),
			wantAnn:    "nvidia.com/gpu.count",
		},
		{
			name:       "only the timestamp differs: no write (restart)",
			labels:     with(foreign, "nvidia.com/gpu.count", "8", labels.TimestampKey, "100"),
			ann:        map[string]string{OwnedAnnotation: "nvidia.com/gfd.timestamp,nvidia.com/gpu.count"},
			want:       labels.Labels{"nvidia.com/gpu.count": "8", labels.TimestampKey: "200"},
			wantLabels: with(foreign, "nvidia.com/gpu.count", "8", labels.TimestampKey, "100"),
			wantAnn:    "nvidia.com/gfd.timestamp,nvidia.com/gpu.count",
		},
		{
			name:       "a change rewrites the timestamp and removes labels no longer wanted",
			labels:     with(foreign, "nvidia.com/gpu.count", "8", "nvidia.com/mig.strategy", "single", labels.TimestampKey, "100"),
			ann:        map[string]string{OwnedAnnotation: "nvidia.com/gfd.timestamp,nvidia.com/gpu.count,nvidia.com/mig.strategy"},
			want:       labels.Labels{"nvidia.com/gpu.count": "7", labels.TimestampKey: "200"},
			wantWrite:  true,
			wantLabels: with(foreign, "nvidia.com/gpu.count", "7", labels.TimestampKey, "200"),
			wantAnn:    "nvidia.com/gfd.timestamp,nvidia.com/gpu.count",
		},
		{
			name:       "a label someone removed is put back",
			labels:     foreign,
			ann:        map[string]string{OwnedAnnotation: "nvidia.com/gpu.count"},
			want:       labels.Labels{"nvidia.com/gpu.count": "8"},
			wantWrite:  true,
			wantLabels: with(foreign, "nvidia.com/gpu.count", "8"),
			wantAnn:    "nvidia.com/gpu.count",
		},
		{
			name:       "a foreign label of a key gpulet never owned is overwritten only if gpulet wants it",
			labels:     with(foreign, "nvidia.com/gpu.present", "true"),
			want:       labels.Labels{"nvidia.com/gpu.count": "8"},
			wantWrite:  true,
			wantLabels: with(foreign, "nvidia.com/gpu.present", "true", "nvidia.com/gpu.count", "8"),
			wantAnn:    "nvidia.com/gpu.count",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(tt.labels, tt.ann)
			wrote, err := Sync(context.Background(), c, nodeName, tt.want)
			if err != nil {
				t.Fatal(err)
			}
			if wrote != tt.wantWrite || len(patches(c)) != map[bool]int{false: 0, true: 1}[tt.wantWrite] {
				t.Errorf("wrote = %v with %d patches, want write %v", wrote, len(patches(c)), tt.wantWrite)
			}
			n := nodeOf(t, c)
			if !maps.Equal(n.Labels, tt.wantLabels) {
				t.Errorf("labels = %v\nwant %v", n.Labels, tt.wantLabels)
			}
			if n.Annotations[OwnedAnnotation] != tt.wantAnn {
				t.Errorf("owned = %q, want %q", n.Annotations[OwnedAnnotation], tt.wantAnn)
			}
		})
	}
}

func TestSyncPatchIsExact(t *testing.T) {
	c := newClient(map[string]string{"team": "ml", "nvidia.com/gpu.count": "8", "nvidia.com/old": "x"},
		map[string]string{OwnedAnnotation: "nvidia.com/gpu.count,nvidia.com/old", "other": "y"})
	if _, err := Sync(context.Background(), c, nodeName, labels.Labels{"nvidia.com/gpu.count": "4"}); err != nil {
		t.Fatal(err)
	}
	p := patches(c)
	if len(p) != 1 {
		t.Fatalf("%d patches, want 1", len(p))
	}
	got, _ := json.Marshal(p[0])
	want := `{"metadata":{"annotations":{"gpulet.io/labels":"nvidia.com/gpu.count"},"labels":{"nvidia.com/gpu.count":"4","nvidia.com/old":null}}}`
	if string(got) != want {
		t.Errorf("patch = %s\nwant    %s", got, want)
	}
	if n := nodeOf(t, c); n.Annotations["other"] != "y" || n.Labels["team"] != "ml" {
		t.Errorf("foreign metadata changed: %v %v", n.Labels, n.Annotations)
	}
}

func TestRemove(t *testing.T) {
	c := newClient(map[string]string{"team": "ml", "nvidia.com/gpu.count": "8", "accelerator": "nvidia", "nvidia.com/gpu.present": "true"},
		map[string]string{OwnedAnnotation: "accelerator,nvidia.com/gpu.count", "other": "y"})
	removed, err := Remove(context.Background(), c, nodeName, Removable(map[string]string{"accelerator": "nvidia"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 {
		t.Errorf("removed %v, want accelerator and nvidia.com/gpu.count", removed)
	}
	n := nodeOf(t, c)
	if want := map[string]string{"team": "ml", "nvidia.com/gpu.present": "true"}; !maps.Equal(n.Labels, want) {
		t.Errorf("labels = %v, want %v", n.Labels, want)
	}
	if want := map[string]string{"other": "y"}; !maps.Equal(n.Annotations, want) {
		t.Errorf("annotations = %v, want %v", n.Annotations, want)
	}
	// A second removal finds nothing to do and does not write.
	c.ClearActions()
	if removed, err := Remove(context.Background(), c, nodeName, Removable(nil)); err != nil || len(removed) != 0 || len(patches(c)) != 0 {
		t.Errorf("second removal: removed %v, err %v, %d patches", removed, err, len(patches(c)))
	}
}

// RemoveAll takes gpulet's labels off every node that carries them, and
// touches neither other labels nor nodes gpulet never labelled.
func TestRemoveAll(t *testing.T) {
	node := func(name string, l, a map[string]string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l, Annotations: a}}
	}
	c := fake.NewClientset(
		node("gpu-1", map[string]string{"nvidia.com/gpu.count": "8", "team": "a"}, map[string]string{OwnedAnnotation: "nvidia.com/gpu.count"}),
		node("gpu-2", map[string]string{"nvidia.com/gpu.count": "4", "accelerator": "nvidia"}, map[string]string{OwnedAnnotation: "accelerator,nvidia.com/gpu.count"}),
		node("cpu-1", map[string]string{"nvidia.com/gpu.count": "0", "team": "b"}, nil),
	)
	removed, err := RemoveAll(context.Background(), c, Removable(map[string]string{"accelerator": "nvidia"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 || len(removed["gpu-1"]) != 1 || len(removed["gpu-2"]) != 2 {
		t.Errorf("removed %v, want gpu-1's one key and gpu-2's two", removed)
	}
	for name, want := range map[string]map[string]string{
		"gpu-1": {"team": "a"},
		"gpu-2": {},
		"cpu-1": {"nvidia.com/gpu.count": "0", "team": "b"}, // never gpulet's
	} {
		n, err := c.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(n.Labels) != len(want) || (len(want) > 0 && !maps.Equal(n.Labels, want)) {
			t.Errorf("node %s labels = %v, want %v", name, n.Labels, want)
		}
		if _, ok := n.Annotations[OwnedAnnotation]; ok {
			t.Errorf("node %s still has gpulet's record", name)
		}
	}
}

// The annotation is gpulet's to write, so whatever it lists, the uninstall
// removes only nvidia.com/* and the extra labels.
func TestRemoveAllOnlyGpuletsKeys(t *testing.T) {
	hostile := map[string]string{OwnedAnnotation: "kubernetes.io/hostname,node-restriction.kubernetes.io/pool,team,accelerator,nvidia.com/gpu.count"}
	lbls := map[string]string{"kubernetes.io/hostname": "gpu-1", "node-restriction.kubernetes.io/pool": "a", "team": "ml",
		"accelerator": "nvidia", "nvidia.com/gpu.count": "8"}
	for _, tt := range []struct {
		name  string
		extra map[string]string
		want  map[string]string
	}{
		{"extra accelerator", map[string]string{"accelerator": "nvidia"},
			map[string]string{"kubernetes.io/hostname": "gpu-1", "node-restriction.kubernetes.io/pool": "a", "team": "ml"}},
		{"no extra labels", nil,
			map[string]string{"kubernetes.io/hostname": "gpu-1", "node-restriction.kubernetes.io/pool": "a", "team": "ml", "accelerator": "nvidia"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "gpu-1", Labels: maps.Clone(lbls), Annotations: maps.Clone(hostile)}})
			if _, err := RemoveAll(context.Background(), c, Removable(tt.extra)); err != nil {
				t.Fatal(err)
			}
			n, err := c.CoreV1().Nodes().Get(context.Background(), "gpu-1", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(n.Labels, tt.want) {
				t.Errorf("labels %v, want %v", n.Labels, tt.want)
			}
			if _, ok := n.Annotations[OwnedAnnotation]; ok {
				t.Error("the record is still there")
			}
		})
	}
}

// One node that cannot be patched does not stop the others; the error
// names it.
func TestRemoveAllGoesOnPastAFailure(t *testing.T) {
	var objs []runtime.Object
	for _, n := range []string{"a", "b", "c"} {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{"nvidia.com/gpu.count": "1"},
			Annotations: map[string]string{OwnedAnnotation: "nvidia.com/gpu.count"}}})
	}
	c := fake.NewClientset(objs...)
	c.PrependReactor("patch", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.(k8stesting.PatchAction).GetName() == "b" {
			return true, nil, apierrors.NewForbidden(corev1.Resource("nodes"), "b", errors.New("no"))
		}
		return false, nil, nil
	})
	removed, err := RemoveAll(context.Background(), c, Removable(nil))
	if err == nil || !strings.Contains(err.Error(), "node b") {
		t.Errorf("err %v, want one naming node b", err)
	}
	if len(removed) != 2 || removed["a"] == nil || removed["c"] == nil {
		t.Errorf("removed %v, want a and c", removed)
	}
}

func TestSyncMissingNodeSaysWhat(t *testing.T) {
	c := fake.NewClientset()
	if _, err := Sync(context.Background(), c, "nope", labels.Labels{"a": "b"}); err == nil {
		t.Fatal("Sync on a missing node succeeded")
	}
}

// publisherHarness runs a Publisher over a store whose GPU count is the
// only label.
type publisherHarness struct {
	client *fake.Clientset
	store  *inventory.Store
	mu     sync.Mutex
	extra  string
	cancel context.CancelFunc
	done   chan error
	pub    *Publisher
}

func startPublisher(t *testing.T, c *fake.Clientset) *publisherHarness {
	return startPublisherWith(t, c, func(*Publisher) {})
}

// startPublisherWith is startPublisher with mod applied to the Publisher
// before it runs.
func startPublisherWith(t *testing.T, c *fake.Clientset, mod func(*Publisher)) *publisherHarness {
	h := &publisherHarness{client: c, done: make(chan error, 1)}
	h.store = inventory.NewStore(&inventory.Node{GPUs: []inventory.GPU{{UUID: "GPU-0"}, {UUID: "GPU-1", Minor: 1}}})
	var now int64 = 1000
	h.pub = &Publisher{
		Client: c, Node: nodeName, Store: h.store, Debounce: 20 * time.Millisecond, RetryMax: 40 * time.Millisecond,
		Compute: func(s inventory.Snapshot) (labels.Labels, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			now++ // a fresh timestamp every computation, as labels.Compute gives
			l := labels.Labels{"nvidia.com/gpu.count": itoa(len(s.Node.GPUs)), labels.TimestampKey: itoa(int(now))}
			if h.extra != "" {
				l["accelerator"] = h.extra
			}
			return l, nil
		},
	}
	mod(h.pub)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.pub.Run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

func (h *publisherHarness) stop() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
		h.cancel = nil
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestPublisherWritesOnlyOnChange(t *testing.T) {
	// In a synctest bubble: the quiet periods below pass on the fake clock,
	// after every timer due in them has fired, so "nothing was written" is
	// certain rather than likely.
	synctest.Test(t, func(t *testing.T) {
		c := newClient(map[string]string{"team": "ml"}, nil)
		h := startPublisher(t, c)
		waittest.Until(t, 2*time.Second, "first labelling", func() bool { return len(patches(c)) == 1 })

		// Health changes and idle time: labels do not depend on them, no writes
		// and not even a read of the node.
		c.ClearActions()
		h.store.SetHealth("GPU-0", inventory.Health{Reason: "XID 48"})
		h.store.SetHealth("GPU-0", inventory.Health{Healthy: true})
		time.Sleep(200 * time.Millisecond) // 10 debounce periods
		if n := len(c.Actions()); n != 0 {
			t.Fatalf("%d API calls while idle, want 0: %v", n, c.Actions())
		}

		// A GPU disappears: labels follow within the debounce.
		h.store.SetNode(&inventory.Node{GPUs: []inventory.GPU{{UUID: "GPU-0"}}})
		waittest.Until(t, 2*time.Second, "relabel after change", func() bool { return nodeOf(t, c).Labels["nvidia.com/gpu.count"] == "1" })
		if n := len(patches(c)); n != 1 {
			t.Errorf("%d patches for one change, want 1", n)
		}

		// A config change (Kick) adds a label.
		h.mu.Lock()
		h.extra = "nvidia"
		h.mu.Unlock()
		h.pub.Kick()
		waittest.Until(t, 2*time.Second, "relabel after kick", func() bool { return nodeOf(t, c).Labels["accelerator"] == "nvidia" })

		// Stopping (SIGTERM) leaves the labels in place.
		h.stop()
		n := nodeOf(t, c)
		if n.Labels["nvidia.com/gpu.count"] != "1" || n.Labels["team"] != "ml" || n.Labels["accelerator"] != "nvidia" {
			t.Errorf("labels after stop = %v", n.Labels)
		}
	})
}

func TestPublisherRestartDoesNotWrite(t *testing.T) {
	// In a synctest bubble: the quiet periods below pass on the fake clock,
	// after every timer due in them has fired, so "nothing was written" is
	// certain rather than likely.
	synctest.Test(t, func(t *testing.T) {
		c := newClient(nil, nil)
		h := startPublisher(t, c)
		waittest.Until(t, 2*time.Second, "first labelling", func() bool { return len(patches(c)) == 1 })
		h.stop()
		c.ClearActions()
		h2 := startPublisher(t, c)
		waittest.Until(t, 2*time.Second, "the restarted publisher reads the node", func() bool { return len(c.Actions()) > 0 })
		time.Sleep(100 * time.Millisecond)
		if n := len(patches(c)); n != 0 {
			t.Errorf("%d patches after a restart with the same GPUs, want 0", n)
		}
		h2.stop()
	})
}

func TestPublisherRetriesFailedWrites(t *testing.T) {
	c := newClient(nil, nil)
	var mu sync.Mutex
	failures := 2
	c.PrependReactor("patch", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			return true, nil, context.DeadlineExceeded
		}
		return false, nil, nil
	})
	startPublisher(t, c)
	waittest.Until(t, 2*time.Second, "labels after retries", func() bool { return nodeOf(t, c).Labels["nvidia.com/gpu.count"] == "2" })
	if n := len(patches(c)); n != 3 {
		t.Errorf("%d patch attempts, want 3 (2 failed, 1 succeeded)", n)
	}
}
