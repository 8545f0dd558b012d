package deploy

import (
	"os"
	"reflect"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestValidateJob checks the Job that runs `gpulet validate` in gpulet's
// image, as the seed guide's MNIST Job runs its sample.
func TestValidateJob(t *testing.T) {
	data, err := os.ReadFile("validate-job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var job batchv1.Job
	if err := yaml.UnmarshalStrict(data, &job); err != nil {
		t.Fatal(err)
	}
	spec := job.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	gpus := c.Resources.Limits["nvidia.com/gpu"]
	for _, tt := range []struct {
		what      string
		got, want any
	}{
		{"kind", job.Kind, "Job"},
		{"namespace", job.Namespace, "default"},
		{"image", c.Image, "ghcr.io/gpulet/gpulet:latest"},
		// The image's entrypoint is gpulet; args pick the command.
		{"args", c.Args, []string{"validate"}},
		{"command", c.Command, []string(nil)},
		{"nvidia.com/gpu limit", gpus.String(), "1"},
		{"restartPolicy", spec.RestartPolicy, corev1.RestartPolicyOnFailure},
		{"selector labels", job.Spec.Template.Labels["app"], job.Labels["app"]},
	} {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s = %#v, want %#v", tt.what, tt.got, tt.want)
		}
	}
}
