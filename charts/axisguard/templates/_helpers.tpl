{{/* Names and labels. */}}
{{- define "axisguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "axisguard.fullname" -}}
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

{{- define "axisguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "axisguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "axisguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "axisguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: server
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "axisguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "axisguard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "axisguard.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Fixed mount points inside the pod. */}}
{{- define "axisguard.packsDir" -}}/packs{{- end -}}
{{- define "axisguard.bundleDir" -}}/bundle{{- end -}}
{{- define "axisguard.policyDir" -}}/etc/axisguard/policy{{- end -}}
{{- define "axisguard.metricsDir" -}}/run/axisguard/prometheus{{- end -}}

{{/* "true" when the guard will be configured in the server (a pack and no kill switch). */}}
{{- define "axisguard.guardActive" -}}
{{- if and (ne .Values.pack.source "none") (not .Values.guard.killSwitch) -}}true{{- end -}}
{{- end -}}

{{/* The pack folder the server reads (AXISGUARD_PACK). */}}
{{- define "axisguard.packPath" -}}
{{- if eq .Values.pack.source "adapt" -}}
{{- printf "%s/adapted" (include "axisguard.packsDir" .) -}}
{{- else if eq .Values.pack.source "existing" -}}
{{- if .Values.pack.existing.claimName -}}
{{- printf "%s/%s" (include "axisguard.packsDir" .) (trimPrefix "/" .Values.pack.existing.path) | trimSuffix "/" -}}
{{- else -}}
{{- .Values.pack.existing.path -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The policy ConfigMap name ("" when the catalogue's default policy is used). */}}
{{- define "axisguard.policyConfigMap" -}}
{{- if .Values.policy.existingConfigMap -}}
{{- .Values.policy.existingConfigMap -}}
{{- else if .Values.policy.inline -}}
{{- printf "%s-policy" (include "axisguard.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Environment the plugin reads; shared by the server and the init steps. */}}
{{- define "axisguard.guardEnv" -}}
- name: VLLM_PLUGINS
  value: axisguard
- name: PROMETHEUS_MULTIPROC_DIR
  value: {{ include "axisguard.metricsDir" . }}
- name: HOME
  value: /tmp
- name: AXISGUARD_HOME
  value: /tmp/axisguard
{{- if .Values.guard.killSwitch }}
- name: AXISGUARD_DISABLE
  value: "1"
{{- end }}
{{- if ne .Values.pack.source "none" }}
- name: AXISGUARD_PACK
  value: {{ include "axisguard.packPath" . | quote }}
{{- end }}
{{- if and (ne .Values.pack.source "none") (include "axisguard.policyConfigMap" .) }}
- name: AXISGUARD_POLICY
  value: {{ printf "%s/%s" (include "axisguard.policyDir" .) .Values.policy.key | quote }}
{{- end }}
{{- if .Values.pack.sha256 }}
- name: AXISGUARD_PACK_SHA256
  value: {{ .Values.pack.sha256 | quote }}
{{- end }}
{{- if .Values.guard.allowNameMismatch }}
- name: AXISGUARD_ALLOW_NAME_MISMATCH
  value: "1"
{{- end }}
- name: AXISGUARD_VERDICT_HISTORY
  value: {{ .Values.guard.verdictHistory | quote }}
{{- end -}}

{{/* PromQL label matchers that select this release's scraped series. */}}
{{- define "axisguard.promSelector" -}}
job="{{ include "axisguard.fullname" . }}", namespace="{{ .Release.Namespace }}"
{{- end -}}

{{/* The canonical bundle `axisguard adapt` reads: the ConfigMap's or PVC's mount, or a path in the image. */}}
{{- define "axisguard.bundlePath" -}}
{{- $bundle := .Values.pack.adapt.bundle -}}
{{- if $bundle.configMap -}}
{{- include "axisguard.bundleDir" . -}}
{{- else if $bundle.claimName -}}
{{- printf "%s/%s" (include "axisguard.bundleDir" .) (trimPrefix "/" $bundle.path) | trimSuffix "/" -}}
{{- else -}}
{{- $bundle.path -}}
{{- end -}}
{{- end -}}
