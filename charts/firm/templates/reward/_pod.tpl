{{- /*
The reward pods' shared parts — the reward Deployment and its candidate (the safe rollout's bench) run the same
tritonserver with the same security, placement, resources and volumes; only the init container differs. Call with
(dict "root" $ "model" <model> "pool" <pool> "gpus" <int>); the output is indented for a pod template's spec.
*/}}
{{- define "firm.reward.podHead" -}}
{{- $root := .root }}{{ $pool := .pool }}
      serviceAccountName: {{ include "firm.workload.serviceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $root.Values.rewardService.terminationGracePeriodSeconds }}
      {{- with $root.Values.rewardService.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with include "firm.imagePullSecrets" $root | trim }}{{ . | nindent 6 }}{{ end }}
      {{- include "firm.podSecurityContext" $root | nindent 6 }}
      {{- with include "firm.pool.placement" $pool | trim }}{{ . | nindent 6 }}{{ end }}
      {{- with $root.Values.rewardService.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{- define "firm.reward.podTail" -}}
{{- $root := .root }}{{ $model := .model }}{{ $pool := .pool }}{{ $gpus := .gpus }}
{{- $ports := $root.Values.rewardService.service.ports }}
      containers:
        - name: triton
          image: {{ include "firm.image.triton" $root }}
          imagePullPolicy: {{ $root.Values.images.pullPolicy }}
          # args, not command: NVIDIA's Triton images start through their entrypoint
          # (/opt/nvidia/nvidia_entrypoint.sh), which sets up the environment and then runs these arguments.
          args:
            - tritonserver
            - --model-repository=/models/repo
            - --http-port={{ $ports.http }}
            - --grpc-port={{ $ports.grpc }}
            - --metrics-port={{ $ports.metrics }}
            - --allow-metrics=true
            - --allow-gpu-metrics={{ ternary "true" "false" (gt $gpus 0) }}
            - --model-control-mode=none
            - --strict-readiness=true
            - --exit-on-error=true
            - --log-verbose={{ $root.Values.rewardService.logVerbose }}
            {{- range $root.Values.rewardService.extraArgs }}
            - {{ . | quote }}
            {{- end }}
          {{- include "firm.settings.envFrom" $root | nindent 10 }}
          env:
            - name: HOME
              value: /tmp
            - name: FIRM_HOME
              value: /tmp/.firm
            - name: HF_HOME
              value: /tmp/.cache/huggingface
            - name: PYTHONUNBUFFERED
              value: "1"
            {{- include "firm.objectStore.env" $root | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ $ports.http }}
              protocol: TCP
            - name: grpc
              containerPort: {{ $ports.grpc }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $ports.metrics }}
              protocol: TCP
          {{- with $root.Values.rewardService.startupProbe }}
          {{- if .enabled }}
          startupProbe:
            httpGet:
              path: /v2/health/ready
              port: http
            initialDelaySeconds: {{ .initialDelaySeconds }}
            periodSeconds: {{ .periodSeconds }}
            timeoutSeconds: {{ .timeoutSeconds }}
            failureThreshold: {{ .failureThreshold }}
          {{- end }}
          {{- end }}
          {{- with $root.Values.rewardService.readinessProbe }}
          {{- if .enabled }}
          readinessProbe:
            httpGet:
              path: /v2/health/ready
              port: http
            periodSeconds: {{ .periodSeconds }}
            timeoutSeconds: {{ .timeoutSeconds }}
            failureThreshold: {{ .failureThreshold }}
          {{- end }}
          {{- end }}
          {{- with $root.Values.rewardService.livenessProbe }}
          {{- if .enabled }}
          livenessProbe:
            httpGet:
              path: /v2/health/live
              port: http
            periodSeconds: {{ .periodSeconds }}
            timeoutSeconds: {{ .timeoutSeconds }}
            failureThreshold: {{ .failureThreshold }}
          {{- end }}
          {{- end }}
          resources:
            requests:
              {{- $requests := deepCopy ($model.resources.requests | default dict) }}
              {{- if not (hasKey $requests "ephemeral-storage") }}
              {{- $_ := set $requests "ephemeral-storage" $root.Values.rewardService.ephemeralStorage }}
              {{- end }}
              {{- toYaml $requests | nindent 14 }}
              {{- if gt $gpus 0 }}
              {{ $pool.gpuResource | default "nvidia.com/gpu" }}: {{ $gpus | quote }}
              {{- end }}
            limits:
              {{- toYaml $model.resources.limits | nindent 14 }}
              {{- if gt $gpus 0 }}
              {{ $pool.gpuResource | default "nvidia.com/gpu" }}: {{ $gpus | quote }}
              {{- end }}
          {{- include "firm.containerSecurityContext" $root | nindent 10 }}
          volumeMounts:
            - name: models
              mountPath: /models
              readOnly: true
            - name: dshm
              mountPath: /dev/shm
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: models
          emptyDir:
            sizeLimit: {{ $root.Values.rewardService.repositorySizeLimit | quote }}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $root.Values.rewardService.shmSize | quote }}
        - name: tmp
          emptyDir:
            sizeLimit: 8Gi
{{- end -}}
