// Package cni is meshplane's CNI plugin (cmd/mesh-cni) and the pod wiring
// it shares with the lab.
//
// # The plugin
//
// The container runtime execs mesh-cni with CNI_COMMAND and the network
// configuration (NetConf) on stdin; Funcs are its commands for
// containernetworking/cni's skel, which speaks every spec version up to
// 1.1 (Versions). The plugin holds no state of its own and talks only to
// the local mesh-agent, over its API socket (NetConf.Socket, gRPC through
// package api):
//
//   - ADD (Add) creates the veth pair (host side HostVethName(container ID,
//     ifname), "mp" and 13 hex characters, with the attachment in its alias;
//     pod side CNI_IFNAME in CNI_NETNS), asks the agent's AddEndpoint for the
//     pod's IPs and identity with the Kubernetes arguments of CNI_ARGS (the
//     pod's labels come from the control plane through etcd, never from the
//     runtime), sets the MTU the agent returns, wires the pod (ConfigurePod,
//     RouteToPod) and prints a types/100 result. A failure after the veth
//     exists deletes the agent's endpoint (scoped to the container ID) and
//     the veth: nothing is left behind and no IP stays allocated.
//   - DEL (Del) deletes the endpoint of that container and the veth; it
//     succeeds for an unknown or half-made attachment and without the
//     netns. With the agent down it removes the veth and fails, so that the
//     runtime retries until the agent releases the IPs.
//   - CHECK (Check) compares the agent's endpoint, the veth and the pod's
//     addresses and default routes with prevResult.
//   - GC (GC) deletes the endpoints and veths of attachments that
//     cni.dev/valid-attachments does not list.
//   - STATUS (Status) is ready iff the agent's socket answers Status.
//
// Errors (Error) carry the spec's codes: 11 (try again later) when the
// agent is down (ErrAgentDown, naming the socket), still starting
// (ErrAgentNotReady), or has no labels for the pod in etcd yet
// (ErrNoMetadata: the agent waits for them up to its --pod-metadata-wait,
// which must stay below NetConf.Timeout); 7 for a bad configuration
// (ErrConfig); 50 for STATUS.
//
// Install and Uninstall are what the agent's DaemonSet runs in its init
// container (mesh-cni install): the binary copied atomically, the
// conflist written in place (containerd 1.6 ignores a file moved into its
// conf dir).
//
// The plugin is a short-lived process: it links no agent, no etcd client
// and no Kubernetes client (deps_test.go holds that line), and it never
// logs from here; cmd/mesh-cni writes a line per command to
// NetConf.LogFile.
//
// # The wiring
//
// CreateVeth, SetMTU, ConfigurePod, RouteToPod and Remove are the pod's
// wiring on both sides (see wire.go): addresses as host routes (/32,
// /128), the gateway on-link with a permanent neighbour entry for the
// host side's MAC, and on the host a route and permanent neighbour entry
// for each pod address. They take namespaces by path ("" for the caller's
// own), so the lab wires its pods, whose host is a node namespace, with
// the same code. They start no goroutines that outlive a call; a call
// that needs a namespace's sysctls runs on a locked thread that is retired
// afterwards.
package cni
