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
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
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

// Removable reports whether the uninstall may take key off a node: only
// nvidia.com/* labels and the extra labels (extra's keys), whatever gpulet's
// annotation lists. The annotation is gpulet's to write, so it must not
// make the uninstall (which may patch every node) strip other labels.
func Removable(extra map[string]string) func(key string) bool {
	return func(key string) bool {
		_, ok := extra[key]
		return ok || strings.HasPrefix(key, "nvidia.com/")
	}
}

// removePatch is the patch taking the owned keys removable allows, and the
// record, off a node with these annotations; nil when there is no record.
func removePatch(annotations map[string]string, removable func(string) bool) ([]string, []byte, error) {
	if _, ok := annotations[OwnedAnnotation]; !ok {
		return nil, nil, nil
	}
	keys := slices.DeleteFunc(owned(annotations), func(k string) bool { return !removable(k) })
	patch, err := mergePatch(keys, nil)
	return keys, patch, err
}

// Remove deletes from node the labels gpulet owns that removable allows
// (Removable), and its record of them. It returns the keys removed.
func Remove(ctx context.Context, c kubernetes.Interface, node string, removable func(string) bool) ([]string, error) {
	n, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read node %s: %w", node, err)
	}
	keys, patch, err := removePatch(n.Annotations, removable)
	if patch == nil || err != nil {
		return nil, err
	}
	if _, err := c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "gpulet"}); err != nil {
		return nil, fmt.Errorf("remove gpulet's labels from node %s: %w", node, err)
	}
	return keys, nil
}

const (
	// RemoveAllQPS and RemoveAllBurst are the client rate limits of the
	// uninstall (`gpulet labels --remove --all-nodes`): 5,000 labelled nodes take 50 s,
	// within the chart hook's deadline (templates/uninstall-hook.yaml).
	RemoveAllQPS   = 100
	RemoveAllBurst = 100
	// removeAllWorkers patch at once, so the API server's latency does not
	// add up node after node.
	removeAllWorkers = 16
	// removeAllPage is the List page size: nodes are read in pages, never
	// one Get per node.
	removeAllPage = 500
)

// RemoveAll removes gpulet's labels (those removable allows) from every
// node that carries its record of them (uninstall: the Helm chart's
// pre-delete hook runs it). It lists the nodes in pages and patches the
// labelled ones from what the list says, several at once; a node that fails
// does not stop the others. It returns what it removed, by node, and every
// error.
func RemoveAll(ctx context.Context, c kubernetes.Interface, removable func(string) bool) (map[string][]string, error) {
	type job struct {
		node  string
		keys  []string
		patch []byte
	}
	jobs := make(chan job)
	var (
		mu   sync.Mutex
		out  = map[string][]string{}
		errs []error
		wg   sync.WaitGroup
	)
	for range removeAllWorkers {
		wg.Go(func() {
			for j := range jobs {
				_, err := c.CoreV1().Nodes().Patch(ctx, j.node, types.MergePatchType, j.patch, metav1.PatchOptions{FieldManager: "gpulet"})
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("remove gpulet's labels from node %s: %w", j.node, err))
				} else {
					out[j.node] = j.keys
				}
				mu.Unlock()
			}
		})
	}
	listErr := func() error {
		defer close(jobs)
		opts := metav1.ListOptions{Limit: removeAllPage}
		for {
			nodes, err := c.CoreV1().Nodes().List(ctx, opts)
			if err != nil {
				return fmt.Errorf("list nodes (the uninstall needs list on nodes): %w", err)
			}
			for _, n := range nodes.Items {
				keys, patch, err := removePatch(n.Annotations, removable)
				if err != nil {
					return err
				}
				if patch == nil {
					continue
				}
				select {
				case jobs <- job{n.Name, keys, patch}:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			if opts.Continue = nodes.Continue; opts.Continue == "" {
				return nil
			}
		}
	}()
	wg.Wait()
	if listErr != nil {
		errs = append([]error{listErr}, errs...)
	}
	return out, errors.Join(errs...)
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

// PolicyChecker is a Target that can tell whether the admission policy
// narrowing gpulet's writes to its own node is in force.
type PolicyChecker interface {
	CheckPolicy(ctx context.Context) error
}

// PolicyProbeLabel is a label gpulet never writes and its admission
// policies refuse: a dry-run write of it must be denied.
const PolicyProbeLabel = "gpulet.io/policy-probe"

// policyVerdict reads the answer to a dry-run write the policy must refuse:
// nil when it was refused, an error saying what to do when it was admitted
// (exists: the object existed, so a create was not refused by admission).
func policyVerdict(what, apply string, err error) error {
	switch {
	case apierrors.IsForbidden(err) || apierrors.IsInvalid(err):
		return nil
	case err == nil || apierrors.IsAlreadyExists(err):
		return fmt.Errorf("the admission policy that keeps gpulet to its own node is not in force: a dry-run %s with the label %s was admitted; "+
			"apply %s (Kubernetes 1.30 or later), gpulet writes no labels until then", what, PolicyProbeLabel, apply)
	default:
		return fmt.Errorf("check gpulet's admission policy (dry-run %s): %w", what, err)
	}
}

// CheckPolicy makes a dry-run patch of the Node with a label the policy
// refuses (deploy/gpulet-rbac.yaml's gpulet-node-labels).
func (t NodeTarget) CheckPolicy(ctx context.Context) error {
	patch := []byte(`{"metadata":{"labels":{"` + PolicyProbeLabel + `":"1"}}}`)
	_, err := t.Client.CoreV1().Nodes().Patch(ctx, t.Node, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: "gpulet", DryRun: []string{metav1.DryRunAll}})
	return policyVerdict("patch of node "+t.Node, "the ValidatingAdmissionPolicy and binding of deploy/gpulet-rbac.yaml or the Helm chart", err)
}

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
	// CheckPolicy: before each write, check that the target's admission
	// policy is in force (PolicyChecker), and write nothing when it is not.
	CheckPolicy bool
	Log         *slog.Logger
	kick        chan struct{}
	last        labels.Labels
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
	if pc, ok := p.target().(PolicyChecker); ok && p.CheckPolicy {
		if err := pc.CheckPolicy(ctx); err != nil {
			return err
		}
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
