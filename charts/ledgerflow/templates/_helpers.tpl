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

{{/* The further topics a worker consumes, by flow (the consumer group is ledgerflow.<flow>):
the transfer worker also takes merchant payments and refunds (DESIGN.md §5.2), the cash-out
worker the second phase of held cash-outs (§5.1). */}}
{{- define "ledgerflow.moreCommandTopics" -}}
transfer:
  payment: payment.initiated
  refund: refund.requested
cashout:
  cashout_settle: cashout.settled
  cashout_return: cashout.returned
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

{{/* Environment every Ledgerflow container gets. Call with (dict "root" $ "service" "worker-transfer");
add "kafka" false for a process that never touches Kafka (the read API): no broker, topic or SASL
settings, so it holds no Kafka credential. */}}
{{- define "ledgerflow.commonEnv" -}}
{{- $v := .root.Values -}}
{{- $kafka := dig "kafka" true . -}}
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
  value: {{ $v.http.port | int64 | quote }}
{{- if $kafka }}
- name: LEDGERFLOW_KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required" $v.kafka.bootstrapServers | quote }}
- name: LEDGERFLOW_TOPIC_PREFIX
  value: {{ $v.kafka.topicPrefix | quote }}
- name: LEDGERFLOW_COMMAND_PARTITIONS
  value: {{ $v.kafka.partitions.command | int64 | quote }}
- name: LEDGERFLOW_RESULT_PARTITIONS
  value: {{ $v.kafka.partitions.result | int64 | quote }}
- name: LEDGERFLOW_DLQ_PARTITIONS
  value: {{ $v.kafka.partitions.dlq | int64 | quote }}
- name: LEDGERFLOW_REPLICATION_FACTOR
  value: {{ $v.kafka.replicationFactor | int64 | quote }}
{{- end }}
- name: LEDGERFLOW_MESSAGE_BYTES_MAX
  value: {{ $v.config.messageBytesMax | int64 | quote }}
- name: LEDGERFLOW_DB_POOL_SIZE_MAX
  value: {{ $v.config.dbPoolSizeMax | int64 | quote }}
- name: LEDGERFLOW_STATEMENT_TIMEOUT_MS
  value: {{ $v.config.statementTimeoutMs | int64 | quote }}
- name: LEDGERFLOW_LOCK_TIMEOUT_MS
  value: {{ $v.config.lockTimeoutMs | int64 | quote }}
- name: LEDGERFLOW_DB_RETRIES_MAX
  value: {{ $v.config.dbRetriesMax | int64 | quote }}
- name: LEDGERFLOW_BASIC_SINGLE_AMOUNT_MAX
  value: {{ $v.config.basicSingleAmountMax | int64 | quote }}
- name: LEDGERFLOW_BASIC_BALANCE_MAX
  value: {{ $v.config.basicBalanceMax | int64 | quote }}
- name: LEDGERFLOW_LOG_FORMAT
  value: {{ $v.logging.format | quote }}
- name: LEDGERFLOW_LOG_LEVEL
  value: {{ $v.logging.level | quote }}
- name: LEDGERFLOW_OTLP_ENDPOINT
  value: {{ $v.tracing.otlpEndpoint | quote }}
- name: LEDGERFLOW_TRACE_SAMPLE_RATIO
  value: {{ $v.tracing.sampleRatio | quote }}
# Read by the OpenTelemetry SDK's resource detector: which pod a span came from.
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)"
{{- if $kafka }}
{{- $kafka := $v.kafka.security }}
- name: LEDGERFLOW_KAFKA_SECURITY_PROTOCOL
  value: {{ $kafka.protocol | quote }}
{{- if hasPrefix "SASL_" $kafka.protocol }}
- name: LEDGERFLOW_KAFKA_SASL_MECHANISM
  value: {{ $kafka.saslMechanism | quote }}
- name: LEDGERFLOW_KAFKA_SASL_USERNAME
  value: {{ required "kafka.security.saslUsername is required with SASL" $kafka.saslUsername | quote }}
- name: LEDGERFLOW_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.security.saslPasswordSecret: name the existing Secret holding the SASL password" $kafka.saslPasswordSecret | quote }}
      key: {{ $kafka.saslPasswordKey | quote }}
{{- end }}
{{- if $kafka.tlsSecret }}
{{- if not (has $kafka.protocol (list "SSL" "SASL_SSL")) }}
{{- fail "kafka.security.tlsSecret needs kafka.security.protocol SSL or SASL_SSL" }}
{{- end }}
- name: LEDGERFLOW_KAFKA_SSL_CAFILE
  value: /etc/ledgerflow/kafka-tls/ca.crt
{{- if $kafka.mutualTls }}
- name: LEDGERFLOW_KAFKA_SSL_CERTFILE
  value: /etc/ledgerflow/kafka-tls/tls.crt
- name: LEDGERFLOW_KAFKA_SSL_KEYFILE
  value: /etc/ledgerflow/kafka-tls/tls.key
{{- end }}
{{- end }}
{{- end }}
{{- with $v.database.sslmode }}
- name: LEDGERFLOW_DATABASE_SSLMODE
  value: {{ . | quote }}
{{- end }}
{{- if $v.database.tlsSecret }}
- name: LEDGERFLOW_DATABASE_SSL_ROOT_CERT
  value: /etc/ledgerflow/database-tls/ca.crt
{{- if $v.database.mutualTls }}
- name: LEDGERFLOW_DATABASE_SSL_CERT
  value: /etc/ledgerflow/database-tls/tls.crt
