{{/* Names, labels and the pieces every Ledgerflow pod shares. */}}

{{- define "ledgerflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ledgerflow.fullname" -}}
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

{{- define "ledgerflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ledgerflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "root" $ "component" "worker-transfer"). */}}
{{- define "ledgerflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ledgerflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ledgerflow.labels" -}}
{{ include "ledgerflow.selectorLabels" . }}
app.kubernetes.io/part-of: ledgerflow
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Labels of resources that belong to the whole release (PodMonitor, NetworkPolicy, ...). */}}
{{- define "ledgerflow.releaseLabels" -}}
app.kubernetes.io/name: {{ include "ledgerflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ledgerflow
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "ledgerflow.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The command topic of each flow: the wire contract (contracts/topics.py), not configuration. */}}
{{- define "ledgerflow.commandTopics" -}}
onboarding: onboarding.requested
cashin: cashin.confirmed
transfer: transfer.initiated
cashout: cashout.approved
{{- end }}

{{/*
Checks that hold for the whole release; rendering fails with the reason when one does not.
*/}}
{{- define "ledgerflow.validate" -}}
{{- if le (int .Values.terminationGracePeriodSeconds) 15 }}
{{- fail "terminationGracePeriodSeconds must exceed 15: FastStream drains in-flight batches for 15 s on SIGTERM" }}
{{- end }}
{{- if not (has .Values.autoscaling.mode (list "keda" "hpa" "none")) }}
{{- fail (printf "autoscaling.mode must be keda, hpa or none, not %q" .Values.autoscaling.mode) }}
{{- end }}
{{- end }}

{{/*
The autoscaling settings of one worker: the global ones overridden by workers.<name>.autoscaling.
Call with (dict "root" $ "name" $name "worker" $worker); returns YAML, read it with fromYaml.
*/}}
{{- define "ledgerflow.workerAutoscaling" -}}
{{- $scaling := mergeOverwrite (deepCopy .root.Values.autoscaling) (deepCopy (default dict .worker.autoscaling)) }}
{{- $partitions := int .root.Values.kafka.partitions.command }}
{{- if not (has $scaling.mode (list "keda" "hpa" "none")) }}
{{- fail (printf "workers.%s: autoscaling.mode must be keda, hpa or none, not %q" .name $scaling.mode) }}
{{- end }}
{{- if ne $scaling.mode "none" }}
{{- if lt (int $scaling.minReplicas) 1 }}
{{- fail (printf "workers.%s: autoscaling.minReplicas must be at least 1 (KEDA cannot wake a group that never committed)" .name) }}
{{- end }}
{{- if gt (int $scaling.maxReplicas) $partitions }}
{{- fail (printf "workers.%s: autoscaling.maxReplicas (%d) must not exceed kafka.partitions.command (%d): extra replicas hold no partition" .name (int $scaling.maxReplicas) $partitions) }}
{{- end }}
{{- if gt (int $scaling.minReplicas) (int $scaling.maxReplicas) }}
{{- fail (printf "workers.%s: autoscaling.minReplicas exceeds maxReplicas" .name) }}
{{- end }}
{{- else if gt (int .worker.replicas) $partitions }}
{{- fail (printf "workers.%s: replicas (%d) must not exceed kafka.partitions.command (%d)" .name (int .worker.replicas) $partitions) }}
{{- end }}
{{- toYaml $scaling }}
{{- end }}

{{/* Environment every Ledgerflow container gets. Call with (dict "root" $ "service" "worker-transfer"). */}}
{{- define "ledgerflow.commonEnv" -}}
{{- $v := .root.Values -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: LEDGERFLOW_HTTP_HOST
  value: "0.0.0.0"
- name: LEDGERFLOW_HTTP_PORT
  value: {{ $v.http.port | quote }}
- name: LEDGERFLOW_KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required" $v.kafka.bootstrapServers | quote }}
- name: LEDGERFLOW_TOPIC_PREFIX
  value: {{ $v.kafka.topicPrefix | quote }}
- name: LEDGERFLOW_COMMAND_PARTITIONS
  value: {{ $v.kafka.partitions.command | quote }}
- name: LEDGERFLOW_RESULT_PARTITIONS
  value: {{ $v.kafka.partitions.result | quote }}
- name: LEDGERFLOW_DLQ_PARTITIONS
  value: {{ $v.kafka.partitions.dlq | quote }}
- name: LEDGERFLOW_REPLICATION_FACTOR
  value: {{ $v.kafka.replicationFactor | quote }}
- name: LEDGERFLOW_MESSAGE_BYTES_MAX
  value: {{ $v.config.messageBytesMax | quote }}
- name: LEDGERFLOW_DB_POOL_SIZE_MAX
  value: {{ $v.config.dbPoolSizeMax | quote }}
- name: LEDGERFLOW_STATEMENT_TIMEOUT_MS
  value: {{ $v.config.statementTimeoutMs | quote }}
- name: LEDGERFLOW_LOCK_TIMEOUT_MS
  value: {{ $v.config.lockTimeoutMs | quote }}
- name: LEDGERFLOW_DB_RETRIES_MAX
  value: {{ $v.config.dbRetriesMax | quote }}
- name: LEDGERFLOW_BASIC_SINGLE_AMOUNT_MAX
  value: {{ $v.config.basicSingleAmountMax | quote }}
- name: LEDGERFLOW_BASIC_BALANCE_MAX
  value: {{ $v.config.basicBalanceMax | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "ledgerflow-%s" .service | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME),service.namespace=ledgerflow"
{{- with $v.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
{{- end }}
{{- end }}

{{/* The application role's URL, from an existing Secret only. */}}
{{- define "ledgerflow.databaseEnv" -}}
- name: LEDGERFLOW_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret: name the existing Secret holding the app role's URL" .Values.database.existingSecret | quote }}
      key: {{ required "database.urlKey is required" .Values.database.urlKey | quote }}
{{- end }}

{{/* Pod-level settings shared by the Deployments and the Job. Call with the root context. */}}
{{- define "ledgerflow.podSpecCommon" -}}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . | quote }}
  {{- end }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Spread one component's pods: call with (dict "root" $ "component" "worker-transfer"). */}}
{{- define "ledgerflow.topologySpread" -}}
{{- $root := .root }}
{{- $component := .component }}
{{- with $root.Values.topologySpreadConstraints }}
topologySpreadConstraints:
{{- range . }}
  - topologyKey: {{ .topologyKey | quote }}
    maxSkew: {{ .maxSkew | default 1 }}
    whenUnsatisfiable: {{ .whenUnsatisfiable | default "DoNotSchedule" }}
    {{- with .minDomains }}
    minDomains: {{ . }}
    {{- end }}
    labelSelector:
      matchLabels:
        {{- include "ledgerflow.selectorLabels" (dict "root" $root "component" $component) | nindent 8 }}
    # Count only the pods of the current ReplicaSet, so a rollout is not skewed by old pods.
    matchLabelKeys:
      - pod-template-hash
{{- end }}
{{- end }}
{{- end }}

{{/* The container settings every long-running process shares. */}}
{{- define "ledgerflow.containerCommon" -}}
image: {{ include "ledgerflow.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end }}

{{- define "ledgerflow.probes" -}}
ports:
  - name: http
    containerPort: {{ .Values.http.port }}
    protocol: TCP
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
{{- end }}

{{- define "ledgerflow.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- end }}
