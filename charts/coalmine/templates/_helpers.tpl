{{/*
Names, labels and the values derived from them.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "coalmine.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every resource: fullnameOverride, else <release>-<chart name> (just the
release name when it already contains the chart name). At most 63 characters.
*/}}
{{- define "coalmine.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "coalmine.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "coalmine.labels" -}}
helm.sh/chart: {{ include "coalmine.chart" . }}
{{ include "coalmine.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: coalmine
{{- end }}

{{/* Labels that select the pods (never change them on upgrade: selectors are immutable). */}}
{{- define "coalmine.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coalmine.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "coalmine.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "coalmine.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* COALMINE_CONFIGMAP_PREFIX: coalmine's ConfigMaps are <prefix>-<release>-state and -routing. */}}
{{- define "coalmine.configMapPrefix" -}}
{{- include "coalmine.fullname" . }}
{{- end }}

{{/* COALMINE_LEASE_NAME: the controller's leader-election Lease. */}}
{{- define "coalmine.leaseName" -}}
{{- printf "%s-controller" (include "coalmine.fullname" .) }}
{{- end }}

{{/* The ConfigMap mounted at /etc/coalmine/policies. */}}
{{- define "coalmine.policiesConfigMap" -}}
{{- if .Values.policies.existingConfigMap }}
{{- .Values.policies.existingConfigMap }}
{{- else }}
{{- printf "%s-policies" (include "coalmine.fullname" .) }}
{{- end }}
{{- end }}

{{/* The Secret holding the admin token. */}}
{{- define "coalmine.adminTokenSecret" -}}
{{- if .Values.adminToken.existingSecret }}
{{- .Values.adminToken.existingSecret }}
{{- else }}
{{- printf "%s-admin-token" (include "coalmine.fullname" .) }}
{{- end }}
{{- end }}

{{/* coalmine's image reference; the tag defaults to the chart's appVersion. */}}
{{- define "coalmine.image" -}}
{{- printf "%s:%s" .Values.coalmine.image.repository (default .Chart.AppVersion .Values.coalmine.image.tag) }}
{{- end }}

{{/*
The release names, as a JSON list (use with fromJsonArray): the `name` of every inline
policy, or policies.releaseNames with an existing ConfigMap. Fails with a message that
says what to fix when a policy has no valid name, when two policies share a name, or
when there is no policy at all.
*/}}
{{- define "coalmine.releaseNames" -}}
{{- $pattern := "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" }}
{{- $names := list }}
{{- if .Values.policies.existingConfigMap }}
{{- if not .Values.policies.releaseNames }}
{{- fail (printf "policies.releaseNames is required with policies.existingConfigMap (%s): list the `name` of every release policy in that ConfigMap, so that the Role can name their state and routing ConfigMaps" .Values.policies.existingConfigMap) }}
{{- end }}
{{- range .Values.policies.releaseNames }}
{{- if has . $names }}
{{- fail (printf "policies.releaseNames: %q is listed twice" .) }}
{{- end }}
{{- $names = append $names . }}
{{- end }}
{{- else }}
{{- range $file, $text := .Values.policies.inline }}
{{- if $text }}
{{- $doc := fromYaml $text }}
{{- if hasKey $doc "Error" }}
{{- fail (printf "policies.inline.%s is not a YAML mapping: %s" $file (get $doc "Error")) }}
{{- end }}
{{- $name := toString (get $doc "name") }}
{{- if not (regexMatch $pattern $name) }}
{{- fail (printf "policies.inline.%s: `name` must be the release id (lower-case letters, digits and '-'), got %q" $file (get $doc "name" | default "")) }}
{{- end }}
{{- if has $name $names }}
{{- fail (printf "policies.inline.%s: release %q is already defined by another file" $file $name) }}
{{- end }}
{{- $names = append $names $name }}
{{- end }}
{{- end }}
{{- if not $names }}
{{- fail "no release policy: set policies.inline (file name -> policy YAML) or policies.existingConfigMap with policies.releaseNames" }}
{{- end }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/* The securityContext of every container. */}}
{{- define "coalmine.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/* LANGFUSE_* environment variables, the keys from the user's Secret. */}}
{{- define "coalmine.langfuseEnv" -}}
- name: LANGFUSE_BASE_URL
  value: {{ .Values.langfuse.baseUrl | quote }}
- name: LANGFUSE_PUBLIC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.langfuse.existingSecret }}
      key: {{ .Values.langfuse.publicKeyKey }}
- name: LANGFUSE_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.langfuse.existingSecret }}
      key: {{ .Values.langfuse.secretKeyKey }}
{{- end }}

{{/*
Labels of the `helm test` resources: not the pods' selector labels, so that neither the
Service nor the PodDisruptionBudget ever counts the test Pod as one of coalmine's.
*/}}
{{- define "coalmine.testLabels" -}}
helm.sh/chart: {{ include "coalmine.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: coalmine
app.kubernetes.io/component: test
{{- end }}

{{/* The Service of the admin port that `helm test` uses in sidecar mode (only while it runs). */}}
{{- define "coalmine.testAdminService" -}}
{{- printf "%s-test-admin" (include "coalmine.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
