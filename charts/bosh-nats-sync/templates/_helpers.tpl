{{/* Names, labels and the file layout shared by both containers. */}}

{{- define "bosh-nats-sync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bosh-nats-sync.fullname" -}}
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

{{- define "bosh-nats-sync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bosh-nats-sync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bosh-nats-sync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bosh-nats-sync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The file layout. Every path below is used by both configurations, so the sidecar always
writes the file nats-server includes and signals the pid nats-server writes.
*/}}
{{- define "bosh-nats-sync.natsConfDir" -}}/etc/nats{{- end }}
{{- define "bosh-nats-sync.natsTlsDir" -}}/etc/nats-tls{{- end }}
{{- define "bosh-nats-sync.syncConfDir" -}}/etc/bosh-nats-sync{{- end }}
{{- define "bosh-nats-sync.stateDir" -}}{{ .Values.state.mountPath | trimSuffix "/" }}{{- end }}
{{- define "bosh-nats-sync.authFile" -}}{{ include "bosh-nats-sync.stateDir" . }}/auth.json{{- end }}
{{- define "bosh-nats-sync.pidFile" -}}{{ include "bosh-nats-sync.stateDir" . }}/nats.pid{{- end }}

{{/*
nats-server (2.9.10, 2.14.5, 2.15.1) joins an include path to the directory of the main configuration
file even when the include is absolute ("/a/b" becomes "<conf dir>/a/b"), so the auth file is
included by a path relative to the configuration directory: one "../" per level of that
directory, then the absolute path without its leading slash.
*/}}
{{- define "bosh-nats-sync.authInclude" -}}
{{- $depth := len (splitList "/" (trimAll "/" (include "bosh-nats-sync.natsConfDir" .))) -}}
{{ repeat $depth "../" }}{{ trimPrefix "/" (include "bosh-nats-sync.authFile" .) }}
{{- end }}

{{/*
Callout mode's files. The issuer Secret is mounted only into the init step that copies the
seed: a Secret volume's files are group-readable under the pod's fsGroup whatever defaultMode
says (kubernetes/kubernetes#57923), and bosh-nats-sync refuses a seed file group or others
may read. The copy, owner-only, lives in a memory emptyDir (keysDir) that only the init steps
and the sidecar mount.
*/}}
{{- define "bosh-nats-sync.callout" -}}{{ if eq .Values.admission "callout" }}true{{ end }}{{- end }}
{{- define "bosh-nats-sync.issuerSourceDir" -}}/etc/bosh-nats-sync-issuer{{- end }}
{{- define "bosh-nats-sync.keysDir" -}}/var/run/bosh-nats-sync-keys{{- end }}
{{- define "bosh-nats-sync.issuerSeedFile" -}}{{ include "bosh-nats-sync.keysDir" . }}/issuer.seed{{- end }}
{{- define "bosh-nats-sync.calloutTlsDir" -}}/etc/bosh-nats-sync-callout-tls{{- end }}
{{- define "bosh-nats-sync.natsCaDir" -}}/etc/bosh-nats-sync-nats-ca{{- end }}

{{- define "bosh-nats-sync.issuerSecretName" -}}
{{- default (printf "%s-callout-issuer" (include "bosh-nats-sync.fullname" .)) .Values.callout.issuer.existingSecret }}
{{- end }}

{{- define "bosh-nats-sync.calloutTlsSecretName" -}}
{{- default (printf "%s-callout-tls" (include "bosh-nats-sync.fullname" .)) .Values.callout.tls.secretName }}
{{- end }}

{{- define "bosh-nats-sync.secretName" -}}
{{- if .Values.director.existingSecret }}
{{- .Values.director.existingSecret }}
{{- else }}
{{- include "bosh-nats-sync.fullname" . }}-director
{{- end }}
{{- end }}

