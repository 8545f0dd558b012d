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

{{- /* gpulet.configFile: the config as one file's content (config given as a string), else "". */ -}}
{{- define "gpulet.configFile" -}}
{{- if kindIs "string" .Values.config -}}{{ .Values.config }}{{- end -}}
{{- end -}}

{{- /*
gpulet.nodeConfigMap: the ConfigMap of named configs (NVIDIA's config.name,
or <release>-configs for config.map), else "". NVIDIA's chart refuses both
set, and a map no config can be chosen from without a label; so does this.
*/ -}}
{{- define "gpulet.nodeConfigMap" -}}
{{- if kindIs "map" .Values.config -}}
{{- $c := .Values.config -}}
{{- if and $c.name $c.map -}}
{{- fail "config.name (an existing ConfigMap) and config.map (configs for a ConfigMap the chart makes) are both set: set one" -}}
{{- end -}}
{{- if $c.map -}}
{{- $fb := $c.fallbackStrategies | default list -}}
{{- if not (or $c.default (and (has "named" $fb) (hasKey $c.map "default")) (and (has "single" $fb) (eq (len $c.map) 1)) (has "empty" $fb)) -}}
{{- fail (printf "config.map has %d configs and none is chosen for a Node without the nvidia.com/device-plugin.config label: set config.default, add a config called default (fallback named), or add empty to config.fallbackStrategies (now %v)" (len $c.map) $fb) -}}
{{- end -}}
{{- end -}}
{{- if $c.name -}}{{ $c.name }}{{- else if $c.map -}}{{ .Release.Name }}-configs{{- end -}}
{{- end -}}
{{- end -}}
