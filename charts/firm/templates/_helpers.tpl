{{/*
Names, labels, images and the settings FIRM pods share. Every object of the chart takes its name and labels from
here.
*/}}

{{/* The chart name (or nameOverride). */}}
{{- define "firm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The fullname, prefix of every object: the release name, unless fullnameOverride (used as is) or nameOverride
(`<release>-<nameOverride>`, or the release name when it already contains it) is set.
*/}}
{{- define "firm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if and .Values.nameOverride (not (contains .Values.nameOverride .Release.Name)) -}}
{{- printf "%s-%s" .Release.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "firm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the pods of one release (add app.kubernetes.io/component per workload). */}}
{{- define "firm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "firm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Standard labels of every object. */}}
{{- define "firm.labels" -}}
helm.sh/chart: {{ include "firm.chart" . }}
{{ include "firm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: firm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
An image reference from {registry, repository, tag, digest}: registry/repository:tag[@digest]. The tag defaults to
the chart's appVersion. Call with (dict "image" <map> "registry" <default registry> "root" $).
*/}}
{{- define "firm.image" -}}
{{- $registry := .image.registry | default .registry -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion | toString -}}
{{- $ref := printf "%s:%s" .image.repository $tag -}}
{{- if $registry -}}{{- $ref = printf "%s/%s" $registry $ref -}}{{- end -}}
{{- if .image.digest -}}{{- $ref = printf "%s@%s" $ref .image.digest -}}{{- end -}}
{{- $ref -}}
{{- end -}}

{{- define "firm.image.trainer" -}}
{{- include "firm.image" (dict "image" .Values.images.trainer "registry" .Values.images.registry "root" .) -}}
{{- end -}}
{{- define "firm.image.pipeline" -}}
{{- include "firm.image" (dict "image" .Values.images.pipeline "registry" .Values.images.registry "root" .) -}}
{{- end -}}
{{- define "firm.image.triton" -}}
{{- include "firm.image" (dict "image" .Values.images.triton "registry" .Values.images.registry "root" .) -}}
{{- end -}}
{{- define "firm.image.minio" -}}
{{- include "firm.image" (dict "image" .Values.minio.image "registry" "" "root" .) -}}
{{- end -}}

{{- define "firm.imagePullSecrets" -}}
{{- with .Values.images.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Security contexts (values podSecurityContext / containerSecurityContext). */}}
{{- define "firm.podSecurityContext" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}
{{- define "firm.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* Names of the chart's objects. */}}
{{- define "firm.settings.name" -}}
{{- printf "%s-settings" (include "firm.fullname" .) -}}
{{- end -}}
{{- define "firm.minio.fullname" -}}
{{- printf "%s-minio" (include "firm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "firm.trainer.serviceAccountName" -}}
{{- default (printf "%s-trainer" (include "firm.fullname" .)) .Values.training.serviceAccount.name -}}
{{- end -}}
{{- define "firm.pipeline.serviceAccountName" -}}
{{- default (printf "%s-pipeline-runner" (include "firm.fullname" .)) .Values.pipelines.serviceAccount.name -}}
{{- end -}}
{{- define "firm.workload.serviceAccountName" -}}
{{- printf "%s-workload" (include "firm.fullname" .) -}}
{{- end -}}
{{/* Reward Deployment/Service name; call with (dict "root" $ "model" <model>). */}}
{{- define "firm.reward.name" -}}
{{- printf "%s-reward-%s" (include "firm.fullname" .root) .model.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The Secret FIRM pods read the object store credentials from (keys access-key / secret-key):
objectStore.existingSecret, else minio.auth.existingSecret, else the generated <fullname>-object-store.
*/}}
{{- define "firm.objectStore.secretName" -}}
{{- if .Values.objectStore.existingSecret -}}
{{- .Values.objectStore.existingSecret -}}
{{- else if and .Values.minio.enabled .Values.minio.auth.existingSecret -}}
{{- .Values.minio.auth.existingSecret -}}
{{- else -}}
{{- printf "%s-object-store" (include "firm.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret MinIO takes its root user/password from: minio.auth.existingSecret, else the object-store Secret. */}}
{{- define "firm.minio.secretName" -}}
{{- default (include "firm.objectStore.secretName" .) .Values.minio.auth.existingSecret -}}
{{- end -}}

{{/* Whether the chart generates the object-store Secret. */}}
{{- define "firm.objectStore.generateSecret" -}}
{{- if and .Values.minio.enabled (not .Values.objectStore.existingSecret) (not .Values.minio.auth.existingSecret) -}}
true
{{- end -}}
{{- end -}}

{{/* host:port of the object store. */}}
{{- define "firm.objectStore.endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s.%s.svc.%s:%v" (include "firm.minio.fullname" .) .Release.Namespace .Values.clusterDomain .Values.minio.service.ports.api -}}
{{- else -}}
{{- .Values.objectStore.endpoint -}}
{{- end -}}
{{- end -}}

{{/* The credentials env of every FIRM container. */}}
{{- define "firm.objectStore.env" -}}
- name: FIRM_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "firm.objectStore.secretName" . }}
      key: access-key
- name: FIRM_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "firm.objectStore.secretName" . }}
      key: secret-key
{{- end -}}

{{/* envFrom of every FIRM container: the settings ConfigMap. */}}
{{- define "firm.settings.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "firm.settings.name" . }}
{{- end -}}

{{/*
FIRM_CLUSTER__NODE_POOLS: the node pools as JSON with the field names of firm.launch.cluster.NodePool /
Toleration / JobResources (snake_case: jobResources → job_resources, shmSize → shm_size), so FirmSettings validates
exactly what the chart places its own pods with — and refuses a jobResources.shmSize above its memory at pod start.
*/}}
{{- define "firm.nodePools.json" -}}
{{- $out := dict -}}
{{- range $name, $p := .Values.nodePools -}}
{{- $tolerations := list -}}
{{- range $p.tolerations -}}
{{- $t := dict "operator" (.operator | default "Exists") -}}
{{- if .key }}{{ $_ := set $t "key" .key }}{{ end -}}
{{- if .value }}{{ $_ := set $t "value" .value }}{{ end -}}
{{- if .effect }}{{ $_ := set $t "effect" .effect }}{{ end -}}
{{- if hasKey . "tolerationSeconds" }}{{ $_ := set $t "toleration_seconds" (int .tolerationSeconds) }}{{ end -}}
{{- $tolerations = append $tolerations $t -}}
{{- end -}}
{{- $pool := dict "description" ($p.description | default "") "node_selector" ($p.nodeSelector | default dict) "tolerations" $tolerations "gpu_resource" ($p.gpuResource | default "nvidia.com/gpu") "gpus_per_node" (int ($p.gpusPerNode | default 0)) -}}
{{- if $p.acceleratorLabel -}}
{{- $_ := set $pool "accelerator_label" $p.acceleratorLabel -}}
{{- $_ := set $pool "accelerator_type" $p.acceleratorType -}}
{{- end -}}
{{- $jobResources := dict -}}
{{- range $key, $field := dict "cpu" "cpu" "memory" "memory" "shmSize" "shm_size" -}}
{{- $v := get ($p.jobResources | default dict) $key -}}
{{- if or $v (kindIs "float64" $v) (kindIs "int64" $v) }}{{ $_ := set $jobResources $field $v }}{{ end -}}
{{- end -}}
{{- $_ := set $pool "job_resources" $jobResources -}}
{{- $_ := set $out $name $pool -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* A pool by name, or fail naming the field. Call with (dict "root" $ "pool" <name> "field" <values path>). */}}
{{- define "firm.pool" -}}
{{- $pool := get .root.Values.nodePools .pool -}}
{{- if not $pool -}}
{{- fail (printf "%s: unknown node pool %q (known: %s)" .field .pool (keys .root.Values.nodePools | sortAlpha | join ", ")) -}}
{{- end -}}
{{- toYaml $pool -}}
{{- end -}}

{{/* Pod placement from a pool: nodeSelector (+ accelerator label) and tolerations. Call with the pool map. */}}
{{- define "firm.pool.placement" -}}
{{- $selector := deepCopy (.nodeSelector | default dict) -}}
{{- if .acceleratorLabel }}{{ $_ := set $selector .acceleratorLabel .acceleratorType }}{{ end -}}
{{- with $selector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Values checks the schema cannot express (fail with the field named). */}}
{{- define "firm.validateValues" -}}
{{- if and (not .Values.minio.enabled) (not .Values.objectStore.endpoint) -}}
{{- fail "objectStore.endpoint: required when minio.enabled is false (host:port of your S3 endpoint)" -}}
{{- end -}}
{{- if and (not .Values.minio.enabled) (not .Values.objectStore.existingSecret) -}}
{{- fail "objectStore.existingSecret: required when minio.enabled is false (a Secret with keys access-key and secret-key)" -}}
{{- end -}}
{{- range $name, $p := .Values.nodePools -}}
{{- if ne (empty $p.acceleratorLabel) (empty $p.acceleratorType) -}}
{{- fail (printf "nodePools.%s: acceleratorLabel and acceleratorType go together (both or neither)" $name) -}}
{{- end -}}
{{- end -}}
{{- range $field, $name := dict "pipelines.cpuPool" .Values.pipelines.cpuPool "pipelines.gpuPool" .Values.pipelines.gpuPool -}}
{{- $_ := include "firm.pool" (dict "root" $ "pool" $name "field" $field) -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $i, $m := .Values.rewardService.models -}}
{{- if hasKey $seen $m.name -}}
{{- fail (printf "rewardService.models[%d].name: %q is used twice" $i $m.name) -}}
{{- end -}}
{{- $_ := set $seen $m.name true -}}
{{- $pool := include "firm.pool" (dict "root" $ "pool" $m.pool "field" (printf "rewardService.models[%d].pool" $i)) | fromYaml -}}
{{- $gpus := int ($m.gpus | default 0) -}}
{{- if gt $gpus (int ($pool.gpusPerNode | default 0)) -}}
{{- fail (printf "rewardService.models[%d].gpus: %d GPUs per pod, but nodes of pool %q have %d" $i $gpus $m.pool (int ($pool.gpusPerNode | default 0))) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Namespaces where FIRM's pipeline steps run (pipelines.namespaces; default: the release namespace), as a JSON list.
Standalone Kubeflow Pipelines runs pipeline pods in its own namespace, multi-user Kubeflow in the user's profile
namespace; a pod can only use ServiceAccounts, ConfigMaps and Secrets of its own namespace.
*/}}
{{- define "firm.pipeline.namespaces" -}}
{{- toJson (uniq (.Values.pipelines.namespaces | default (list .Release.Namespace))) -}}
{{- end -}}

{{/* Namespaces that get FIRM's per-namespace objects (settings, trainer account, object-store Secret): the release
namespace and every pipeline namespace, as a JSON list. */}}
{{- define "firm.namespaces" -}}
{{- toJson (uniq (prepend (include "firm.pipeline.namespaces" . | fromJsonArray) .Release.Namespace)) -}}
{{- end -}}

{{/*
Batch pods (Jobs) opt out of Istio's sidecar: an injected istio-proxy keeps running after the job's container
exits, so the pod never completes. The pod label is what istiod's injector checks first ("The label is the new
API; if both are present we prefer the label": injectRequired in istio/istio pkg/kube/inject/inject.go, commit
00af2c5549d5b4b48b3c32fd2d3ceca59ea79f5b); the annotation covers older Istio releases.
*/}}
{{- define "firm.batchPod.labels" -}}
sidecar.istio.io/inject: "false"
{{- end -}}
{{- define "firm.batchPod.annotations" -}}
sidecar.istio.io/inject: "false"
{{- end -}}

{{/* Add an ephemeral-storage request to a resources map unless it names one. Call with (dict "resources" <map>
"default" <quantity>). */}}
{{- define "firm.resources.withEphemeral" -}}
{{- $res := deepCopy (.resources | default dict) -}}
{{- $req := $res.requests | default dict -}}
{{- if not (hasKey $req "ephemeral-storage") -}}
{{- $_ := set $req "ephemeral-storage" .default -}}
{{- end -}}
{{- $_ := set $res "requests" $req -}}
{{- toYaml $res -}}
{{- end -}}

{{/*
The reward Deployment as it runs in the cluster ({} under `helm template` / --dry-run=client, which cannot look
up). Call with (dict "root" $ "name" <Deployment name>).
*/}}
{{- define "firm.reward.live" -}}
{{- toJson (lookup "apps/v1" "Deployment" .root.Release.Namespace .name | default dict) -}}
{{- end -}}

{{/*
The model repository a reward Deployment serves. A pipeline deploy step rolls out a new repository by patching the
pod-template annotation firm.dev/model-repository; the chart records what the values said in
firm.dev/chart-repository. On upgrade: when the values' repository is still what the chart last rendered, the
live (deployed) repository is kept, so `helm upgrade` never rolls back a deploy; when the values name a new
repository, that one is rolled out. Call with (dict "root" $ "name" <Deployment name> "model" <model>).
*/}}
{{- define "firm.reward.repository" -}}
{{- $want := .model.repository | default "" -}}
{{- $live := include "firm.reward.live" (dict "root" .root "name" .name) | fromJson -}}
{{- $ann := dict -}}
{{- if and $live $live.spec $live.spec.template $live.spec.template.metadata -}}
{{- $ann = $live.spec.template.metadata.annotations | default dict -}}
{{- end -}}
{{- $deployed := get $ann "firm.dev/model-repository" -}}
{{- if and $deployed (hasKey $ann "firm.dev/chart-repository") (eq (get $ann "firm.dev/chart-repository") $want) -}}
{{- $deployed -}}
{{- else -}}
{{- $want -}}
{{- end -}}
{{- end -}}
