{{/* The chart name, or nameOverride. */}}
{{- define "authplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The base of every object name: fullnameOverride, else the release name when it already
contains the chart name (`helm install authplane ...` gives `authplane`), else
<release>-<chart>. Kept at 52 characters so that suffixed names stay within 63.
*/}}
{{- define "authplane.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "authplane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "authplane.labels" -}}
helm.sh/chart: {{ include "authplane.chart" . }}
{{ include "authplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: authplane
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the operator's pods: never change them, selectors are immutable. */}}
{{- define "authplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "authplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "authplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "authplane.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Service in front of the webhook port (443 -> 8443). */}}
{{- define "authplane.webhookServiceName" -}}
{{- printf "%s-webhook" (include "authplane.fullname" .) }}
{{- end }}

{{/* The ValidatingWebhookConfiguration (cluster-scoped). */}}
{{- define "authplane.webhookConfigurationName" -}}
{{- include "authplane.fullname" . }}
{{- end }}

{{- define "authplane.tlsSecretName" -}}
{{- if .Values.tls.secretName }}
{{- .Values.tls.secretName }}
{{- else if eq .Values.tls.mode "secret" }}
{{- fail "tls.mode=secret needs tls.secretName: the kubernetes.io/tls Secret that holds the webhook's certificate" }}
{{- else }}
{{- printf "%s-tls" (include "authplane.fullname" .) }}
{{- end }}
{{- end }}

{{- define "authplane.certificateName" -}}
{{- printf "%s-webhook" (include "authplane.fullname" .) }}
{{- end }}

{{- define "authplane.issuerName" -}}
{{- printf "%s-selfsigned" (include "authplane.fullname" .) }}
{{- end }}

{{/* How verifiers reach the HTTP endpoints; the base of default issuer URLs. */}}
{{- define "authplane.externalUrl" -}}
{{- if .Values.externalUrl }}
{{- .Values.externalUrl | trimSuffix "/" }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "authplane.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}
{{- end }}

{{- define "authplane.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Whether Envoy's gRPC ext_authz is served ("true" or ""): when the generated
SecurityPolicies use it, or when asked for (Envoy wired by hand).
*/}}
{{- define "authplane.grpcServed" -}}
{{- $envoy := .Values.gatewayAPI.envoyGateway }}
{{- $kgateway := .Values.gatewayAPI.kgateway }}
{{- if or .Values.grpc.enabled (and $envoy.enabled (eq ($envoy.protocol | default "http") "grpc")) (and $kgateway.enabled (eq ($kgateway.protocol | default "http") "grpc")) -}}
true
{{- end }}
{{- end }}
