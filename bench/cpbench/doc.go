// Package cpbench is the harness of `meshctl bench controlplane`: it
// measures mesh-controlplane against a real kube-apiserver and a real
// etcd, all on this machine.
//
// Run starts an embedded etcd (kvstore/embedded), a kube-apiserver on it
// (kubeapiserver.Start, the binary `make kube-apiserver` builds) under an etcd
// prefix of its own, and the control plane (controlplane.New and Run, with
// the Kubernetes source of controlplane/k8s) in this process, in a cluster
// named cpbench-<random>. With Config.Agent it also runs one node agent
// (nodeagent, the "none" datapath: its eBPF maps, no programs) for the
// first of the fake nodes. Then:
//
//  1. It reads the apiserver's watch count (apiserver_longrunning_requests,
//     verb WATCH, from /metrics) before and after the control plane starts:
//     the difference is apiserver_watches, the watches the control plane
//     holds (one per kind is the design).
//  2. It creates the namespaces and services, then the pods, spread over
//     the fake nodes by spec.nodeName (no scheduler or kubelet runs), with
//     a bounded number of concurrent clients, as fast as the apiserver
//     takes them. For each pod it records when its create returned, when
//     the control plane was notified of it (the informer's event) and when
//     its pods/<node>/<namespace>/<name> key appeared in etcd (a watch of
//     the prefix): lag is from the create's return to the key; the
//     informer lag (create to notification) and the write lag
//     (notification to key) split it between the apiserver and meshplane.
//     events_per_s is the notifications the control plane received during
//     that phase over its length.
//  3. Relabel: for some of the agent's pods, which have endpoints in the
//     agent (AddEndpoint, as the CNI plugin would), it patches the pod's
//     labels in the apiserver, one pod at a time, and times each from the
//     patch until the endpoint's identity in the agent's pinned endpoints
//     map changes (relabel_*_ms), and until the pods/ key in etcd carries
//     the new labels (relabel_etcd_*_ms). Without an agent only the latter
//     is measured.
//  4. Cold start: it stops the control plane (and the agent), deletes the
//     pods/ prefix, starts a fresh control plane and times it from start
//     until every pod is back in etcd (initial_sync_s).
//
// Everything is bounded: the counts by Config's limits, each phase by a
// deadline. The apiserver, etcd, the agent's pins and the temporary
// directory are removed at the end.
//
// The harness talks to the apiserver in plain HTTPS and JSON (like
// kubeapiserver): only controlplane/k8s imports client-go, and a raw client
// has no client-side rate limit to raise.
package cpbench
