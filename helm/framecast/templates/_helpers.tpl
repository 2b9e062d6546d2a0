{{/*
Names, labels and the values derived in more than one template. Each derived value
(image, model path, job store URL, GPU limits) is defined here once.
*/}}

{{- define "framecast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "framecast.fullname" -}}
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

{{- define "framecast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "framecast.metaLabels" -}}
helm.sh/chart: {{ include "framecast.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/name: {{ include "framecast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The component label keeps the server's selector off the Redis pod. */}}
{{- define "framecast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "framecast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "framecast.labels" -}}
{{ include "framecast.metaLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "framecast.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "framecast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: job-store
{{- end }}

{{- define "framecast.redisLabels" -}}
{{ include "framecast.metaLabels" . }}
app.kubernetes.io/component: job-store
{{- end }}

{{- define "framecast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "framecast.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* GPU and CPU images come from different Dockerfiles (docker/Dockerfile.gpu, .cpu). */}}
{{- define "framecast.variant" -}}
{{- if gt (int .Values.gpu.count) 0 }}gpu{{ else }}cpu{{ end }}
{{- end }}

{{- define "framecast.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion (include "framecast.variant" .)) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "framecast.device" -}}
{{- if .Values.server.device }}{{ .Values.server.device }}{{ else if gt (int .Values.gpu.count) 0 }}cuda{{ else }}cpu{{ end }}
{{- end }}

{{/* What FRAMECAST_MODEL and `build-engines --model` get; empty = the server default. */}}
{{- define "framecast.model" -}}
{{- if eq .Values.model.source "embedded" }}
{{- .Values.model.name }}
{{- else if .Values.model.path }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) (trimPrefix "/" .Values.model.path) }}
{{- else }}
{{- .Values.model.mountPath }}
{{- end }}
{{- end }}

{{/*
The Prometheus series behind autoscaling.metric, as server/metrics.py names them
(tests/test_helm.py checks the server exports each one).
*/}}
{{- define "framecast.hpaMetric" -}}
{{- get (dict "activeSessions" "framecast_active_sessions" "queueDepth" "framecast_stream_queue_chunks") .Values.autoscaling.metric }}
{{- end }}

{{- define "framecast.redisName" -}}
{{- printf "%s-redis" (include "framecast.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The job store URL given as a plain value; empty when none (SQLite or urlSecret). */}}
{{- define "framecast.jobStoreUrl" -}}
{{- if .Values.jobStore.url }}
{{- .Values.jobStore.url }}
{{- else if and (not .Values.jobStore.urlSecret.name) .Values.jobStore.redis.enabled }}
{{- printf "redis://%s:6379/0" (include "framecast.redisName" .) }}
{{- end }}
{{- end }}

{{- define "framecast.sharedJobStore" -}}
{{- if or .Values.jobStore.url .Values.jobStore.urlSecret.name .Values.jobStore.redis.enabled }}true{{ end }}
{{- end }}

{{- define "framecast.apiKeysSecretName" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "framecast.fullname" .)) }}
{{- end }}

{{/* Resources of a container that runs the model (server, build-engines): the GPU limit is added here only. */}}
{{- define "framecast.modelResources" -}}
{{- $resources := deepCopy .resources }}
{{- if gt (int .root.Values.gpu.count) 0 }}
{{- $limits := get $resources "limits" | default dict }}
{{- $_ := set $limits .root.Values.gpu.resourceName (int .root.Values.gpu.count) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/*
Rules that span several values, which values.schema.json cannot say clearly. Each
failure names the values to change.
*/}}
{{- define "framecast.validate" -}}
{{- $replicas := ternary (int .Values.autoscaling.maxReplicas) (int .Values.replicaCount) .Values.autoscaling.enabled }}
{{- if and (gt $replicas 1) (not (include "framecast.sharedJobStore" .)) }}
{{- fail (printf "jobStore: %d replicas need a shared job store (SQLite is per pod): set jobStore.redis.enabled=true, jobStore.url or jobStore.urlSecret.name" $replicas) }}
{{- end }}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.pvc.claimName) }}
{{- fail "model.pvc.claimName: required when model.source=pvc" }}
{{- end }}
{{- if and (eq .Values.model.source "initContainer") (not .Values.model.initContainer.image.repository) }}
{{- fail "model.initContainer.image.repository: required when model.source=initContainer" }}
{{- end }}
{{- $needed := add .Values.preStopSleepSeconds .Values.server.shutdownGraceSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds: must exceed preStopSleepSeconds + server.shutdownGraceSeconds (%d)" (int $needed)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas: must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
{{- fail "httpRoute.parentRefs: name at least one Gateway when httpRoute.enabled=true" }}
{{- end }}
{{- end }}

{{/* Env shared by the server and the build-engines init container: both must see the same model, backend, device and cache. */}}
{{- define "framecast.modelEnv" -}}
# The root filesystem is read-only: caches (~/.cache, ~/.triton) go to an emptyDir.
- name: HOME
  value: /home/framecast
- name: FRAMECAST_DEVICE
  value: {{ include "framecast.device" . | quote }}
{{- with .Values.server.backend }}
- name: FRAMECAST_BACKEND
  value: {{ . | quote }}
{{- end }}
{{- with include "framecast.model" . }}
- name: FRAMECAST_MODEL
  value: {{ . | quote }}
{{- end }}
- name: FRAMECAST_ENGINE_CACHE_DIR
  value: {{ .Values.engines.mountPath | quote }}
- name: FRAMECAST_LOG_LEVEL
  value: {{ .Values.server.logLevel | quote }}
{{- end }}

{{- define "framecast.modelMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/framecast
- name: engines
  mountPath: {{ .Values.engines.mountPath }}
{{- if ne .Values.model.source "embedded" }}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end }}
{{- end }}
