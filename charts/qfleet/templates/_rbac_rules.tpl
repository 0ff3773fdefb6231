{{/* The operator's permissions, split by scope. Verbs are the ones its API calls need. */}}

{{/* Resources without a namespace, or watched across all namespaces by kopf itself. */}}
{{- define "qfleet.rules.cluster" -}}
# The node inventory by ISA tier (Node Feature Discovery labels, allocatable CPU).
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
# kopf notices CRDs being installed or removed while it runs.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if include "qfleet.clusterWide" . }}
{{- if .Values.leaderElection.enabled }}
# kopf peering: keep-alives of the replicas in one cluster-wide peering object.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- else }}
# Serving a list of namespaces, kopf checks which of them exist (and notices them appear).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end -}}

{{/* Resources in the watched namespaces. */}}
{{- define "qfleet.rules.namespaced" -}}
# kopf and the operator watch them; the reconciler reads one fresh. (kopf writes no annotations:
# with the models listed by the operator, kopf has no handler that changes them.)
- apiGroups: ["qfleet.dev"]
  resources: ["quantizedmodels"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["qfleet.dev"]
  resources: ["quantizedmodels/status"]
  verbs: ["patch"]
# One quantization Job per ISA tier and pipeline key; obsolete ones are deleted.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
# Read-only: a finished Job's pod carries the pipeline result in its termination message, and
# serving pods that stay Pending or crash show why a tier lacks capacity.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# One inference Deployment per ISA tier, scaled to the camera load; deleted with its tier.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# One Service per QuantizedModel, in front of the replicas of every tier (deleted with the model,
# through its ownerReference).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch"]
# One PodDisruptionBudget per serving Deployment, so node drains keep replicas serving.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# kopf and the operator report progress, gate failures and errors as Events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if and .Values.leaderElection.enabled (not (include "qfleet.clusterWide" .)) }}
# kopf peering: keep-alives of the replicas in each watched namespace's peering object.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end -}}
