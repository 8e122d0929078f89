// Package realnode holds the end-to-end test on a real Kubernetes node
// (package kubenode): a kubelet with containerd and runc, our CNI config
// installed by the manifests' init-container command, mesh-agent (eBPF
// datapath, native routing) and mesh-controlplane running as processes in
// the node's network namespace. Pods created through the API server get
// their addresses from mesh-cni, reach each other and a ClusterIP
// Service, and a NetworkPolicy is enforced on their traffic.
//
// It has no code beyond test helpers. The tests skip without root or
// kubenode's binaries (make kube-node, Debian's containerd, runc, CNI
// plugins, etcd-server), and fail instead with
// MESHPLANE_REQUIRE_KUBENODE=1 (CI). The meshplane binaries are
// MESHPLANE_LAB_BIN's (make build), or TestMain builds them.
package realnode
