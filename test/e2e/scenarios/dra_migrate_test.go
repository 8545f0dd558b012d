package scenarios

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// migrateRecipe is the shell block of docs/dra.md between its dra-migrate
// markers: the recipe the scenario runs as users would.
func (s *S) migrateRecipe() string {
	s.Helper()
	b, err := os.ReadFile(filepath.Join(filepath.Dir(s.DeployDir), "docs", "dra.md"))
	if err != nil {
		s.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- e2e dra-migrate: begin -->")
	block, _, ok2 := strings.Cut(rest, "<!-- e2e dra-migrate: end -->")
	if !ok || !ok2 {
		s.Fatal("docs/dra.md has no dra-migrate recipe between its markers")
	}
	var lines []string
	for l := range strings.SplitSeq(block, "\n") {
		if !strings.HasPrefix(l, "```") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// runRecipe runs script with sh -e in the repository's root, kubectl (the
// cluster's) in PATH and NODE set.
func (s *S) runRecipe(script, node string) {
	s.Helper()
	ctx, cancel := cmdCtx()
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-ec", script)
	cmd.Dir = filepath.Dir(s.DeployDir)
	cmd.Env = append(os.Environ(), "PATH="+s.W+":"+os.Getenv("PATH"), "NODE="+node, "KUBECONFIG="+s.W+"/pki/kubeconfig")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		s.Fatalf("the dra-migrate recipe of docs/dra.md failed: %v\n%s", err, out.String())
	}
	s.Logf("recipe output:\n%s", out.String())
}

// nodeGPUsAre is a condition: node's nvidia.com/gpu capacity/allocatable is want.
func (s *S) nodeGPUsAre(node, want string) func() error {
	return func() error {
		got, err := s.NodeGPUs(node)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("%s: nvidia.com/gpu capacity/allocatable is %q, want %q", node, got, want)
		}
		return nil
	}
}

// noPluginGPUs is a condition: node's Allocatable nvidia.com/gpu is 0 or
// absent (where the scheduler serves that name through DRA).
func (s *S) noPluginGPUs(node string) func() error {
	return func() error {
		got, err := s.NodeGPUs(node)
		if err != nil {
			return err
		}
		if _, alloc, _ := strings.Cut(got, "/"); alloc != "" && alloc != "0" {
			return fmt.Errorf("%s: nvidia.com/gpu capacity/allocatable is %q, want allocatable 0", node, got)
		}
		return nil
	}
}

// nodeSliceCount is a condition: gpulet publishes n devices for node.
func (s *S) nodeSliceCount(node string, n int) func() error {
	return func() error {
		list, err := s.Client.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		got := 0
		for _, sl := range list.Items {
			if sl.Spec.Driver == DRADriver && sl.Spec.NodeName != nil && *sl.Spec.NodeName == node {
				got += len(sl.Spec.Devices)
			}
		}
		if got != n {
			return fmt.Errorf("%d devices published for %s, want %d", got, node, n)
		}
		return nil
	}
}

// scenarioDRAMigrate: the migration recipe of docs/dra.md, run as written.
// The CPU-only node gets the GPU node's simulated GPUs for this scenario
// (`gpulet sim devices`, `sim driver up` in its own simulator root) and
// serves them through the device plugin like the GPU node; then the recipe
// moves it to DRA (a second DaemonSet, gpulet-dra, on the labelled node):
// its Allocatable nvidia.com/gpu drops to 0 and its ResourceSlice holds
// its GPUs, while the GPU node keeps 8 through the device plugin. The same
// Deployment asking `nvidia.com/gpu: 1` (manifests/gpu-deployment.yaml, a
// replica per node) runs on both: on the GPU node from the device plugin
// (no claim), on the moved node through DRA (a claim the scheduler made,
// one device, the pod sees exactly its /dev/nvidiaN). Undone after:
// gpulet-dra deleted, the node's driver down again, its labels removed,
// the DaemonSet as deployed.
func scenarioDRAMigrate(s *S) {
	s.Cleanup(s.DRARestore)
	s.Cleanup(s.migrateUndo)
	// gpulet on that node, which cannot mknod, left plain files as the
	// device nodes in its simulator root: `sim devices` keeps what exists.
	s.OnNode2("rm", "-rf", s.SimRoot+"/dev")
	s.OnNode2(s.Gpulet, "sim", "devices", "--sim-root="+s.SimRoot, "--sim-profile="+s.SimProfile)
	s.OnNode2(s.Gpulet, "sim", "driver", "up", "--sim-root="+s.SimRoot)
	all := fmt.Sprintf("%d/%d", s.SimGPUs, s.SimGPUs)
	s.Eventually(120*time.Second, s.Node2+" serves its GPUs through the device plugin", s.nodeGPUsAre(s.Node2, all))

	t0 := time.Now()
	s.runRecipe(s.migrateRecipe(), s.Node2)
	s.Eventually(120*time.Second, s.Node2+"'s GPUs in a ResourceSlice", s.nodeSliceCount(s.Node2, s.SimGPUs))
	s.Eventually(60*time.Second, s.Node2+"'s device plugin gone", s.noPluginGPUs(s.Node2))
	s.Timing("DRA migration recipe: label -> the node's GPUs in its ResourceSlice, device plugin gone", time.Since(t0))
	// The recipe's affinity patch restarted gpulet on the GPU node too (a new pod template).
	s.Eventually(60*time.Second, "the GPU node, not moved, serves 8 through the device plugin", s.nodeGPUsAre(s.Node, all))
	s.Eventually(90*time.Second, "the GPU node, not moved, publishes no DRA device", s.nodeSliceCount(s.Node, 0))

	dep := Manifest[*appsv1.Deployment](s, "gpu-deployment.yaml")
	dep.Namespace = "default"
	if _, err := s.Client.AppsV1().Deployments("default").Create(context.Background(), dep, metav1.CreateOptions{}); err != nil {
		s.Fatal(err)
	}
	s.Cleanup(func() { s.deleteDeployment("default", dep.Name) })
	var pods []corev1.Pod
	s.Eventually(120*time.Second, "gpu-app's 2 replicas running, one per node", func() error {
		list, err := s.Client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=gpu-app"})
		if err != nil {
			return err
		}
		pods = list.Items
		nodes := map[string]bool{}
		for i := range pods {
			p := &pods[i]
			if p.Status.Phase != corev1.PodRunning {
				return fmt.Errorf("pod %s is %s (%s)", p.Name, p.Status.Phase, podWhy(p))
			}
			if l, err := s.containerLog(p, "main"); err != nil || !strings.Contains(l, "\nready\n") {
				return fmt.Errorf("pod %s has not printed ready yet", p.Name)
			}
			nodes[p.Spec.NodeName] = true
		}
		if len(pods) != 2 || !nodes[s.Node] || !nodes[s.Node2] {
			return fmt.Errorf("%d pods on %v, want one on each node", len(pods), nodes)
		}
		return nil
	})
	for i := range pods {
		p := &pods[i]
		v := s.containerSaw(p, "main")
		st := p.Status.ExtendedResourceClaimStatus
		switch p.Spec.NodeName {
		case s.Node:
			if st != nil {
				s.Fatalf("pod %s on %s was served through DRA (claim %s); the device plugin serves that node", p.Name, s.Node, st.ResourceClaimName)
			}
			g := s.PodGPUs(p, 1)
			s.Logf("%s on %s: device plugin, %v, /dev/nvidia%v", p.Name, s.Node, g, v.minors)
		case s.Node2:
			if st == nil {
				s.Fatalf("pod %s on %s has no extendedResourceClaimStatus: not served through DRA", p.Name, s.Node2)
			}
			c, err := s.Client.ResourceV1().ResourceClaims(p.Namespace).Get(context.Background(), st.ResourceClaimName, metav1.GetOptions{})
			if err != nil {
				s.Fatal(err)
			}
			devs := AllocatedDevices(c, "")
			if len(devs) != 1 {
				s.Fatalf("pod %s's claim %s holds %v, want one device", p.Name, c.Name, devs)
			}
			m, err := DeviceMinor(devs[0])
			if err != nil {
				s.Fatal(err)
			}
			if len(v.minors) != 1 || v.minors[0] != fmt.Sprint(m) {
				s.Fatalf("pod %s sees /dev/nvidia%v, its claim %s holds %s", p.Name, v.minors, c.Name, devs[0])
			}
			s.Logf("%s on %s: DRA, claim %s with %s, /dev/nvidia%v", p.Name, s.Node2, c.Name, devs[0], v.minors)
		}
	}
}

// deleteDeployment deletes a Deployment and waits (bounded) until its pods are gone.
func (s *S) deleteDeployment(ns, name string) {
	fg := metav1.DeletePropagationForeground
	err := s.Client.AppsV1().Deployments(ns).Delete(context.Background(), name, metav1.DeleteOptions{PropagationPolicy: &fg})
	if err != nil && !apierrors.IsNotFound(err) {
		s.Errorf("delete deployment %s: %v", name, err)
		return
	}
	if err := s.Within(120*time.Second, func() error {
		list, err := s.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return err
		}
		if len(list.Items) > 0 {
			return fmt.Errorf("%d pods of %s left", len(list.Items), name)
		}
		return nil
	}); err != nil {
		s.Errorf("deployment %s: %v", name, err)
	}
}

