{{/* Names and labels shared by every template of the chart. */}}

{{- define "atman.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-atman, or the release name alone when it already contains the chart name. */}}
{{- define "atman.fullname" -}}
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

{{- define "atman.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atman.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "atman.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "atman.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "atman.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "atman.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "atman.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding tls.crt / tls.key / ca.crt. */}}
{{- define "atman.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "atman.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/* The Secret holding the bearer tokens (key: tokens). */}}
{{- define "atman.authSecretName" -}}
{{- default (printf "%s-auth" (include "atman.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* One health probe: native gRPC without TLS, atman-health over TLS otherwise. */}}
{{- define "atman.probe" -}}
{{- $root := .root -}}
{{- if $root.Values.tls.enabled }}
exec:
  command:
    - atman-health
    - --addr=127.0.0.1:{{ $root.Values.ports.grpc }}
    - --service={{ .service }}
    - --timeout-ms={{ mul .cfg.timeoutSeconds 1000 }}
    - --tls
    - --tls-ca=/etc/atman/tls/ca.crt
    - --tls-server-name={{ default (printf "%s.%s.svc" (include "atman.fullname" $root) $root.Release.Namespace) $root.Values.tls.serverName }}
    {{- if $root.Values.tls.mutual }}
    - --tls-cert=/etc/atman/tls/tls.crt
    - --tls-key=/etc/atman/tls/tls.key
    {{- end }}
{{- else }}
grpc:
  port: {{ $root.Values.ports.grpc }}
  service: {{ .service | quote }}
{{- end }}
periodSeconds: {{ .cfg.periodSeconds }}
failureThreshold: {{ .cfg.failureThreshold }}
timeoutSeconds: {{ .cfg.timeoutSeconds }}
{{- end -}}


{{/* --devices: server.devices, or derived from gpu.count when empty ("cpu", "cuda:0,...,cuda:N-1").
A list that disagrees with gpu.count fails the render: a pod holding GPUs it does not use, or
naming devices it was not given, would serve on the CPU or crash-loop. */}}
{{- define "atman.devices" -}}
{{- $count := int .Values.gpu.count -}}
{{- $devices := .Values.server.devices -}}
{{- if not $devices -}}
{{- if eq $count 0 -}}
{{- $devices = "cpu" -}}
{{- else -}}
{{- $names := list -}}
{{- range $i := until $count -}}
{{- $names = append $names (printf "cuda:%d" $i) -}}
{{- end -}}
{{- $devices = join "," $names -}}
{{- end -}}
{{- end -}}
{{- if and (eq $devices "cpu") (gt $count 0) -}}
{{- fail (printf "server.devices=cpu with gpu.count=%d: the pod would hold GPUs and serve on the CPU (leave server.devices empty to derive it)" $count) -}}
{{- end -}}
{{- if ne $devices "cpu" -}}
{{- $list := splitList "," $devices -}}
{{- if ne (len $list) $count -}}
{{- fail (printf "server.devices=%s names %d CUDA device(s) but gpu.count=%d: give one device per GPU (cuda:0 to cuda:%d), or leave server.devices empty" $devices (len $list) $count (sub $count 1)) -}}
{{- end -}}
{{- range $list -}}
{{- if ge (int (trimPrefix "cuda:" .)) $count -}}
{{- fail (printf "server.devices: %s is past the %d GPU(s) of gpu.count (the container sees cuda:0 to cuda:%d)" . $count (sub $count 1)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $devices -}}
{{- end -}}

{{/* CPU mode: the cores the pod asked for, which the server's --cpu-cores takes to size its
batcher workers and their threads: the CPU limit, else the request, rounded up ("" on GPUs, or
when neither is set: the server then detects its cores, the cgroup limit included). */}}
{{- define "atman.cpuCores" -}}
{{- if eq (include "atman.devices" .) "cpu" -}}
{{- $n := 0 -}}
{{- $cpu := "" -}}
{{- with .Values.resources.limits }}{{ with .cpu }}{{ $cpu = toString . }}{{ end }}{{ end -}}
{{- if not $cpu }}{{ with .Values.resources.requests }}{{ with .cpu }}{{ $cpu = toString . }}{{ end }}{{ end }}{{ end -}}
{{- if $cpu -}}
{{- if hasSuffix "m" $cpu -}}
{{- $n = int (ceil (divf (float64 (trimSuffix "m" $cpu)) 1000)) -}}
{{- else -}}
{{- $n = int (ceil (float64 $cpu)) -}}
{{- end -}}
{{- end -}}
{{- if gt $n 0 }}{{ $n }}{{ end -}}
{{- end -}}
{{- end -}}

{{/*
The verify-model init container's script (POSIX sh, sha256sum): checks $MODEL_DIR against
$MODEL_SHA256SUMS, `sha256sum` output ("<64 hex digits>  <file relative to the model folder>"
per line; blank lines and # comments skipped). Exit 1, naming every file missing or different
and every malformed line; exit 0 after "model manifest: N file(s) verified".
*/}}
{{- define "atman.verifyModelScript" -}}
set -u
cd "$MODEL_DIR" || { echo "model manifest: cannot enter $MODEL_DIR"; exit 1; }
bad=0; checked=0; line=0
while IFS= read -r entry; do
  line=$((line + 1))
  case "$entry" in ''|'#'*) continue ;; esac
  sum=${entry%% *}; name=${entry#* }; name=${name# }; name=${name#\*}
  case "$sum" in *[!0-9a-f]*) sum= ;; esac
  if [ ${#sum} -ne 64 ] || [ -z "$name" ] || [ "$name" = "$entry" ]; then
    echo "model manifest: line $line: not '<64 lowercase hex digits>  <file>': $entry"; bad=1; continue
  fi
  case "/$name/" in */../*) echo "model manifest: line $line: $name leaves the model folder"; bad=1; continue ;; esac
  if [ ! -f "$name" ]; then echo "model manifest: $name: missing"; bad=1; continue; fi
  actual=$(sha256sum "$name") || { echo "model manifest: $name: cannot be read"; bad=1; continue; }
  actual=${actual%% *}
  if [ "$actual" != "$sum" ]; then
    echo "model manifest: $name: sha256 $actual, expected $sum"; bad=1; continue
  fi
  checked=$((checked + 1))
done <<MANIFEST
$MODEL_SHA256SUMS
MANIFEST
if [ "$bad" -ne 0 ]; then echo "model manifest: mismatch in $MODEL_DIR; the pod does not start"; exit 1; fi
if [ "$checked" -eq 0 ]; then echo "model manifest: lists no file"; exit 1; fi
echo "model manifest: $checked file(s) verified"
{{- end }}
