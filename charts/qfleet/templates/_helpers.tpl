{{/* Names, labels, images, pull secrets and the security contexts shared by the templates. */}}

{{- define "qfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's resource name prefix; names derived from it must stay within 63 characters. */}}
{{- define "qfleet.fullname" -}}
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

{{- define "qfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "qfleet.labels" -}}
helm.sh/chart: {{ include "qfleet.chart" . }}
{{ include "qfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: qfleet
{{- end -}}

{{- define "qfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qfleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image of .Values.images by name (operator, toolkit, server); see qfleet.imageRef. */}}
{{- define "qfleet.image" -}}
{{- include "qfleet.imageRef" (dict "root" .root "image" (index .root.Values.images .name)) -}}
{{- end -}}

{{/*
An image reference: repository@digest when a digest is set, else repository:tag (tag defaults to
appVersion). global.imageRegistry takes the place of the repository's registry (its first path
component when that names a host, as Docker reads it), so one mirror serves every image.
*/}}
{{- define "qfleet.imageRef" -}}
{{- $image := .image -}}
{{- $repository := $image.repository -}}
{{- $registry := dig "imageRegistry" "" (.root.Values.global | default dict) -}}
{{- if $registry -}}
{{- $parts := splitList "/" $repository -}}
{{- $first := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $repository = join "/" (rest $parts) -}}
{{- end -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Image pull secrets as a JSON list of {name}: global.imagePullSecrets, then imagePullSecrets, then
.extra; names may be given bare (as many umbrella charts do) and each appears once.
*/}}
{{- define "qfleet.imagePullSecrets" -}}
{{- $given := concat (dig "imagePullSecrets" list (.root.Values.global | default dict)) (.root.Values.imagePullSecrets | default list) (.extra | default list) -}}
{{- $names := list -}}
{{- range $given -}}
{{- $name := . -}}
{{- if kindIs "map" . -}}
{{- $name = get . "name" -}}
{{- end -}}
{{- if and $name (not (has $name $names)) -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- $secrets := list -}}
{{- range $names -}}
{{- $secrets = append $secrets (dict "name" .) -}}
{{- end -}}
{{- toJson $secrets -}}
{{- end -}}

{{/* The namespaces the operator watches; empty means all of them. */}}
{{- define "qfleet.clusterWide" -}}
{{- if not .Values.operator.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/*
Pod-level security, from podSecurityContext (the restricted Pod Security Standard by default).
A key set to null in the values is gone from them, so a platform may choose the uid.
*/}}
{{- define "qfleet.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{- define "qfleet.containerSecurityContext" -}}
{{- toYaml .Values.securityContext -}}
{{- end -}}

{{/* The uid the operator's container runs as, if the values fix one (its Jobs and servers get it). */}}
{{- define "qfleet.runAsUser" -}}
{{- $container := .Values.securityContext | default dict -}}
{{- $pod := .Values.podSecurityContext | default dict -}}
{{- if $container.runAsUser -}}
{{- $container.runAsUser | int -}}
{{- else if $pod.runAsUser -}}
{{- $pod.runAsUser | int -}}
{{- else -}}
{{- /* No fixed user (OpenShift's restricted-v2 assigns one): the operator's pods name none either. */ -}}
auto
{{- end -}}
{{- end -}}
