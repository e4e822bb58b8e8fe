{{/*
The pod: nats-server, the bosh-nats-sync sidecar and the placeholder init step. One
definition for the single pod's Deployment and the cluster's StatefulSet, so every pod of
either is put together the same way: its own auth-file volume, its own sidecar with its
probes, its own reload across the shared process namespace.
*/}}
{{- define "bosh-nats-sync.podTemplate" -}}
{{- $routeAuth := and .Values.cluster.enabled (include "bosh-nats-sync.routeAuth" .) }}
{{- if .Values.cluster.enabled }}
{{- $ld := .Values.cluster.lameDuck }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int $ld.gracePeriod) (int $ld.duration) | int) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than cluster.lameDuck.gracePeriod + cluster.lameDuck.duration (%d): the kubelet would kill nats-server before lame duck has moved its clients" .Values.terminationGracePeriodSeconds (add (int $ld.gracePeriod) (int $ld.duration))) }}
{{- end }}
{{- end }}
{{- $initImage := dict "repository" (default .Values.nats.image.repository .Values.init.image.repository) "tag" (default .Values.nats.image.tag .Values.init.image.tag) -}}
metadata:
  labels:
    {{- include "bosh-nats-sync.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- if not .Values.director.existingSecret }}
    checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- end }}
    {{- if include "bosh-nats-sync.routeSecretCreated" . }}
    checksum/routes: {{ include (print $.Template.BasePath "/secret-routes.yaml") . | sha256sum }}
    {{- end }}
    {{- if and .Values.metrics.enabled .Values.metrics.podAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ .Values.sync.httpPort | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  # The sidecar reloads nats-server with SIGHUP to the pid in the pid file: it must see
  # nats-server's process. Both containers run as the same UID, so no capability is needed.
  shareProcessNamespace: true
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  {{- if include "bosh-nats-sync.callout" . }}
  {{- with .Values.callout.serverName }}
  # The sidecar reaches its own nats-server under the name the server's certificate holds.
  hostAliases:
    - ip: 127.0.0.1
      hostnames: [{{ . | quote }}]
  {{- end }}
  {{- end }}
  initContainers:
    # nats-server refuses to start while an included file is missing; write BOSH's
    # placeholder (valid NATS syntax, holds no users) unless a file is already there — or the
    # one there holds callout mode's auth_callout block (a state volume kept from callout
    # mode), which nats-server would refuse to drop on a reload. In callout mode the steps
    # after it write the auth file nats-server starts with.
    - name: auth-placeholder
      image: {{ include "bosh-nats-sync.image" $initImage }}
      imagePullPolicy: {{ .Values.init.image.pullPolicy }}
      command:
        - /bin/sh
        - -c
        {{- if $routeAuth }}
        # The route credentials go into URLs and nats.conf values: refuse anything but
        # letters, digits and -._~ here, before nats-server could quote a URL in an error.
        - >-
          case "$ROUTE_USER" in ""|*[!A-Za-z0-9._~-]*) echo "route user (Secret {{ include "bosh-nats-sync.routeSecretName" . }}, key {{ .Values.cluster.authorization.userKey }}): empty or a character other than letters, digits and -._~" >&2; exit 1;; esac;
          case "$ROUTE_PASSWORD" in ""|*[!A-Za-z0-9._~-]*) echo "route password (Secret {{ include "bosh-nats-sync.routeSecretName" . }}, key {{ .Values.cluster.authorization.passwordKey }}): empty or a character other than letters, digits and -._~" >&2; exit 1;; esac;
          if [ ! -e "$AUTH_FILE" ] || grep -q auth_callout "$AUTH_FILE"; then printf "%s\n" "{authorization: {token: f0oBar}}" > "$AUTH_FILE"; fi
        {{- else }}
        - 'if [ ! -e "$AUTH_FILE" ] || grep -q auth_callout "$AUTH_FILE"; then printf "%s\n" "{authorization: {token: f0oBar}}" > "$AUTH_FILE"; fi'
        {{- end }}
      env:
        - name: AUTH_FILE
          value: {{ include "bosh-nats-sync.authFile" . | quote }}
        {{- if $routeAuth }}
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
        {{- end }}
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.init.resources | nindent 8 }}
      volumeMounts:
        - name: state
          mountPath: {{ include "bosh-nats-sync.stateDir" . }}
    {{- if include "bosh-nats-sync.callout" . }}
    # The issuer seed, copied where only this pod's user may read it: mounted from its Secret
    # the file is group-readable under fsGroup whatever defaultMode says, and bosh-nats-sync
    # refuses such a seed file. The copy lives in memory (an emptyDir of medium Memory).
    - name: issuer-seed
      image: {{ include "bosh-nats-sync.image" $initImage }}
      imagePullPolicy: {{ .Values.init.image.pullPolicy }}
      command:
        - /bin/sh
        - -c
        - 'umask 077 && cat "$SEED_SOURCE" > "$SEED_FILE.tmp" && mv -f "$SEED_FILE.tmp" "$SEED_FILE"'
      env:
        - name: SEED_SOURCE
          value: {{ printf "%s/issuer.seed" (include "bosh-nats-sync.issuerSourceDir" .) | quote }}
        - name: SEED_FILE
          value: {{ include "bosh-nats-sync.issuerSeedFile" . | quote }}
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.init.resources | nindent 8 }}
      volumeMounts:
        - name: callout-issuer
          mountPath: {{ include "bosh-nats-sync.issuerSourceDir" . }}
          readOnly: true
        - name: callout-keys
          mountPath: {{ include "bosh-nats-sync.keysDir" . }}
    # The auth file nats-server starts with: the director and the health monitor as static
    # users, the service's user, auth_callout naming the issuer (nats-server cannot take that
    # block on a reload). From the configuration and the certificates alone: no director.
    - name: callout-init
      image: {{ include "bosh-nats-sync.image" (dict "repository" .Values.sync.image.repository "tag" (default .Chart.AppVersion .Values.sync.image.tag)) }}
      imagePullPolicy: {{ .Values.sync.image.pullPolicy }}
      args:
        - -c
        - {{ printf "%s/config.yml" (include "bosh-nats-sync.syncConfDir" .) }}
        - init
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.init.resources | nindent 8 }}
      volumeMounts:
        {{- include "bosh-nats-sync.syncMounts" . | nindent 8 }}
    {{- end }}
  containers:
    - name: nats
      image: {{ include "bosh-nats-sync.image" .Values.nats.image }}
      imagePullPolicy: {{ .Values.nats.image.pullPolicy }}
      command:
        - nats-server
        - --config
        - {{ printf "%s/nats.conf" (include "bosh-nats-sync.natsConfDir" .) }}
      {{- if .Values.cluster.enabled }}
      # What nats.conf's cluster block references: the route credentials and URLs.
      env:
        {{- include "bosh-nats-sync.routeEnv" . | trim | nindent 8 }}
      # Leaving, the server hands its clients to the others over cluster.lameDuck.duration;
      # the kubelet's SIGTERM that follows does not cut lame duck short (nats-server ignores it
      # while in lame duck).
      lifecycle:
        preStop:
          exec:
            command: ["nats-server", "--signal", {{ printf "ldm=%s" (include "bosh-nats-sync.pidFile" .) | quote }}]
      {{- end }}
      ports:
        - name: nats
          containerPort: {{ .Values.nats.port }}
          protocol: TCP
        {{- if .Values.cluster.enabled }}
        # Routes between the cluster's servers, reached through the headless Service.
        - name: cluster
          containerPort: {{ .Values.cluster.port }}
          protocol: TCP
        {{- end }}
      {{- if .Values.nats.probes.enabled }}
      livenessProbe:
        exec:
          command: ["wget", "-q", "-O", "/dev/null", {{ printf "http://127.0.0.1:%d/healthz" (int .Values.nats.monitoringPort) | quote }}]
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 6
      readinessProbe:
        exec:
          command: ["wget", "-q", "-O", "/dev/null", {{ printf "http://127.0.0.1:%d/healthz" (int .Values.nats.monitoringPort) | quote }}]
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 3
      {{- end }}
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.nats.resources | nindent 8 }}
      volumeMounts:
        - name: nats-config
          mountPath: {{ include "bosh-nats-sync.natsConfDir" . }}
          readOnly: true
        - name: nats-tls
          mountPath: {{ include "bosh-nats-sync.natsTlsDir" . }}
          readOnly: true
        {{- if and .Values.cluster.enabled (include "bosh-nats-sync.routeTls" .) }}
        - name: cluster-tls
          mountPath: {{ include "bosh-nats-sync.clusterTlsDir" . }}
          readOnly: true
        {{- end }}
        - name: state
          mountPath: {{ include "bosh-nats-sync.stateDir" . }}
    - name: bosh-nats-sync
      image: {{ include "bosh-nats-sync.image" (dict "repository" .Values.sync.image.repository "tag" (default .Chart.AppVersion .Values.sync.image.tag)) }}
      imagePullPolicy: {{ .Values.sync.image.pullPolicy }}
      args:
        - -c
        - {{ printf "%s/config.yml" (include "bosh-nats-sync.syncConfDir" .) }}
      env:
        - name: BOSH_NATS_SYNC_DIRECTOR_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ include "bosh-nats-sync.secretName" . }}
              key: {{ .Values.director.passwordKey }}
              optional: true
        - name: BOSH_NATS_SYNC_DIRECTOR_CLIENT_SECRET
          valueFrom:
            secretKeyRef:
              name: {{ include "bosh-nats-sync.secretName" . }}
              key: {{ .Values.director.clientSecretKey }}
              optional: true
      ports:
        - name: http
          containerPort: {{ .Values.sync.httpPort }}
          protocol: TCP
      # A down director is not a liveness failure (restarting would not help); /healthz
      # fails only when the control loop is wedged.
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml .Values.sync.livenessProbe | nindent 8 }}
      # Ready once nats-server has loaded a usable auth file (in a cluster: with the agents of a
      # pass that read the director; in callout mode: once the admitted set is loaded and the
      # sidecar answers); stays ready afterwards.
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        {{- toYaml .Values.sync.readinessProbe | nindent 8 }}
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.sync.resources | nindent 8 }}
      volumeMounts:
        {{- include "bosh-nats-sync.syncMounts" . | nindent 8 }}
  volumes:
    - name: nats-config
      configMap:
        name: {{ include "bosh-nats-sync.fullname" . }}-nats
    - name: sync-config
      configMap:
        name: {{ include "bosh-nats-sync.fullname" . }}-sidecar
    - name: nats-tls
      secret:
        secretName: {{ include "bosh-nats-sync.tlsSecretName" . }}
        defaultMode: 0440
    {{- if include "bosh-nats-sync.callout" . }}
    # Only the CA of the server's Secret reaches the sidecar, not the server's key.
    - name: nats-ca
      secret:
        secretName: {{ include "bosh-nats-sync.tlsSecretName" . }}
        defaultMode: 0440
        items:
          - key: ca.crt
            path: ca.crt
    - name: callout-tls
      secret:
        secretName: {{ include "bosh-nats-sync.calloutTlsSecretName" . }}
        defaultMode: 0440
        items:
          - key: tls.crt
            path: tls.crt
          - key: tls.key
            path: tls.key
    - name: callout-issuer
      secret:
        secretName: {{ include "bosh-nats-sync.issuerSecretName" . }}
        defaultMode: 0440
        items:
          - key: {{ .Values.callout.issuer.key }}
            path: issuer.seed
    - name: callout-keys
      emptyDir:
        medium: Memory
        sizeLimit: 1Mi
    {{- end }}
    {{- if and .Values.cluster.enabled (include "bosh-nats-sync.routeTls" .) }}
    - name: cluster-tls
      secret:
        secretName: {{ .Values.cluster.tls.secretName }}
        defaultMode: 0440
    {{- end }}
    - name: state
      {{- if and .Values.cluster.enabled .Values.state.volume (not (hasKey .Values.state.volume "emptyDir")) }}
      {{- fail "cluster.enabled: state.volume would be one volume for every pod, but each pod needs its own auth file and pid file: leave state.volume empty (an emptyDir per pod) or give an emptyDir" }}
      {{- end }}
      {{- if .Values.state.volume }}
      {{- toYaml .Values.state.volume | nindent 6 }}
      {{- else }}
      emptyDir:
        sizeLimit: {{ .Values.state.emptyDirSizeLimit }}
      {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if .Values.cluster.enabled }}
  affinity:
    {{- include "bosh-nats-sync.clusterAntiAffinity" . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* What the sidecar mounts, and in callout mode the init step that runs `init` as well. */}}
{{- define "bosh-nats-sync.syncMounts" -}}
- name: sync-config
  mountPath: {{ include "bosh-nats-sync.syncConfDir" . }}
  readOnly: true
- name: state
  mountPath: {{ include "bosh-nats-sync.stateDir" . }}
{{- if include "bosh-nats-sync.callout" . }}
- name: callout-keys
  mountPath: {{ include "bosh-nats-sync.keysDir" . }}
  readOnly: true
- name: callout-tls
  mountPath: {{ include "bosh-nats-sync.calloutTlsDir" . }}
  readOnly: true
- name: nats-ca
  mountPath: {{ include "bosh-nats-sync.natsCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}
