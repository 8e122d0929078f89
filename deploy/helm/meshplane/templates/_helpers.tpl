{{/* The image of every container. */}}
{{- define "meshplane.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* The etcd endpoints; an empty list fails the render. */}}
{{- define "meshplane.etcdEndpoints" -}}
{{- if not .Values.etcd.endpoints -}}
{{- fail "etcd.endpoints is empty: name the cluster's etcd (--set 'etcd.endpoints={https://etcd-0:2379}'); meshplane never starts an etcd of its own" -}}
{{- end -}}
{{- range .Values.etcd.endpoints }}{{ if not . }}{{ fail "etcd.endpoints has an empty entry: remove it" }}{{ end }}{{ end -}}
{{- toYaml .Values.etcd.endpoints -}}
{{- end -}}

{{/* The etcd keys both daemons' config files share. */}}
{{- define "meshplane.etcdConfig" -}}
{{- $c := dict "etcd-endpoints" (include "meshplane.etcdEndpoints" . | fromYamlArray) -}}
{{- if .Values.etcd.tls.secretName -}}
{{- $_ := set $c "etcd-ca" "/etc/meshplane/etcd/ca.crt" -}}
{{- $_ := set $c "etcd-cert" "/etc/meshplane/etcd/tls.crt" -}}
{{- $_ := set $c "etcd-key" "/etc/meshplane/etcd/tls.key" -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* mesh-agent's config file: keys are its flag names. */}}
{{- define "meshplane.agentConfig" -}}
{{- $c := include "meshplane.etcdConfig" . | fromYaml -}}
{{- $_ := set $c "cluster-name" .Values.cluster.name -}}
{{- $_ := set $c "cluster-id" .Values.cluster.id -}}
{{- if .Values.gossip.secretName -}}
{{- $_ := set $c "gossip-key-file" "/etc/meshplane/gossip/keys" -}}
{{- end -}}
{{- if .Values.ipamPool.enabled -}}
{{- $_ := set $c "no-default-pool" true -}}
{{- end -}}
{{- toYaml (merge (deepCopy .Values.agent.config) $c) -}}
{{- end -}}

{{/* mesh-controlplane's config file: keys are its flag names. */}}
{{- define "meshplane.controlPlaneConfig" -}}
{{- $c := include "meshplane.etcdConfig" . | fromYaml -}}
{{- $_ := set $c "cluster-name" .Values.cluster.name -}}
{{- $_ := set $c "cluster-id" .Values.cluster.id -}}
{{- toYaml (merge (deepCopy .Values.controlPlane.config) $c) -}}
{{- end -}}

{{/* The etcd client Secret's volume, when there is one. */}}
{{- define "meshplane.etcdVolume" -}}
{{- if .Values.etcd.tls.secretName }}
- name: etcd-client
  secret:
    secretName: {{ .Values.etcd.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "meshplane.etcdMount" -}}
{{- if .Values.etcd.tls.secretName }}
- name: etcd-client
  mountPath: /etc/meshplane/etcd
  readOnly: true
{{- end }}
{{- end -}}

{{/* The host directories of the agent and the cleanup. */}}
{{- define "meshplane.hostVolumes" -}}
- name: bpffs
  hostPath:
    path: {{ .Values.hostPaths.bpffs }}
    type: Directory
- name: run
  hostPath:
    path: {{ .Values.hostPaths.run }}
    type: DirectoryOrCreate
- name: state
  hostPath:
    path: {{ .Values.hostPaths.state }}
    type: DirectoryOrCreate
- name: cni-bin
  hostPath:
    path: {{ .Values.hostPaths.cniBin }}
    type: DirectoryOrCreate
- name: cni-conf
  hostPath:
    path: {{ .Values.hostPaths.cniConf }}
    type: DirectoryOrCreate
{{- end -}}

{{- define "meshplane.nodeNameEnv" -}}
- name: MESHPLANE_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end -}}

{{- define "meshplane.cleanupCommand" -}}
- /usr/local/bin/mesh-agent
- --cleanup
- --bpffs
- /sys/fs/bpf
- --state-dir
- /var/lib/meshplane/$(MESHPLANE_NODE_NAME)
- --api-socket
- /var/run/meshplane/agent.sock
{{- end -}}

{{- define "meshplane.cleanupSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
  add: [DAC_OVERRIDE, FOWNER, NET_ADMIN]
appArmorProfile:
  type: Unconfined
{{- end -}}

{{- define "meshplane.cleanupMounts" -}}
- name: bpffs
  mountPath: /sys/fs/bpf
- name: run
  mountPath: /var/run/meshplane
- name: state
  mountPath: /var/lib/meshplane
- name: cni-bin
  mountPath: /host/opt/cni/bin
- name: cni-conf
  mountPath: /host/etc/cni/net.d
{{- end -}}
