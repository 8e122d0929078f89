// Package kubenode runs a whole single-node Kubernetes for tests, the way
// kubetest runs a kube-apiserver: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd (Debian's, with
// runc) and a kubelet, all real processes, inside a network namespace of
// the node's own. The host's namespace gets no address, route, sysctl or
// iptables rule: the node's address (Config.NodeIP) sits on a veth
// (both ends) in the node's namespace, forwarding is on there only, and
// the kubelet runs with makeIPTablesUtilChains off.
//
// It is a test helper (it imports testing; deps_test.go keeps it out of
// non-test code). The Kubernetes binaries are built from the Go module
// proxy by `make kube-node` (tools/kubernetes) into the cache that
// kubeapiserver.ComponentPath names; the others are Debian's (etcd-server,
// containerd, runc, containernetworking-plugins). Without them, or
// without root, Start skips the test, or fails it when
// MESHPLANE_REQUIRE_KUBENODE is set (CI sets it).
//
// # Reaching the node
//
// The test process stays in the host's namespace. Node.Dial makes a
// connection from inside the node's namespace (netnstest's Dial: a
// socket keeps the namespace it was made in), so client-go works with
// rest.Config{Host: n.Host, BearerToken: n.AdminToken, TLSClientConfig:
// {CAData: n.CAPEM}, Dial: n.Dial}, and so does Node.Client (package
// kubeapiserver's). Node.Kubectl runs the node's kubectl inside the
// namespace (exec, logs: the apiserver reaches the kubelet on the node's
// address). Node.StartProcess runs a daemon (mesh-agent,
// mesh-controlplane) inside it.
//
// # Processes
//
// Every process starts from one OS thread that the node owns and keeps
// in its namespace (not through nsenter or `ip netns exec`, which would
// give the kubelet another mount namespace), with SIGKILL as its
// parent-death signal: the signal fires when the forking thread exits,
// so the thread lives as long as the node. Cleanup stops processes by
// PID (SIGTERM, then SIGKILL), and kills the containerd shims that serve
// the node's socket by PID.
//
// # Images and networks
//
// No registry is reachable: Start builds kubenode/internal/probe (a
// static test program: HTTP and TCP echo server, client, pause) and
// imports two images made of it with package image: PauseImage, the
// sandbox image, and ProbeImage (pods use imagePullPolicy: Never).
// ImportImage imports more (the meshplane image, image.Meshplane). The
// standard network (StandardCNI) is Debian's bridge and host-local
// plugins with a bridge in the node's namespace; InstallCNI replaces it
// with another plugin and config (mesh-cni), written in place, as
// containerd 1.6 ignores a config renamed into its directory.
//
// # What stays private, and the walls
//
// Everything lives in a short directory under $TMPDIR (unix socket paths
// are bounded): containerd's root, state, socket and runc root, the CNI
// bin and conf dirs, the kubelet's root, certificates and pod logs, the
// logs of every process (Node.Log). The kubelet's pods go in a cgroup
// root of the node's own (kubenode-<pid>-<n>, in every hierarchy). A few
// paths are fixed by the programs: /var/lib/kubelet/device-plugins (a
// constant of the kubelet: so one node runs per machine at a time, under
// a lock in /run/lock), links in /var/log/containers, libcni's cache in
// /var/lib/cni and the shims' sockets in /run/containerd. Cleanup removes
// what the node made there, the directories it created when empty, the
// kubelet's mounts, the sandboxes' namespaces, the cgroups, and the
// namespace. It first deletes every pod through the kubelet, so that the
// CNI plugin's DEL runs. It never runs `kube-proxy --cleanup` (which
// flushes every IPVS service of its namespace); there is no kube-proxy
// (ProxyKubernetesService DNATs the kubernetes Service in the node's
// namespace for in-cluster clients).
//
// A test binary killed at its timeout runs no cleanup: its daemons die
// with it, its shims and containers do not. The next Start removes what
// such a dead node left (its owner's PID is in its cgroup root's and
// directory's names and files). MESHPLANE_KUBENODE_LOGS=<dir> keeps the
// node's logs after the test; a failed test logs their ends.
package kubenode
