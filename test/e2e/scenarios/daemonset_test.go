package scenarios

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

// What the scenarios change on gpulet's DaemonSet, as an operator would:
// the patches of deploy/ (kubectl patch --patch-file), `kubectl set env`,
// and back to the DaemonSet as deployed.

// PatchDaemonSet applies a strategic-merge patch file of deploy/ (e.g.
// "gpulet-cdi-daemonset-patch.yaml") to gpulet's DaemonSet and waits until
// it has rolled out.
func (s *S) PatchDaemonSet(file string) {
	s.Helper()
	b, err := os.ReadFile(s.DeployDir + "/" + file)
	if err != nil {
		s.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		s.Fatalf("%s: %v", file, err)
	}
	if _, err := s.Client.AppsV1().DaemonSets(s.Namespace).Patch(s.ctx, s.DaemonSet, types.StrategicMergePatchType, j, metav1.PatchOptions{}); err != nil {
		s.Fatalf("patch the DaemonSet with %s: %v", file, err)
	}
	s.Eventually(120*time.Second, "DaemonSet rolled out with "+file, s.DaemonSetRolled)
}

// SetGpuletEnv changes the DaemonSet's gpulet container environment as
// `kubectl set env ds/gpulet NAME=VALUE NAME-` does (a rolling update), then
// waits for a new gpulet pod on the GPU node, Ready, and 8/8 GPUs.
func (s *S) SetGpuletEnv(kv ...string) {
	s.Helper()
	old := s.MustGpuletPod().Name
	s.updateDaemonSet(func(ds *appsv1.DaemonSet) {
		for i := range ds.Spec.Template.Spec.Containers {
			c := &ds.Spec.Template.Spec.Containers[i]
			for _, e := range kv {
				c.Env = setEnv(c.Env, e)
			}
		}
	})
	what := strings.Join(kv, " ")
	s.Eventually(120*time.Second, "gpulet rolled out with "+what, s.NewGpuletReady(old))
	s.Eventually(90*time.Second, "Allocatable 8 with "+what, s.GPUs8AndStable)
}

// setEnv applies NAME=VALUE (set) or NAME- (remove) to env.
func setEnv(env []corev1.EnvVar, e string) []corev1.EnvVar {
	if name, ok := strings.CutSuffix(e, "-"); ok && !strings.Contains(e, "=") {
		out := env[:0]
		for _, v := range env {
			if v.Name != name {
				out = append(out, v)
			}
		}
		return out
	}
	name, value, _ := strings.Cut(e, "=")
	for i := range env {
		if env[i].Name == name {
			env[i] = corev1.EnvVar{Name: name, Value: value}
			return env
		}
	}
	return append(env, corev1.EnvVar{Name: name, Value: value})
}

func (s *S) updateDaemonSet(change func(*appsv1.DaemonSet)) {
	s.Helper()
	err := s.Within(30*time.Second, func() error {
		ds, err := s.Client.AppsV1().DaemonSets(s.Namespace).Get(s.ctx, s.DaemonSet, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(ds)
		_, err = s.Client.AppsV1().DaemonSets(s.Namespace).Update(s.ctx, ds, metav1.UpdateOptions{})
		return err // a conflict is retried
	})
	if err != nil {
		s.Fatalf("update the DaemonSet: %v", err)
	}
}

// GPUs8AndStable is a condition: the GPU node's gpulet has not restarted and
// the node shows 8/8.
func (s *S) GPUs8AndStable() error {
	if err := s.GpuletStable(s.Node); err != nil {
		return err
	}
	return s.NodeGPUsAre(fmt.Sprintf("%d/%d", s.SimGPUs, s.SimGPUs))()
}

// DaemonSetRolled is a condition: the DaemonSet controller has seen the
// latest spec, every pod runs it and is available, the GPU node's gpulet pod
// is Ready, and neither gpulet restarted.
func (s *S) DaemonSetRolled() error {
	ds, err := s.Client.AppsV1().DaemonSets(s.Namespace).Get(s.ctx, s.DaemonSet, metav1.GetOptions{})
	if err != nil {
		return err
	}
	st := ds.Status
	if ds.Generation != st.ObservedGeneration || st.DesiredNumberScheduled != DSNodes || st.NumberReady != DSNodes ||
		st.UpdatedNumberScheduled != DSNodes || st.NumberAvailable != DSNodes {
		return fmt.Errorf("DaemonSet generation/observed = %d/%d, desired/ready/updated/available = %d/%d/%d/%d, want %d each",
			ds.Generation, st.ObservedGeneration, st.DesiredNumberScheduled, st.NumberReady, st.UpdatedNumberScheduled, st.NumberAvailable, DSNodes)
	}
	if err := s.GpuletStable(s.Node2); err != nil {
		return err
	}
	p, err := s.GpuletPodOn(s.Node)
	if err != nil {
		return err
	}
	if p == nil || !PodReady(p) {
		return fmt.Errorf("gpulet pod on %s missing or not Ready", s.Node)
	}
	return s.GpuletStable(s.Node)
}

// DeployedDaemonSet is gpulet's DaemonSet as run.sh deployed it
// (deploy/ with the test overlay: logs/gpulet-e2e.yaml).
func (s *S) DeployedDaemonSet() *appsv1.DaemonSet {
	s.Helper()
	return decodeFile[*appsv1.DaemonSet](s, s.Logs+"/gpulet-e2e.yaml")
}

// RestoreDaemonSet puts gpulet's DaemonSet back as deployed (a replace: a
// patch's fields are not in apply's last-applied state) and waits until it
// has rolled out with 8/8. Register it first thing with s.Cleanup in a
// scenario that changes the DaemonSet, so that later scenarios find it as
// deployed whatever happened.
func (s *S) RestoreDaemonSet() {
	s.Helper()
	want := s.DeployedDaemonSet()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		cur, err := s.Client.AppsV1().DaemonSets(s.Namespace).Get(ctx, s.DaemonSet, metav1.GetOptions{})
		if err == nil {
			want.ResourceVersion = cur.ResourceVersion
			_, err = s.Client.AppsV1().DaemonSets(s.Namespace).Update(ctx, want, metav1.UpdateOptions{})
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			s.Fatalf("restore the DaemonSet as deployed: %v", err)
		}
		time.Sleep(Poll)
	}
	s.Eventually(120*time.Second, "DaemonSet back as deployed", s.DaemonSetRolled)
	s.Eventually(120*time.Second, "Allocatable nvidia.com/gpu 8", s.GPUs8AndStable)
}
