// Package publish owns putting gpulet's labels on its Kubernetes Node:
// directly (for clusters without Node Feature Discovery), or as NFD's
// NodeFeature object for nfd-master to apply (nodefeature.go, GFD's
// useNodeFeatureAPI). On the Node, gpulet records the keys it owns in an
// annotation, so it changes and removes only those. Either way it writes
// only when the target differs from what it should carry: an idle node sees
// no writes, and a restart with the same GPUs none either. Labels are never
// removed on shutdown; Remove and RemoveNodeFeature are the explicit
// uninstall.
package publish

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/labels"
)

// OwnedAnnotation lists, comma-separated, the label keys gpulet last wrote.
const OwnedAnnotation = "gpulet.io/labels"

func owned(annotations map[string]string) []string {
	v := annotations[OwnedAnnotation]
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// inSync reports whether the node already carries want and none of the keys
// gpulet owned before and no longer wants. The timestamp alone is no reason
// to write: it dates the last change, not the last look.
func inSync(labelsNow, annotations map[string]string, want labels.Labels) bool {
	if annotations[OwnedAnnotation] != strings.Join(want.Keys(), ",") {
		return false
	}
	for k, v := range want {
		got, ok := labelsNow[k]
		if !ok || (got != v && k != labels.TimestampKey) {
			return false
		}
	}
	for _, k := range owned(annotations) {
		if _, wanted := want[k]; !wanted {
			if _, ok := labelsNow[k]; ok {
				return false
			}
		}
	}
	return true
}

// mergePatch sets the wanted labels, deletes owned ones no longer wanted and
// records the new owned set; other labels are not in the patch, so they are
// untouched whoever wrote them.
func mergePatch(prevOwned []string, want labels.Labels) ([]byte, error) {
	lbls := map[string]any{}
	for _, k := range prevOwned {
		lbls[k] = nil
	}
	for k, v := range want {
		lbls[k] = v
	}
	ann := map[string]any{OwnedAnnotation: strings.Join(want.Keys(), ",")}
	if len(want) == 0 {
		ann[OwnedAnnotation] = nil
	}
	return json.Marshal(map[string]any{"metadata": map[string]any{"labels": lbls, "annotations": ann}})
}

// Sync makes node carry want, and reports whether it had to write.
func Sync(ctx context.Context, c kubernetes.Interface, node string, want labels.Labels) (bool, error) {
	n, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("read node %s: %w", node, err)
	}
	if inSync(n.Labels, n.Annotations, want) {
		return false, nil
	}
	patch, err := mergePatch(owned(n.Annotations), want)
	if err != nil {
		return false, err
	}
	if _, err := c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "gpulet"}); err != nil {
		return false, fmt.Errorf("label node %s (gpulet's service account needs get and patch on nodes: see deploy/gpulet-daemonset.yaml): %w", node, err)
	}
	return true, nil
}

// Remove deletes the labels gpulet owns from node, and its record of them.
// It returns the keys removed.
func Remove(ctx context.Context, c kubernetes.Interface, node string) ([]string, error) {
	n, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read node %s: %w", node, err)
	}
	keys := owned(n.Annotations)
	if _, ok := n.Annotations[OwnedAnnotation]; !ok {
		return nil, nil
	}
	patch, err := mergePatch(keys, nil)
	if err != nil {
		return nil, err
	}
	if _, err := c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "gpulet"}); err != nil {
		return nil, fmt.Errorf("remove gpulet's labels from node %s: %w", node, err)
	}
	return keys, nil
}

// RemoveAll removes gpulet's labels from every node that carries its record
// of them (uninstall: the Helm chart's pre-delete hook runs it). It returns
// what it removed, by node.
func RemoveAll(ctx context.Context, c kubernetes.Interface) (map[string][]string, error) {
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes (the uninstall needs list on nodes): %w", err)
	}
	out := map[string][]string{}
	for _, n := range nodes.Items {
		if _, ok := n.Annotations[OwnedAnnotation]; !ok {
			continue
		}
		keys, err := Remove(ctx, c, n.Name)
		if err != nil {
			return out, err
		}
		out[n.Name] = keys
	}
	return out, nil
}

