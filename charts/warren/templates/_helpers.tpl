{{/*
Expand the name of the chart.
*/}}
{{- define "warren.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name. We truncate at 63 chars because
some Kubernetes name fields are limited to this (by the DNS naming spec). If
the release name contains the chart name it is used as the full name.
*/}}
{{- define "warren.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "warren.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "warren.labels" -}}
helm.sh/chart: {{ include "warren.chart" . }}
{{ include "warren.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "warren.selectorLabels" -}}
app.kubernetes.io/name: {{ include "warren.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use.
*/}}
{{- define "warren.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "warren.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository, then @digest or :tag (appVersion by default).
*/}}
{{- define "warren.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The Secret holding the broker URL, and its key.
*/}}
{{- define "warren.brokerSecretName" -}}
{{- if .Values.broker.existingSecret }}
{{- .Values.broker.existingSecret }}
{{- else }}
{{- printf "%s-broker" (include "warren.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "warren.brokerSecretKey" -}}
{{- if .Values.broker.existingSecret }}
{{- .Values.broker.existingSecretKey }}
{{- else -}}
url
{{- end }}
{{- end }}

{{/*
The key of the broker Secret that KEDA reads the URL from.
*/}}
{{- define "warren.kedaHostKey" -}}
{{- if .Values.keda.hostKey }}
{{- .Values.keda.hostKey }}
{{- else if .Values.broker.existingSecret }}
{{- .Values.broker.existingSecretKey }}
{{- else -}}
keda-host
{{- end }}
{{- end }}

{{/*
The name of the metrics Service, which is also the Prometheus job label the
ServiceMonitor gives the series.
*/}}
{{- define "warren.metricsServiceName" -}}
{{- printf "%s-metrics" (include "warren.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
warren.durationSeconds turns a Go duration ("25s", "1m30s", "1.5s",
"500ms", "2h") into whole seconds, rounded up: a bound that must cover a
call is never rounded down.
*/}}
{{- define "warren.durationSeconds" -}}
{{- $total := 0.0 }}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|h|m|s)" . -1 }}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" $part | float64 }}
{{- $unit := trimPrefix (regexFind "^[0-9]+(\\.[0-9]+)?" $part) $part }}
{{- $scale := get (dict "h" 3600.0 "m" 60.0 "s" 1.0 "ms" 0.001 "us" 0.000001 "µs" 0.000001 "ns" 0.000000001) $unit }}
{{- $total = addf $total (mulf $n $scale) }}
{{- end }}
{{- ceil $total | int }}
{{- end }}

{{/*
warren.drainBoundSeconds is how much longer than WARREN_SHUTDOWN_TIMEOUT
warren may take to exit after SIGTERM: worker.DrainBound (the 6s a
cancelled handler has to return, an exec command's SIGTERM-to-SIGKILL among
them, and the bounded broker calls on the way out: 9s) and then the health
server's shutdown (5s), plus a second. The one place the chart states it;
cmd/warren's TestChartGraceCoversTheExit checks it against the daemon.
*/}}
{{- define "warren.drainBoundSeconds" -}}
15
{{- end }}

{{/*
warren.shutdownTimeout is WARREN_SHUTDOWN_TIMEOUT. With KEDA it is at least
handler.timeout: KEDA stops pods whenever the queue says so, and a call
that started just before SIGTERM must end within the shutdown timeout, or
it is cut and its message handed back (and, scaled to zero, waits for the
next wake-up: KEDA issue 356).
*/}}
{{- define "warren.shutdownTimeout" -}}
{{- $handler := include "warren.durationSeconds" .Values.handler.timeout | atoi }}
{{- if and .Values.keda.enabled (gt $handler (include "warren.durationSeconds" .Values.shutdownTimeout | atoi)) }}
{{- printf "%ds" $handler }}
{{- else }}
{{- .Values.shutdownTimeout }}
{{- end }}
{{- end }}

{{/*
The pod's terminationGracePeriodSeconds: the longest warren takes to exit
(the shutdown timeout plus warren.drainBoundSeconds) and
terminationGraceMarginSeconds on top, so the kubelet never kills warren
while it drains.
*/}}
{{- define "warren.terminationGracePeriodSeconds" -}}
{{- add (include "warren.durationSeconds" (include "warren.shutdownTimeout" .) | atoi) (include "warren.drainBoundSeconds" . | atoi) .Values.terminationGraceMarginSeconds }}
{{- end }}

{{/*
warren.kedaManagementUrl is the management API's URL KEDA reads with
protocol http: keda.managementUrl, or the first node of broker.url with
amqp(s) turned into http(s), the port into the management listener's
default (15672, 15671 with TLS), the same user, password and vhost.
*/}}
{{- define "warren.kedaManagementUrl" -}}
{{- if .Values.keda.managementUrl }}
{{- .Values.keda.managementUrl }}
{{- else }}
{{- $amqp := splitList "," .Values.broker.url | first | trim }}
{{- $re := "^amqp(s?)://([^/]*@)?(\\[[^\\]]*\\]|[^/:@]+)(:[0-9]+)?(/.*)?$" }}
{{- if not (regexMatch $re $amqp) }}
{{- fail "keda.protocol http needs keda.managementUrl (http://user:password@host:15672/vhost): it cannot be derived from broker.url" }}
{{- end }}
{{- $port := ternary "15671" "15672" (hasPrefix "amqps:" $amqp) }}
{{- $url := regexReplaceAll $re $amqp (printf "http${1}://${2}${3}:%s${5}" $port) }}
{{- if not (regexMatch "^https?://[^/]*/" $url) }}{{ $url = printf "%s/" $url }}{{ end }}
{{- $url }}
{{- end }}
{{- end }}

{{/*
warren.validate stops the install with a message for what the schema cannot
say: rules across several values.
*/}}
{{- define "warren.validate" -}}
{{- if and .Values.broker.url .Values.broker.existingSecret }}
{{- fail "set broker.url or broker.existingSecret, not both" }}
{{- end }}
{{- if not (or .Values.broker.url .Values.broker.existingSecret) }}
{{- fail "broker.url or broker.existingSecret is required: --set-string broker.url=amqp://user:password@host:5672/" }}
{{- end }}
{{- if eq (include "warren.durationSeconds" .Values.shutdownTimeout) "0" }}
{{- fail "shutdownTimeout must be more than 0s: warren refuses WARREN_SHUTDOWN_TIMEOUT=0s" }}
{{- end }}
{{- $limit := .Values.maxPrefetch }}
{{- $limitName := "maxPrefetch" }}
{{- if ne (toString .Values.prefetch) "" }}
{{- $limit = .Values.prefetch }}
{{- $limitName = "prefetch" }}
{{- end }}
{{- if gt (int .Values.concurrency) (int $limit) }}
{{- fail (printf "concurrency (%v) must be at most %s (%v)" .Values.concurrency $limitName $limit) }}
{{- end }}
{{- if and .Values.reply.onDead (not .Values.reply.enabled) }}
{{- fail "reply.onDead needs reply.enabled: with replies off warren sends none, error replies included" }}
{{- end }}
{{- if and (eq .Values.handler.type "http") (not .Values.handler.httpUrl) }}
{{- fail "handler.type http needs handler.httpUrl" }}
{{- end }}
{{- if and (eq .Values.handler.type "exec") (not .Values.handler.execCommand) }}
{{- fail "handler.type exec needs handler.execCommand" }}
{{- end }}
{{- if and (gt (int .Values.queue.deliveryLimit) 0) (ne .Values.queue.type "quorum") }}
{{- fail "queue.deliveryLimit needs queue.type quorum" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret" }}
{{- end }}
{{- if ne (empty .Values.tls.certKey) (empty .Values.tls.keyKey) }}
{{- fail "set tls.certKey and tls.keyKey together, or neither" }}
{{- end }}
{{- if and .Values.keda.enabled .Values.autoscaling.enabled }}
{{- fail "keda.enabled and autoscaling.enabled both scale the Deployment: choose one" }}
{{- end }}
{{- if and .Values.keda.enabled (eq .Values.keda.protocol "http") .Values.broker.existingSecret (not .Values.keda.hostKey) }}
{{- fail "keda.protocol http with broker.existingSecret needs keda.hostKey: the key of that Secret holding the management API's URL (http://user:password@host:15672/vhost); or keda.protocol=amqp, which counts ready messages only (see Scaling in the chart's README)" }}
{{- end }}
{{- if and .Values.keda.managementUrl (or (ne .Values.keda.protocol "http") .Values.broker.existingSecret) }}
{{- fail "keda.managementUrl is read with keda.protocol http and the chart's own Secret only (with broker.existingSecret, put the URL in that Secret and name its key in keda.hostKey)" }}
{{- end }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- fail "keda.minReplicaCount must be at most keda.maxReplicaCount" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must be at most autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
