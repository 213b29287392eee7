{{/*
The containers of the pod: the application, and coalmine (`coalmine run` beside the app
in sidecar mode, `coalmine controller` alone in controller mode).
*/}}

{{/* Whether the chart deploys the app with coalmine as its sidecar (mode: sidecar). */}}
{{- define "coalmine.sidecarMode" -}}
{{- if eq .Values.mode "sidecar" }}true{{ end }}
{{- end }}

{{/* Whether coalmine runs as a native sidecar (an init container, restartPolicy: Always). */}}
{{- define "coalmine.nativeSidecar" -}}
{{- if and (include "coalmine.sidecarMode" .) .Values.coalmine.nativeSidecar }}true{{ end }}
{{- end }}

{{/*
Fails unless the Kubernetes version given (e.g. .Capabilities.KubeVersion.Version) runs
native sidecars: init containers with restartPolicy: Always are on by default from 1.29.
*/}}
{{- define "coalmine.requireNativeSidecar" -}}
{{- if not (semverCompare ">=1.29.0-0" .) }}
{{- fail (printf "coalmine.nativeSidecar needs Kubernetes 1.29 or newer (an init container with restartPolicy: Always), and the cluster is %s: set coalmine.nativeSidecar=false to run coalmine as a regular container" .) }}
{{- end }}
{{- end }}

{{/* The app container (sidecar mode). */}}
{{- define "coalmine.appContainer" -}}
- name: app
  image: "{{ .Values.app.image.repository }}:{{ required "app.image.tag is required: the tag of your application's image (the chart has no default, so that no pod runs whatever `latest` is that day); or set mode=controller to deploy coalmine's controller without the app" .Values.app.image.tag }}"
  imagePullPolicy: {{ .Values.app.image.pullPolicy }}
  {{- with .Values.app.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.app.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: app
      containerPort: {{ .Values.app.port }}
      protocol: TCP
  {{- if or .Values.app.injectLangfuseEnv .Values.app.env }}
  env:
    {{- if .Values.app.injectLangfuseEnv }}
    {{- include "coalmine.langfuseEnv" . | nindent 4 }}
    {{- end }}
    {{- with .Values.app.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- with .Values.app.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.app.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.app.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.app.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml .Values.app.resources | nindent 4 }}
  securityContext:
    {{- include "coalmine.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: app-tmp
      mountPath: /tmp
    {{- with .Values.app.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
The coalmine container: `coalmine run` (proxy and controller) in sidecar mode, as a
regular container or as a native sidecar; `coalmine controller` in controller mode.
*/}}
{{- define "coalmine.coalmineContainer" -}}
{{- $sidecar := include "coalmine.sidecarMode" . -}}
- name: coalmine
  image: {{ include "coalmine.image" . | quote }}
  imagePullPolicy: {{ .Values.coalmine.image.pullPolicy }}
  {{- if include "coalmine.nativeSidecar" . }}
  # A native sidecar: started, and its startup probe passed, before the app container;
  # stopped after it.
  restartPolicy: Always
  {{- end }}
  command: ["coalmine"]
  {{- if $sidecar }}
  args: ["run", "--policy", "/etc/coalmine/policies"{{ if gt (int .Values.coalmine.proxyWorkers) 1 }}, "--proxy-workers", {{ .Values.coalmine.proxyWorkers | quote }}{{ end }}]
  {{- else }}
  args: ["controller", "--policy", "/etc/coalmine/policies"]
  {{- end }}
  ports:
    {{- if $sidecar }}
    - name: proxy
      containerPort: {{ .Values.coalmine.ports.proxy }}
      protocol: TCP
    {{- end }}
    - name: admin
      containerPort: {{ .Values.coalmine.ports.admin }}
      protocol: TCP
    - name: metrics
      containerPort: {{ .Values.coalmine.ports.metrics }}
      protocol: TCP
  env:
    - name: COALMINE_CLUSTER
      value: "true"
    - name: COALMINE_POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: COALMINE_POD_UID
      valueFrom:
        fieldRef:
          fieldPath: metadata.uid
    - name: COALMINE_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: COALMINE_LEASE_NAME
      value: {{ include "coalmine.leaseName" . | quote }}
    - name: COALMINE_CONFIGMAP_PREFIX
      value: {{ include "coalmine.configMapPrefix" . | quote }}
    - name: COALMINE_STATE
      value: /var/lib/coalmine/cache.db
    {{- if $sidecar }}
    - name: COALMINE_AGGREGATES
      value: {{ .Values.coalmine.proxyAggregates | quote }}
    - name: COALMINE_LISTEN
      value: "0.0.0.0:{{ .Values.coalmine.ports.proxy }}"
    # Prompt-only releases (no target.upstreams) go to the app container.
    - name: COALMINE_APP_URL
      value: "http://127.0.0.1:{{ .Values.app.port }}"
    {{- end }}
    - name: COALMINE_ADMIN_LISTEN
      value: "0.0.0.0:{{ .Values.coalmine.ports.admin }}"
    - name: COALMINE_METRICS_LISTEN
      value: "0.0.0.0:{{ .Values.coalmine.ports.metrics }}"
    - name: COALMINE_ADMIN_TOKEN_FILE
      value: "/etc/coalmine/admin/{{ .Values.adminToken.key }}"
    {{- include "coalmine.langfuseEnv" . | nindent 4 }}
    {{- with .Values.coalmine.langfuseProjectId }}
    - name: COALMINE_LANGFUSE_PROJECT_ID
      value: {{ . | quote }}
    {{- end }}
    {{- with .Values.coalmine.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if include "coalmine.nativeSidecar" . }}
  # The app starts once the proxy accepts connections.
  startupProbe:
    tcpSocket:
      port: proxy
    {{- toYaml .Values.coalmine.startupProbe | nindent 4 }}
  {{- end }}
  {{- if $sidecar }}
  # /healthz, not /readyz: /readyz is 503 while Langfuse cannot be read, and this
  # sidecar's readiness gates the application's own traffic.
  {{- else }}
  # /healthz, not /readyz: /readyz is 503 while Langfuse cannot be read, and an unready
  # pod would leave the Service, its metrics of that outage with it.
  {{- end }}
  readinessProbe:
    httpGet:
      path: /healthz
      port: admin
    {{- toYaml .Values.coalmine.readinessProbe | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    {{- toYaml .Values.coalmine.livenessProbe | nindent 4 }}
  resources:
    {{- toYaml .Values.coalmine.resources | nindent 4 }}
  securityContext:
    {{- include "coalmine.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    # The whole directory, never subPath: kubelet swaps the ConfigMap's `..data`
    # symlink on an update and coalmine hot-reloads the changed policies.
    - name: policies
      mountPath: /etc/coalmine/policies
      readOnly: true
    - name: admin-token
      mountPath: /etc/coalmine/admin
      readOnly: true
    - name: state
      mountPath: /var/lib/coalmine
    - name: coalmine-tmp
      mountPath: /tmp
{{- end }}