{{- define "bosh-nats-sync.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "bosh-nats-sync.fullname" .)) .Values.nats.tls.secretName }}
{{- end }}

{{- define "bosh-nats-sync.image" -}}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}

{{/* The sidecar's configuration file (§1.2 keys), as a dict for toYaml. */}}
{{- define "bosh-nats-sync.syncConfig" -}}
{{- $d := .Values.director }}
{{- $conf := include "bosh-nats-sync.syncConfDir" . }}
{{- $director := dict "url" $d.url "connection_wait_timeout" $d.connectionWaitTimeout "max_concurrency" $d.maxConcurrency "request_timeout" $d.requestTimeout }}
{{- if $d.user }}{{ $_ := set $director "user" $d.user }}{{ end }}
{{- if $d.clientId }}{{ $_ := set $director "client_id" $d.clientId }}{{ end }}
{{- if $d.caCert }}{{ $_ := set $director "director_ca_cert" (printf "%s/director-ca.crt" $conf) }}{{ end }}
{{- if $d.uaaCaCert }}{{ $_ := set $director "uaa_ca_cert" (printf "%s/uaa-ca.crt" $conf) }}{{ end }}
{{- if $d.uaaPublicKey }}{{ $_ := set $director "uaa_public_key" $d.uaaPublicKey }}{{ end }}
{{- if .Values.subjects.director }}{{ $_ := set $director "director_subject_file" (printf "%s/director-subject" $conf) }}{{ end }}
{{- if .Values.subjects.healthMonitor }}{{ $_ := set $director "hm_subject_file" (printf "%s/hm-subject" $conf) }}{{ end }}
{{- $s := .Values.sync }}
{{- if and (gt (float64 $s.watchInterval) 0.0) (lt (float64 $s.resyncInterval) (float64 $s.watchInterval)) }}
{{- fail (printf "sync.resyncInterval (%v) must not be shorter than sync.watchInterval (%v): full passes would run more often than the event log is read; raise it, or set sync.watchInterval to 0" $s.resyncInterval $s.watchInterval) }}
{{- end }}
{{- $config := dict
  "director" $director
  "intervals" (dict "poll_user_sync" $s.pollInterval "backoff_min" $s.backoffMin "backoff_max" $s.backoffMax "pass_timeout" $s.passTimeout "watch" $s.watchInterval "resync" $s.resyncInterval)
  "nats" (dict
    "config_file_path" (include "bosh-nats-sync.authFile" .)
    "nats_server_pid_file" (include "bosh-nats-sync.pidFile" .)
    "monitoring_url" (printf "http://127.0.0.1:%d" (int .Values.nats.monitoringPort))
    "reload_verify_timeout" $s.reloadVerifyTimeout)
  "damping" (dict "enabled" $s.damping.enabled "max_removal_fraction" $s.damping.maxRemovalFraction "min_removals" $s.damping.minRemovals "confirmations" $s.damping.confirmations)
  "log" (dict "format" $s.log.format "level" $s.log.level)
  "http" (dict "enabled" true "listen" (printf "0.0.0.0:%d" (int $s.httpPort)))
}}
{{- if include "bosh-nats-sync.callout" . }}
{{- $c := .Values.callout }}
{{- $_ := set $config.nats "admission" "callout" }}
{{- $_ := set $config.nats "callout" (dict
  "url" (printf "tls://%s:%d" (default "127.0.0.1" $c.serverName) (int .Values.nats.port))
  "cert_file" (printf "%s/tls.crt" (include "bosh-nats-sync.calloutTlsDir" .))
  "key_file" (printf "%s/tls.key" (include "bosh-nats-sync.calloutTlsDir" .))
  "ca_file" (printf "%s/ca.crt" (include "bosh-nats-sync.natsCaDir" .))
  "issuer_seed_file" (include "bosh-nats-sync.issuerSeedFile" .)
  "user_ttl" $c.userTtl
  "timeout" $c.timeout) }}
{{- else if .Values.cluster.enabled }}
{{- /* A pod of the cluster is ready once a pass has read the director's agents: the Service
would otherwise send agents to a server that holds the director's and health monitor's users
only, and it would refuse them (docs/contract.md §7). */}}
{{- $_ := set $config.http "ready_after_full_pass" true }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
The cluster (cluster.enabled): a StatefulSet named <fullname> behind the headless Service
<fullname>-headless, so pod <fullname>-<i> has the stable DNS name
<fullname>-<i>.<fullname>-headless.<namespace>.svc.<clusterDomain>.
*/}}
{{- define "bosh-nats-sync.headlessName" -}}
{{- include "bosh-nats-sync.fullname" . | trunc 54 | trimSuffix "-" }}-headless
{{- end }}

{{- define "bosh-nats-sync.clusterName" -}}
{{- default (include "bosh-nats-sync.fullname" .) .Values.cluster.name }}
{{- end }}