- name: LEDGERFLOW_DATABASE_SSL_KEY
  value: /etc/ledgerflow/database-tls/tls.key
{{- end }}
{{- end }}
{{- end }}

{{/* Who may call: the identity provider whose tokens the workers and the read API verify. */}}
{{- define "ledgerflow.authEnv" -}}
{{- $v := .Values -}}
{{- if not (has $v.auth.mode (list "required" "off")) }}
{{- fail "auth.mode must be required or off" }}
{{- end }}
- name: LEDGERFLOW_AUTH_MODE
  value: {{ $v.auth.mode | quote }}
{{- if eq $v.auth.mode "required" }}
- name: LEDGERFLOW_AUTH_JWKS_URL
  value: {{ required "auth.jwksUrl: the identity provider's JWKS URL is required when auth.mode is required" $v.auth.jwksUrl | quote }}
- name: LEDGERFLOW_AUTH_ISSUER
  value: {{ $v.auth.issuer | quote }}
- name: LEDGERFLOW_AUTH_AUDIENCE
  value: {{ $v.auth.audience | quote }}
- name: LEDGERFLOW_AUTH_LEEWAY_S
  value: {{ $v.auth.leewaySeconds | int64 | quote }}
- name: LEDGERFLOW_AUTH_MAX_TOKEN_AGE_S
  value: {{ $v.auth.maxTokenAgeSeconds | int64 | quote }}
{{- end }}
{{- end }}

{{/* What only the workers need: who may move money, and the personal-data keys. */}}
{{- define "ledgerflow.workerSecurityEnv" -}}
{{- $v := .Values -}}
{{ include "ledgerflow.authEnv" . }}
{{- $pii := required "pii.existingSecret: name the existing Secret holding the personal-data keys" $v.pii.existingSecret }}
{{- range $variable, $key := dict "LEDGERFLOW_PII_KEYS" $v.pii.keysKey "LEDGERFLOW_PII_ACTIVE_KEY_ID" $v.pii.activeKeyIdKey "LEDGERFLOW_PII_INDEX_KEY" $v.pii.indexKeyKey }}
- name: {{ $variable }}
  valueFrom:
    secretKeyRef:
      name: {{ $pii | quote }}
      key: {{ $key | quote }}
{{- end }}
{{ include "ledgerflow.contentHashKeyEnv" . }}
{{- end }}

{{/* The HMAC key of the content hashes at rest: the workers and the migration (which re-keys
old rows) need the same one. */}}
{{- define "ledgerflow.contentHashKeyEnv" -}}
{{- $v := .Values -}}
- name: LEDGERFLOW_CONTENT_HASH_KEY
  valueFrom:
    secretKeyRef:
      name: {{ required "pii.existingSecret: name the existing Secret holding the personal-data keys" $v.pii.existingSecret | quote }}
      key: {{ required "pii.contentHashKeyKey: the Secret's key holding LEDGERFLOW_CONTENT_HASH_KEY" $v.pii.contentHashKeyKey | quote }}
{{- end }}

{{/* The TLS Secrets as read-only files (volumes and mounts). Call with the root context, or with
(dict "root" $ "kafka" false) for a pod that never talks to Kafka (no Kafka certificate or key). */}}
{{- define "ledgerflow.tlsVolumes" -}}
{{- $root := get . "root" | default . }}
{{- $kafka := not (and (hasKey . "kafka") (eq (get . "kafka") false)) }}
{{- with and $kafka $root.Values.kafka.security.tlsSecret }}
- name: kafka-tls
  secret:
    secretName: {{ . | quote }}
    defaultMode: 0440
{{- end }}
{{- with $root.Values.database.tlsSecret }}
- name: database-tls
  secret:
    secretName: {{ . | quote }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "ledgerflow.tlsMounts" -}}
{{- $root := get . "root" | default . }}
{{- $kafka := not (and (hasKey . "kafka") (eq (get . "kafka") false)) }}
{{- if and $kafka $root.Values.kafka.security.tlsSecret }}
- name: kafka-tls
  mountPath: /etc/ledgerflow/kafka-tls
  readOnly: true
{{- end }}
{{- if $root.Values.database.tlsSecret }}
- name: database-tls
  mountPath: /etc/ledgerflow/database-tls
  readOnly: true
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

{{/* The container settings every long-running process shares. Call with the root context, or
with (dict "root" $ "kafka" false) like ledgerflow.tlsMounts. */}}
{{- define "ledgerflow.containerCommon" -}}
{{- $root := get . "root" | default . -}}
image: {{ include "ledgerflow.image" $root | quote }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml $root.Values.containerSecurityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- with include "ledgerflow.tlsMounts" . }}
  {{- . | nindent 2 }}
  {{- end }}
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

{{/* /tmp and the TLS volumes; the same arguments as ledgerflow.tlsVolumes. */}}
{{- define "ledgerflow.tmpVolume" -}}
{{- $root := get . "root" | default . -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $root.Values.tmpVolume.sizeLimit }}
{{- with include "ledgerflow.tlsVolumes" . }}
{{ . }}
{{- end }}
{{- end }}
