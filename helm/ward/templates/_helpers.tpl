{{/* Chart name, at most 63 characters. */}}
{{- define "ward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's resources, at most 63 characters. */}}
{{- define "ward.fullname" -}}
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

{{/* Labels that select the pods: stable across upgrades, no chart version. */}}
{{- define "ward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "ward.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: ward
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ward.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ward.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: the digest pins it when set. */}}
{{- define "ward.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Secret with the HS256 key: the named one, else `<fullname>-jwt`. */}}
{{- define "ward.jwtSecretName" -}}
{{- default (printf "%s-jwt" (include "ward.fullname" .)) .Values.auth.jwt.existingSecret }}
{{- end }}

{{/* True (non-empty) when pods share a Redis. */}}
{{- define "ward.hasRedis" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{/* The kubelet must never kill a drain half way. */}}
{{- define "ward.terminationGracePeriod" -}}
{{- add .Values.drain.timeoutSeconds .Values.drain.graceMarginSeconds }}
{{- end }}

{{/* Settings the schema cannot check: stop with a message that says what to do. */}}
{{- define "ward.validate" -}}
{{- $d := .Values.drain }}
{{- if lt (int $d.timeoutSeconds) (add $d.delaySeconds $d.spreadSeconds | int) }}
{{- fail "drain.timeoutSeconds must be at least drain.delaySeconds + drain.spreadSeconds" }}
{{- end }}
{{- if and (eq .Values.auth.mode "open") (not .Values.auth.allowOpen) }}
{{- fail "auth.mode=open lets anyone in: use jwt, or set auth.allowOpen=true on a closed test network" }}
{{- end }}
{{- if and (not (include "ward.hasRedis" .)) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "more than one pod needs redis.url or redis.existingSecret: the in-process broker serves a single pod (or set autoscaling.enabled=false and replicaCount=1)" }}
{{- end }}
{{- end }}
