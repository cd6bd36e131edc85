{{/*
Names. Everything is cut at 63 characters (DNS-1123 labels) and never ends in "-".
*/}}
{{- define "featx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "featx.fullname" -}}
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

{{- define "featx.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: name + instance only (selectors are immutable). */}}
{{- define "featx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "featx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "featx.labels" -}}
helm.sh/chart: {{ include "featx.chart" . }}
{{ include "featx.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: featx
featx.io/release: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "featx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "featx.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "featx.configMapName" -}}
{{- printf "%s-run" (include "featx.fullname" .) }}
{{- end }}

{{- define "featx.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "featx.storeUrl" -}}
{{- $prefix := trimAll "/" (default "" .Values.s3.prefix) }}
{{- if $prefix }}
{{- printf "s3://%s/%s" .Values.s3.bucket $prefix }}
{{- else }}
{{- printf "s3://%s" .Values.s3.bucket }}
{{- end }}
{{- end }}

{{/*
S3 settings every featx container needs (controller and Jobs): the endpoint, the region and the
access keys from a Secret reference (never a value in a ConfigMap).
*/}}
{{- define "featx.s3Env" -}}
{{- $s3 := .Values.s3 }}
{{- if $s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ $s3.endpoint | toJson }}
{{- end }}
{{- if $s3.region }}
- name: AWS_REGION
  value: {{ $s3.region | toJson }}
{{- end }}
{{- with $s3.credentialsSecret }}
{{- if .name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .name | toJson }}
      key: {{ .accessKeyIdKey | toJson }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name | toJson }}
      key: {{ .secretAccessKeyKey | toJson }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment of an extraction container. */}}
{{- define "featx.jobEnv" -}}
{{- $cache := .Values.modelCache.mountPath -}}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: {{ $cache | toJson }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" $cache | toJson }}
- name: TORCH_HOME
  value: {{ printf "%s/torch" $cache | toJson }}
- name: FEATX_HOME
  value: {{ printf "%s/featx" $cache | toJson }}
{{- include "featx.s3Env" . }}
{{- if .Values.hfToken.secretName }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.hfToken.secretName | toJson }}
      key: {{ .Values.hfToken.key | toJson }}
{{- end }}
{{- range .Values.job.env }}
- {{ toJson . }}
{{- end }}
{{- end }}

{{/*
The per-model Job template the controller fills in (name, labels, command, GPU request, node
affinity, tolerations). `featx render` (featx/kube/helm.py) and the controller both read it from
the ConfigMap helm renders.
*/}}
{{- define "featx.jobTemplate" -}}
activeDeadlineSeconds: {{ .Values.job.activeDeadlineSeconds | toJson }}
ttlSecondsAfterFinished: {{ .Values.job.ttlSecondsAfterFinished | toJson }}
podAnnotations: {{ .Values.job.podAnnotations | default dict | toJson }}
podSpec:
  restartPolicy: Never
  automountServiceAccountToken: false
  {{- with .Values.job.serviceAccountName }}
  serviceAccountName: {{ . | toJson }}
  {{- end }}
  {{- with .Values.job.priorityClassName }}
  priorityClassName: {{ . | toJson }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets: {{ toJson . }}
  {{- end }}
  securityContext: {{ .Values.podSecurityContext | toJson }}
  nodeSelector: {{ .Values.job.nodeSelector | default dict | toJson }}
  tolerations: {{ .Values.job.tolerations | default list | toJson }}
  containers:
    - name: extract
      image: {{ include "featx.image" . | toJson }}
      imagePullPolicy: {{ .Values.image.pullPolicy | toJson }}
      command: ["featx", "extract"]
      # The controller's give-up reason and `kubectl describe` carry featx's one-line error.
      terminationMessagePolicy: FallbackToLogsOnError
      env:
        {{- include "featx.jobEnv" . | nindent 8 }}
      securityContext: {{ .Values.containerSecurityContext | toJson }}
      resources: {{ .Values.job.resources | toJson }}
      volumeMounts:
        - {"name": "tmp", "mountPath": "/tmp"}
        - {"name": "cache", "mountPath": {{ .Values.modelCache.mountPath | toJson }}}
  volumes:
    - {"name": "tmp", "emptyDir": {}}
    {{- if .Values.modelCache.existingClaim }}
    - {"name": "cache", "persistentVolumeClaim": {"claimName": {{ .Values.modelCache.existingClaim | toJson }}}}
    {{- else }}
    - {"name": "cache", "emptyDir": {"sizeLimit": {{ .Values.modelCache.sizeLimit | toJson }}}}
    {{- end }}
{{- end }}

{{/* run.yaml: everything `featx reconcile` needs besides the catalog and the store. */}}
{{- define "featx.runConfig" -}}
release: {{ .Release.Name | toJson }}
namespace: {{ .Release.Namespace | toJson }}
fullname: {{ include "featx.fullname" . | toJson }}
appVersion: {{ .Chart.AppVersion | toJson }}
modelset: {{ .Values.modelset | toJson }}
modality: {{ .Values.modality | toJson }}
pool: {{ .Values.pool | toJson }}
dataset: {{ .Values.dataset | toJson }}
subset: {{ .Values.subset | toJson }}
captionIdx: {{ .Values.captionIdx | toJson }}
numSamples: {{ .Values.numSamples | toJson }}
batchSize: {{ .Values.batchSize | toJson }}
qlora: {{ .Values.qlora | toJson }}
verify: {{ .Values.verify | toJson }}
store: {{ include "featx.storeUrl" . | toJson }}
concurrency: {{ .Values.concurrency | toJson }}
attempts: {{ .Values.attempts | toJson }}
sharding: {{ .Values.sharding | default dict | toJson }}
intervalSeconds: {{ .Values.controller.intervalSeconds | toJson }}
kueueQueue: {{ (dig "queueName" "" (.Values.kueue | default dict)) | toJson }}
kueuePriorityClass: {{ (dig "priorityClassName" "" (.Values.kueue | default dict)) | toJson }}
extraArgs: {{ .Values.job.extraArgs | default list | toJson }}
gpuClasses: {{ .Values.gpuClasses | toJson }}
jobTemplate:
  {{- include "featx.jobTemplate" . | nindent 2 }}
{{- end }}

{{/*
Checks across values, reported together in one failure that names each key and the fix.
values.schema.json has already checked each value on its own.
*/}}
{{- define "featx.validateValues" -}}
{{- $errors := list }}
{{- $names := dict }}
{{- $enabled := 0 }}
{{- range $i, $c := .Values.gpuClasses }}
{{- if hasKey $names $c.name }}
{{- $errors = append $errors (printf "gpuClasses[%d].name %q is used twice: give each class its own name (in the gpuClasses list of your -f values file)" $i $c.name) }}
{{- end }}
{{- $_ := set $names $c.name true }}
{{- if (ne (toString $c.enabled) "false") }}
{{- $enabled = add1 $enabled }}
{{- end }}
{{- if and (contains "mig-" (default "" $c.resource)) (gt (int (default 1 $c.maxPerNode)) 1) }}
{{- $errors = append $errors (printf "gpuClasses[%d] (%s): a MIG slice is one device per process; set its maxPerNode to 1" $i $c.name) }}
{{- end }}
{{- if and (not $c.resource) (gt (int (default 1 $c.maxPerNode)) 1) }}
{{- $errors = append $errors (printf "gpuClasses[%d] (%s): a CPU class (resource \"\") has no devices to split a model over; set its maxPerNode to 1" $i $c.name) }}
{{- end }}
{{- end }}
{{- if eq $enabled 0 }}
{{- $errors = append $errors "gpuClasses: no class is enabled, so no model can be sized; set enabled: true on one in your -f values file" }}
{{- end }}
{{- range $i, $e := .Values.job.env }}
{{- $name := upper (toString $e.name) }}
{{- if and (hasKey $e "value") (regexMatch "TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|KEY" $name) }}
{{- $errors = append $errors (printf "job.env[%d] %s has a plain value, which would be stored in the ConfigMap: put it in a Secret and use valueFrom.secretKeyRef (for HF_TOKEN: --set hfToken.secretName=<secret>; for S3 keys: s3.credentialsSecret)" $i $e.name) }}
{{- end }}
{{- end }}
{{- if and (dig "priorityClassName" "" (.Values.kueue | default dict)) (not (dig "queueName" "" (.Values.kueue | default dict))) }}
{{- $errors = append $errors "kueue.priorityClassName is set without kueue.queueName: Kueue only orders Jobs it queues; set kueue.queueName=<LocalQueue> too, or drop the priority class" }}
{{- end }}
{{- if and .Values.hfToken.secretName (not .Values.hfToken.key) }}
{{- $errors = append $errors "hfToken.key is empty: name the Secret key holding the token (--set hfToken.key=HF_TOKEN)" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) (gt (int .Values.controller.replicas) 0) }}
{{- $errors = append $errors "serviceAccount.create=false needs serviceAccount.name (an existing ServiceAccount allowed to list/create/delete/patch Jobs and list Pods)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.controller.health.port) }}
{{- $errors = append $errors "metrics.serviceMonitor.enabled needs controller.health.port (where /metrics is served); set it, e.g. 8080" }}
{{- end }}
{{- if $errors }}
{{- fail (printf "\nfeatx: invalid values:\n  - %s" (join "\n  - " $errors)) }}
{{- end }}
{{- end }}