// migrateUndo removes what the recipe added (gpulet-dra and its pods and
// ResourceSlices, the node's label) and the moved node's GPUs (its simulated driver down, the
// labels its gpulet wrote); DRARestore then puts gpulet's DaemonSet back.
func (s *S) migrateUndo() {
	ctx := context.Background()
	fg := metav1.DeletePropagationForeground
	err := s.Client.AppsV1().DaemonSets(s.Namespace).Delete(ctx, "gpulet-dra", metav1.DeleteOptions{PropagationPolicy: &fg})
	if err != nil && !apierrors.IsNotFound(err) {
		s.Errorf("delete gpulet-dra: %v", err)
	}
	if err := s.Within(120*time.Second, func() error {
		list, err := s.Client.CoreV1().Pods(s.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "name=gpulet-dra"})
		if err != nil {
			return err
		}
		if len(list.Items) > 0 {
			return fmt.Errorf("%d gpulet-dra pods left", len(list.Items))
		}
		return nil
	}); err != nil {
		s.Errorf("gpulet-dra: %v", err)
	}
	// Its ResourceSlices: the kubelet drops a gone plugin's slices only after a delay.
	list, err := s.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		s.Errorf("list ResourceSlices: %v", err)
	} else {
		for _, sl := range list.Items {
			if sl.Spec.Driver == DRADriver && sl.Spec.NodeName != nil && *sl.Spec.NodeName == s.Node2 {
				if err := s.Client.ResourceV1().ResourceSlices().Delete(ctx, sl.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
					s.Errorf("delete ResourceSlice %s: %v", sl.Name, err)
				}
			}
		}
	}
	s.OnNode2(s.Gpulet, "sim", "driver", "down", "--sim-root="+s.SimRoot)
	if err := s.Within(30*time.Second, func() error { // retried on a conflicting update
		n, err := s.Client.CoreV1().Nodes().Get(ctx, s.Node2, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for k := range n.Labels {
			if k == "gpulet.io/dra" || k == "accelerator" || strings.HasPrefix(k, "nvidia.com/") {
				delete(n.Labels, k)
			}
		}
		delete(n.Annotations, "gpulet.io/labels")
		_, err = s.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return err
	}); err != nil {
		s.Errorf("node %s: remove the scenario's labels: %v", s.Node2, err)
	}
}
