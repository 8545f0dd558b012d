package deploy

import (
	"strings"
	"testing"

	"github.com/google/cel-go/cel"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/apiserver/pkg/cel/environment"
)

// Every expression of the three admission policies compiles in Kubernetes'
// own CEL environment (k8s.io/apiserver at the cluster's version, 1.37):
// the functions and syntax they use (optional fields and indexes, split,
// matches) exist there, not only in cel-go's. The e2e's policy scenario
// runs them on a real API server.
func TestPoliciesCompileInKubernetesCEL(t *testing.T) {
	base := environment.MustBaseEnvSet(version.MajorMinor(1, 37))
	es, err := base.Extend(environment.VersionedOptions{IntroducedVersion: version.MajorMinor(1, 0), EnvOptions: []cel.EnvOption{
		cel.Variable("object", cel.DynType), cel.Variable("oldObject", cel.DynType),
		cel.Variable("request", cel.DynType), cel.Variable("variables", cel.MapType(cel.StringType, cel.DynType))}})
	if err != nil {
		t.Fatal(err)
	}
	env, err := es.Env(environment.StoredExpressions)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"gpulet-rbac.yaml", "gpulet-nfd-rbac.yaml", "gpulet-dra-rbac.yaml"} {
		for name, d := range namedDocs(t, f) {
			if !strings.HasPrefix(name, "ValidatingAdmissionPolicy/") {
				continue
			}
			var vap admissionv1.ValidatingAdmissionPolicy
			strict(t, d, &vap)
			var exprs []string
			for _, v := range vap.Spec.Variables {
				exprs = append(exprs, v.Expression)
			}
			for _, v := range vap.Spec.Validations {
				exprs = append(exprs, v.Expression)
			}
			for _, m := range vap.Spec.MatchConditions {
				exprs = append(exprs, m.Expression)
			}
			for _, e := range exprs {
				if _, iss := env.Compile(e); iss.Err() != nil {
					t.Errorf("%s: %q: %v", name, e, iss.Err())
				}
			}
			t.Logf("%s: %d expressions compile in Kubernetes' CEL environment", name, len(exprs))
		}
	}
}
