{{/* Labels on every object: the DaemonSet selects its pods by the first. */}}
{{- define "mesh-cni.labels" -}}
app.kubernetes.io/name: mesh-cni
{{- end }}

{{- define "mesh-cni.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The host's CNI bin dir; empty: detected as Istio's chart does (GKE's server version carries "-gke"). */}}
{{- define "mesh-cni.cniBinDir" -}}
{{- if .Values.cniBinDir }}{{ .Values.cniBinDir }}
{{- else if contains "-gke" .Capabilities.KubeVersion.GitVersion }}/home/kubernetes/bin
{{- else }}/opt/cni/bin
{{- end }}
{{- end }}

{{/* Istio's repair booleans as the agent's one mode, in Istio's order (cni/pkg/repair: repair, delete, label). */}}
{{- define "mesh-cni.repairMode" -}}
{{- $r := .Values.repair }}
{{- if not $r.enabled }}off
{{- else if $r.repairPods }}repair
{{- else if $r.deletePods }}delete
{{- else if $r.labelPods }}label
{{- else }}off
{{- end }}
{{- end }}

{{- define "mesh-cni.logLevel" -}}
{{ coalesce .Values.logging.level .Values.global.logging.level }}
{{- end }}

{{/*
The agent's ConfigMap. Each key of `data` is one `mesh-cni agent` flag: the DaemonSet passes every key as
--KEY=$(ENV), ENV read from here (mesh-cni.envName), so a new setting is one line below (and its value and schema).
*/}}
{{- define "mesh-cni.configmap" -}}
# The agent's settings. Each key becomes one `mesh-cni agent` flag (see the DaemonSet's args); change a
# value here and restart the DaemonSet (kubectl -n {{ .Release.Namespace }} rollout restart ds/mesh-cni).
apiVersion: v1
kind: ConfigMap
metadata:
  name: mesh-cni-config
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "mesh-cni.labels" . | nindent 4 }}
data:
  # The host's CNI dirs as mounted in the agent's pod (the DaemonSet mounts cniBinDir and cniConfDir there).
  cni-bin-dir: /host/opt/cni/bin
  cni-conf-dir: /host/etc/cni/net.d
  # The same config dir as the runtime on the host sees it: paths inside our conflist entry are host paths.
  host-cni-conf-dir: {{ .Values.cniConfDir | quote }}
  # The file in that dir to chain into ("": the first valid config, as the runtime chooses); with chained
  # "false", the name of our own file ("": zzz-mesh-cni.conflist).
  cni-conf-file-name: {{ .Values.cniConfFileName | quote }}
  # "true": never write the primary's file; write our own conflist (the next key), sorting first, holding the
  # primary's plugins and then ours, copied again whenever the primary's changes (Istio's istioOwnedCNIConfig).
  owned-cni-config: {{ .Values.istioOwnedCNIConfig | default false | quote }}
  # The owned config's name in that dir (Istio's istioOwnedCNIConfigFileName): it must sort before the primary's.
  owned-cni-config-file-name: {{ coalesce .Values.istioOwnedCNIConfigFileName .Values.istioOwnedCNIConfigFilename "02-mesh-cni.conflist" | quote }}
  # "true": our entry is chained into the primary CNI's config. "false" (standalone, for Multus): our own
  # config file holding only mesh-cni, and the primary's file is never touched.
  chained: {{ .Values.chained | quote }}
  {{- if and (not .Values.chained) .Values.istioOwnedCNIConfig }}
  {{- fail "chained: false and istioOwnedCNIConfig: true both ask for a config file of mesh-cni's own: standalone writes one with only mesh-cni (for Multus), the owned config copies the primary's with ours added; choose one" }}
  {{- end }}
  # Pods in these namespaces are never redirected (comma separated).
  exclude-namespaces: {{ join "," .Values.excludeNamespaces | quote }}
  # What to do with a pod whose rules are missing: repair (in place, in its netns: no extra RBAC),
  # label or delete (each needs its RBAC: the chart renders it from repair.*; install/optional/repair-*-rbac.yaml), off.
  repair-mode: {{ include "mesh-cni.repairMode" . }}
  # The container runtime's CRI socket, at the same path in the agent's pod as on the host: how the
  # reconciler finds pods whose ADD it never saw ("": do not ask).
  cri-socket: {{ .Values.criSocket | quote }}
  # auto, iptables, iptables-nft, iptables-legacy or nftables.
  backend: {{ .Values.backend }}
  # debug, info, warn or error.
  log-level: {{ include "mesh-cni.logLevel" . }}
  # /healthz, /readyz and /metrics. Must equal the DaemonSet's containerPort named "health" (probes
  # cannot read a ConfigMap).
  health-port: {{ .Values.healthPort | quote }}
  # "true": once ready, the agent removes the taint cni.istio.io/not-ready:NoSchedule from its node, so nodes
  # can be registered with it and get no pods before mesh-cni runs. Needs its RBAC (removeNotReadyTaint renders it; install/optional/node-readiness-rbac.yaml).
  remove-not-ready-taint: {{ .Values.removeNotReadyTaint | quote }}
  # A primary CNI that removes our entry this many times within fight-window-seconds is left alone (the agent
  # turns not ready and says why) and tried again after fight-quiet-seconds; "0": re-insert every time.
  fight-removals: {{ .Values.primaryFight.removals | quote }}
  fight-window-seconds: {{ .Values.primaryFight.windowSeconds | quote }}
  fight-quiet-seconds: {{ .Values.primaryFight.quietSeconds | quote }}
  # "true": ambient pods (Istio's ambient data plane) get Istio's in-pod rules and are handed to ztunnel on
  # /var/run/ztunnel/ztunnel.sock. Needs its RBAC (ambient.enabled renders it; install/optional/ambient-rbac.yaml).
  ambient: {{ .Values.ambient.enabled | quote }}
  # Which pods are ambient: Istio's enablement selectors, a YAML list of {podSelector, namespaceSelector}.
  ambient-enablement-selectors: |
    {{- toYaml .Values.ambient.enablementSelectors | nindent 4 }}
  # "true": ambient pods' DNS to ztunnel on 15053 (a pod may say otherwise with ambient.istio.io/dns-capture).
  ambient-dns-capture: {{ .Values.ambient.dnsCapture | quote }}
  # "true": ambient pods' IPv6 rules too, where their netns has IPv6.
  ambient-ipv6: {{ .Values.ambient.ipv6 | quote }}
{{- end }}

{{/*
The environment variable that carries a ConfigMap key to the agent: KEY_IN_CAPITALS, except where Istio's
istio-cni names the same setting otherwise; the CLI reads those names (src/cli/options.ts), so `mesh-cni
explain` run in the agent's pod decides with the agent's settings.
*/}}
{{- define "mesh-cni.envName" -}}
{{- $istio := dict "ambient" "AMBIENT_ENABLED" "ambient-enablement-selectors" "AMBIENT_ENABLEMENT_SELECTOR" "owned-cni-config" "ISTIO_OWNED_CNI_CONFIG" "owned-cni-config-file-name" "ISTIO_OWNED_CNI_CONF_FILENAME" "chained" "CHAINED_CNI_PLUGIN" }}
{{- get $istio . | default (. | replace "-" "_" | upper) }}
{{- end }}

{{/* A ClusterRole and its binding to the agent's ServiceAccount. */}}
{{- define "mesh-cni.clusterRoleBinding" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .name }}
  labels:
    {{- include "mesh-cni.labels" .root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: mesh-cni
    namespace: {{ .root.Release.Namespace }}
{{- end }}
