{{/* Names, labels and the checks every rendering must pass. */}}

{{- define "vregistry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vregistry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vregistry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vregistry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vregistry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "vregistry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "vregistry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vregistry.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the pod sees its files: the ConfigMap and each Secret get their own directory. */}}
{{- define "vregistry.paths" -}}
config: /etc/vregistry/config/config.yaml
callers: /etc/vregistry/callers
tls: /etc/vregistry/tls
clientCA: /etc/vregistry/client-ca
probeCA: /etc/vregistry/probe-ca
probeClient: /etc/vregistry/probe-client
redisCA: /etc/vregistry/redis-ca
tokenCacheKey: /etc/vregistry/token-cache-key
encryptionKeys: /etc/vregistry/encryption-keys
{{- end -}}

{{/* Seconds the kubelet waits after SIGTERM: the preStop sleep, the server's grace, and 5 s for
the process to close its stores and exit. */}}
{{- define "vregistry.terminationGracePeriod" -}}
{{- add (int .Values.server.preStopSleepSeconds) (int (ceil .Values.server.shutdownGraceSeconds)) 5 -}}
{{- end -}}

{{/* The Redis URL the pod gets in VREGISTRY_REDIS_URL (never with a password in it: that comes
from the Secret through $(VREGISTRY_REDIS_PASSWORD)). */}}
{{- define "vregistry.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- if $r.passwordSecret.name -}}
{{- $user := $r.username | default "" -}}
{{- regexReplaceAll "^([a-z+]+://)" $r.url (printf "${1}%s:$(VREGISTRY_REDIS_PASSWORD)@" $user) -}}
{{- else if $r.username -}}
{{- regexReplaceAll "^([a-z+]+://)" $r.url (printf "${1}%s@" $r.username) -}}
{{- else -}}
{{- $r.url -}}
{{- end -}}
{{- end -}}

{{/* Refuse values that would put a secret in the chart or start a pod that cannot work. */}}
{{- define "vregistry.validate" -}}
{{- $v := .Values -}}
{{- $r := $v.redis -}}
{{- if and $r.url (not (regexMatch "^rediss?(\\+sentinel|\\+cluster)?://" $r.url)) -}}
{{- fail "redis.url must be a redis://, rediss://, redis(s)+sentinel:// or redis(s)+cluster:// URL" -}}
{{- end -}}
{{- if contains "@" $r.url -}}
{{- fail "redis.url must not carry credentials: give the password in redis.passwordSecret (or the whole URL in redis.urlSecret)" -}}
{{- end -}}
{{- if and $r.passwordSecret.name (not $r.url) -}}
{{- fail "redis.passwordSecret needs redis.url (the URL the password is put into)" -}}
{{- end -}}
{{- if hasKey $v.config.settings "redis_url" -}}
{{- fail "config.settings.redis_url: give the URL in redis.url or redis.urlSecret (the chart passes it by environment, the password from a Secret)" -}}
{{- end -}}
{{- range $field := list "redis_ca_file" "token_cache_key_file" "token_cache_key_env" "shutdown_grace_seconds" "listen" -}}
{{- if hasKey $v.config.settings $field -}}
{{- fail (printf "config.settings.%s is set by the chart: use the chart's value for it (values.yaml)" $field) -}}
{{- end -}}
{{- end -}}
{{- if and (not $v.callers.secretName) (not $v.server.allowUnauthenticated) -}}
{{- fail "callers.secretName is required (the server refuses to start without caller authentication on a pod address); server.allowUnauthenticated=true runs it open on purpose" -}}
{{- end -}}
{{- if $v.configService.enabled -}}
{{- if not $v.configService.encryptionKeySecret.name -}}
{{- fail "configService.enabled needs configService.encryptionKeySecret.name: the keyring every replica shares" -}}
{{- end -}}
{{- if not (or $r.url $r.urlSecret.name $v.configService.storeUrlSecret.name) -}}
{{- fail "configService.enabled needs a Redis store: redis.url, redis.urlSecret or configService.storeUrlSecret" -}}
{{- end -}}
{{- end -}}
{{- if $v.tls.enabled -}}
{{- if not $v.tls.secretName -}}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if and $v.tls.clientCA.enabled (not $v.tls.clientCA.secretName) -}}
{{- fail "tls.clientCA.enabled needs tls.clientCA.secretName" -}}
{{- end -}}
{{- if and $v.tls.clientCA.enabled (not $v.tls.probe.clientSecretName) -}}
{{- fail "mTLS needs tls.probe.clientSecretName: the probes must present a client certificate the client CA signed" -}}
{{- end -}}
{{- else if $v.tls.clientCA.enabled -}}
{{- fail "tls.clientCA.enabled needs tls.enabled" -}}
{{- end -}}
{{- if lt (int $v.server.workers) 1 -}}
{{- fail "server.workers must be at least 1" -}}
{{- end -}}
{{- if and $v.metrics.prometheusRule.enabled (not $v.metrics.enabled) -}}
{{- fail "metrics.prometheusRule.enabled needs metrics.enabled" -}}
{{- end -}}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" -}}
{{- end -}}
{{- end -}}