// Target is where the labels go: the Node itself (NodeTarget) or NFD's
// NodeFeature object (NodeFeatureTarget).
type Target interface {
	// Sync makes the target carry want, and reports whether it had to write.
	Sync(ctx context.Context, want labels.Labels) (bool, error)
	String() string
}

// NodeTarget labels the Node directly (Sync).
type NodeTarget struct {
	Client kubernetes.Interface
	Node   string
}

func (t NodeTarget) Sync(ctx context.Context, want labels.Labels) (bool, error) {
	return Sync(ctx, t.Client, t.Node, want)
}

func (t NodeTarget) String() string { return "node " + t.Node }

// Publisher keeps a node's labels in step with the inventory store.
type Publisher struct {
	// Target is where the labels go; nil means the Node Node with Client.
	Target Target
	Client kubernetes.Interface
	Node   string
	Store  *inventory.Store
	// Compute gives the labels of a snapshot (labels.Compute with the config).
	Compute func(inventory.Snapshot) (labels.Labels, error)
	// Debounce is how long changes must settle before labels are written
	// (default 1s); a stream of changes still writes within 3×Debounce.
	Debounce time.Duration
	// RetryMax caps the back-off after a failed write (default 30s).
	RetryMax time.Duration
	Log      *slog.Logger
	kick     chan struct{}
	last     labels.Labels
}

// Kick asks for the labels to be recomputed (the config changed). It never
// blocks; Run must have been called or will be.
func (p *Publisher) Kick() {
	select {
	case p.kicks() <- struct{}{}:
	default:
	}
}

func (p *Publisher) kicks() chan struct{} {
	if p.kick == nil {
		p.kick = make(chan struct{}, 1)
	}
	return p.kick
}

// Run labels the node now and after every change, until ctx ends. It only
// returns ctx's end: API errors are logged and retried with back-off.
func (p *Publisher) Run(ctx context.Context) error {
	if p.Log == nil {
		p.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	debounce, retryMax := p.Debounce, p.RetryMax
	if debounce <= 0 {
		debounce = time.Second
	}
	if retryMax <= 0 {
		retryMax = 30 * time.Second
	}
	changes, unsubscribe := p.Store.Subscribe()
	defer unsubscribe()
	kick := p.kicks()

	timer := time.NewTimer(0) // label at start
	defer timer.Stop()
	var firstPending time.Time // when the oldest unwritten change came
	retries := func() wait.Backoff {
		return wait.Backoff{Duration: debounce, Factor: 2, Cap: retryMax, Steps: math.MaxInt32}
	}
	backoff := retries()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changes:
		case <-kick:
		case <-timer.C:
			firstPending = time.Time{}
			if err := p.syncOnce(ctx); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				in := backoff.Step()
				p.Log.Error("node labels not updated; retrying", "target", p.target().String(), "err", err, "in", in)
				timer.Reset(in)
				continue
			}
			backoff = retries()
			continue
		}
		// A change: wait for quiet, but not past 3×debounce from the first.
		now := time.Now()
		if firstPending.IsZero() {
			firstPending = now
		}
		wait := min(debounce, firstPending.Add(3*debounce).Sub(now))
		timer.Stop()
		timer.Reset(max(wait, 0))
	}
}

func (p *Publisher) syncOnce(ctx context.Context) error {
	want, err := p.Compute(p.Store.Snapshot())
	if err != nil {
		return fmt.Errorf("compute labels: %w", err)
	}
	if p.last != nil && sameBut(p.last, want, labels.TimestampKey) {
		return nil // nothing gpulet labels on changed (e.g. health): no API call
	}
	wrote, err := p.target().Sync(ctx, want)
	if err != nil {
		return err
	}
	p.last = want
	if wrote {
		p.Log.Info("node labels updated", "target", p.target().String(), "labels", len(want))
	}
	return nil
}

func (p *Publisher) target() Target {
	if p.Target == nil {
		return NodeTarget{Client: p.Client, Node: p.Node}
	}
	return p.Target
}

func sameBut(a, b labels.Labels, skip string) bool {
	del := func(l labels.Labels) map[string]string {
		c := maps.Clone(map[string]string(l))
		delete(c, skip)
		return c
	}
	return maps.Equal(del(a), del(b)) && slices.Equal(a.Keys(), b.Keys())
}
