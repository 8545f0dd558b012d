{{- /*
gpulet.requireAdmissionPolicies: fail rendering where the cluster cannot
enforce the ValidatingAdmissionPolicies that narrow gpulet's grants to its
own node (admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy,
Kubernetes 1.30 or later). Against a cluster helm knows each served kind
("apps/v1/DaemonSet"); `helm template` without one knows only group
versions, and then admissionregistration.k8s.io/v1 must be among them.
*/ -}}
{{- define "gpulet.requireAdmissionPolicies" -}}
{{- $api := .Capabilities.APIVersions -}}
{{- $kindsKnown := $api.Has "apps/v1/DaemonSet" -}}
{{- if not (or ($api.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy") (and (not $kindsKnown) ($api.Has "admissionregistration.k8s.io/v1"))) -}}
{{- fail (printf "gpulet needs admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy (Kubernetes 1.30 or later; this cluster is %s): without it nothing keeps each gpulet to its own node's labels and ResourceSlices" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- end -}}

{{- /* gpulet.extraLabels: nodeLabels.extra as GPULET_EXTRA_LABELS (k=v,k=v). */ -}}
{{- define "gpulet.extraLabels" -}}
{{- $pairs := list -}}
{{- range $k, $v := .Values.nodeLabels.extra -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
