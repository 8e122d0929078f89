// Package nodeagent is mesh-agent, the daemon that runs on every node.
//
// # What it does
//
//   - Registers the node in etcd (nodes/<node>: IPs, pod CIDRs, gossip
//     address, labels, version) on its session lease, and claims or recovers
//     the node's pod CIDRs (package nodecidr).
//   - Joins the cluster's gossip (package health), seeded from the node
//     records in etcd: no static peer list.
//   - Mirrors cluster state into the eBPF maps pinned under
//     <bpffs>/meshplane/<node>/ (package bpf): watch caches of etcd prefixes
//     feed a mirror that computes desired-state tables, and one reconciler
//     per map writes only the difference (package nodeagent/reconciler).
//   - Gives local pods their IPs (package podip) and identities (package
//     allocator) through AddEndpoint, the CNI path, and publishes them in
//     etcd (endpoints/<ip>) on its lease. AddEndpoint checks the request
//     and the node (the ifindex is an interface of the agent's namespace,
//     the MACs are unicast, the netns is a network namespace) before it
//     allocates anything (ErrInvalidEndpoint, InvalidArgument); a repeat
//     for a pod it has is an idempotent success when identical and
//     ErrEndpointExists (FailedPrecondition), naming what differs, when not.
//   - Serves a gRPC API on a unix socket and Prometheus metrics.
//
// # Keys (under /meshplane/v1/<cluster>/)
//
//	nodes/<node>           node record          this agent; its session lease
//	endpoints/<ip>         ipcache entry        this agent, for its pods; its session lease
//	identities/refs/...    identity references  this agent (package allocator); its session lease
//	ipam/cidrs, ipam/nodes node CIDR claims     this agent (package nodecidr); no lease
//	ipam/pools/default     the default pool     the first agent of a cluster without pools
//
// It reads nodes/, endpoints/ and services/ (written by the control plane).
//
// # Health and the datapath
//
// etcd is not the failure detector: the lease is long (LeaseTTL, 5m). A node
// that gossip declares dead (or that left) has its routes (the ipcache
// entries of its pod CIDRs) and its service backends taken out of this
// node's maps within seconds, and put back when it is alive again. Its own
// addresses and its pods' IP-to-identity entries stay: identity is not
// reachability.
//
// # Restarts and outages
//
// The maps are never flushed. A restarted agent opens the pinned maps,
// seeds its backend and service IDs from them, reads its endpoints from
// its state directory, resumes its etcd lease (recorded in the state
// directory and left un-revoked by the previous run), and only when every
// watch cache has handed its first list to the mirror does it let the
// reconcilers compare and prune: so no entry is ever missing, and an
// unchanged cluster costs no map write at all. When etcd is unreachable
// the maps keep their last state, the agent reports degraded, and the
// caches and session reconnect with backoff and pass on only the
// difference.
//
// # Goroutines
//
// Run owns every goroutine through one errgroup and returns after all have
// exited: one per reconciler, the gRPC server and its health updater, the
// metrics server, and the control goroutine, which connects to etcd and
// then starts the identity allocator, the three watch caches (each with
// its delivery goroutine), the gossip join loop, the etcd probe, the
// endpoint restorer and the usage publisher. Gossip callbacks and cache
// handlers never block: they update the mirror under its mutex, and the
// tables only mark keys for their reconcilers.
package nodeagent