{{/* The route to every peer (itself included: nats-server ignores a route to itself), one per line:
the nats container's NATS_ROUTE_<i>, which holds the URL (and the credentials), see routeEnv. */}}
{{- define "bosh-nats-sync.clusterRoutes" -}}
{{- range $i := until (int .Values.cluster.replicas) }}
{{ printf "$NATS_ROUTE_%d" $i }}
{{- end }}
{{- end }}

{{/* Spread the cluster's pods over nodes: losing a node then loses one server, not the cluster. */}}
{{- define "bosh-nats-sync.clusterAntiAffinity" -}}
{{- $term := dict "topologyKey" .Values.cluster.topologyKey "labelSelector" (dict "matchLabels" (include "bosh-nats-sync.selectorLabels" . | fromYaml)) }}
podAntiAffinity:
{{- if eq .Values.cluster.podAntiAffinity "required" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    {{- list $term | toYaml | nindent 4 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    {{- list (dict "weight" 100 "podAffinityTerm" $term) | toYaml | nindent 4 }}
{{- end }}
{{- end }}

{{/*
Route security (cluster.enabled). Routes are a trust boundary: a server that completes a route
reads every message and publishes as anyone. Every route authenticates with a user and password
(from cluster.authorization.existingSecret, or from the Secret the chart makes), with mutual
TLS (cluster.tls.secretName), or both; no values leave the routes open.
*/}}
{{- define "bosh-nats-sync.routeTls" -}}
{{- if .Values.cluster.tls.secretName }}true{{ end }}
{{- end }}

{{/* Whether routes carry a user and password: always, unless route TLS is named without an existing Secret. */}}
{{- define "bosh-nats-sync.routeAuth" -}}
{{- if or (not .Values.cluster.tls.secretName) .Values.cluster.authorization.existingSecret }}true{{ end }}
{{- end }}

{{/* Whether the chart makes the route credentials' Secret. */}}
{{- define "bosh-nats-sync.routeSecretCreated" -}}
{{- if and .Values.cluster.enabled (include "bosh-nats-sync.routeAuth" .) (not .Values.cluster.authorization.existingSecret) }}true{{ end }}
{{- end }}

{{- define "bosh-nats-sync.routeSecretName" -}}
{{- default (printf "%s-routes" (include "bosh-nats-sync.fullname" .)) .Values.cluster.authorization.existingSecret }}
{{- end }}

{{- define "bosh-nats-sync.clusterTlsDir" -}}/etc/nats-cluster-tls{{- end }}

{{/*
The nats container's environment in cluster mode. ROUTE_USER and ROUTE_PASSWORD come from the
Secret; the NATS_* variables are what nats.conf references ($NATS_ROUTE_USER, …), built by
Kubernetes' $(VAR) expansion. nats-server parses an environment value as a configuration value,
so each is quoted: a password of digits stays a string. Each route URL carries the credentials
(nats-server presents a route URL's user and password when it dials a peer).
*/}}
{{- define "bosh-nats-sync.routeEnv" -}}
{{- $auth := include "bosh-nats-sync.routeAuth" . }}
{{- if $auth }}
- name: ROUTE_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "bosh-nats-sync.routeSecretName" . }}
      key: {{ .Values.cluster.authorization.userKey }}
- name: ROUTE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "bosh-nats-sync.routeSecretName" . }}
      key: {{ .Values.cluster.authorization.passwordKey }}
- name: NATS_ROUTE_USER
  value: '"$(ROUTE_USER)"'
- name: NATS_ROUTE_PASSWORD
  value: '"$(ROUTE_PASSWORD)"'
{{- end }}
{{- $sts := include "bosh-nats-sync.fullname" . }}
{{- $svc := include "bosh-nats-sync.headlessName" . }}
{{- range $i := until (int .Values.cluster.replicas) }}
- name: {{ printf "NATS_ROUTE_%d" $i }}
  value: {{ printf "\"nats://%s%s-%d.%s.%s.svc.%s:%d\"" (ternary "$(ROUTE_USER):$(ROUTE_PASSWORD)@" "" (eq $auth "true")) $sts $i $svc $.Release.Namespace $.Values.clusterDomain (int $.Values.cluster.port) | squote }}
{{- end }}
{{- end }}

{{/* The PodDisruptionBudget's quorum: a majority of the servers stays up. */}}
{{- define "bosh-nats-sync.quorum" -}}
{{- add (div (int .Values.cluster.replicas) 2) 1 }}
{{- end }}
