// Package nodeagent is mesh-agent, the daemon that runs on every node.
//
// # What it does
//
//   - Checks, before it writes anything into etcd, that the etcd is its
//     cluster's: the cluster record (package cluster) must say Cluster and
//     ClusterID. When there is none, it creates it (the first agent of a
//     fresh cluster works alone, as with the default pool); when it
//     differs or is corrupt, Run returns an error that names the field and
//     both values, having written nothing (Agent.ensureCluster).
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
//   - Takes each local pod's labels, namespace labels and ports from the
//     metadata the control plane publishes (pods/<node>/<ns>/<name>,
//     namespaces/<ns>; package pod): AddEndpoint without labels waits for
//     it, and a change relabels the live endpoint with the identity of its
//     new label set, without restarting the pod (relabel.go).
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
// It reads nodes/, endpoints/, services/ and policies/ (services and
// policies written by the control plane or meshctl), identities/id/, its
// own node's pods/<node>/ and namespaces/ (written by the control plane).
//
// Its node record and its endpoints are guarded (kvstore.SessionConfig.Guard):
// changed, deleted or re-put without the lease by anyone else, they are
// written back on the lease (selfrepair.go). The node record carries the
// etcd revision up to which the node enforces the policies (policyrev.go).
//
// # Corrupt values
//
// A value the agent cannot decode never makes the datapath more
// permissive than the last good state: the caches keep a key's last good
// value, and for a key never seen valid the handlers isolate what it may
// concern (a deny-all policy for its namespace, the unknown identity for an
// endpoint's IP; services, nodes and identities are not installed). Every
// invalid value is logged at Error, degrades the status (naming the key)
// and is counted per cache; see invalid.go and docs/architecture.md.
//
// # Health and the datapath
//
// etcd is not the failure detector: the lease is long (LeaseTTL, 5m). A node
// that gossip declares dead (confirmed by a direct check, health/doc.go) or
// that left has its routes (the ipcache entries of its pod CIDRs) and its
// service backends taken out of this node's maps within seconds, and put
// back when it is alive again. A node that is unresponsive (its agent
// stalled, its kernel answering) or restarting keeps them: its datapath, in
// the kernel, still forwards. Its own addresses and its pods'
// IP-to-identity entries always stay: identity is not reachability.
//
// A graceful shutdown (the end of Run's context: SIGTERM) announces a
// restart in gossip, so the other nodes read this node as restarting and
// keep its routes for their restart grace (Config.Gossip.RestartGrace);
// with Config.LeaveOnShutdown it leaves for good instead.
//
// # Routing between nodes
//
// routing.go programs the node's routes to the other nodes' pod CIDRs
// from the same view (Config.RoutingMode): in tunnel mode through the
// flow-based VXLAN device mesh_vxlan, whose tunnel programs take the
// remote node from the ipcache; in native mode via the nodes' addresses.
// A dead or departed node's routes go with its ipcache entries and come
// back with them. The agent owns the routes of protocol RouteProtocol
// (109) in the main table and no other: a level-triggered loop compares
// them with the wanted ones after every node or health change and every
// PruneInterval. The routes and the device outlive the agent; the loop
// starts once the caches are delivered. podMTU (mtu.go) is the pod MTU
// the CNI plugin sets.
//
// # Restarts and outages
//
// Run first takes an flock on StateDir/agent.lock (lock.go): a second
// agent on the same state directory fails with a *StateDirInUseError
// before it reads, writes or pins anything.
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
// Before it hands out a pod IP, a (re)started agent reserves in the pod IP
// allocator every IP that an endpoint state file or one of its etcd
// entries gives a pod, whatever the journal lost (reconcile_ips.go): an
// acknowledged allocation is never given to anyone else. Conflicts between
// those records are reported (status, metrics, an Error log) and keep the
// IP allocated; they are never resolved by handing it out.
//
// # Goroutines
//
// Run owns every goroutine through one errgroup and returns after all have
// exited: one per reconciler, the gRPC server and its health updater, the
// metrics server, and the control goroutine, which connects to etcd and
// then starts the identity allocator, the six watch caches (each with
// its delivery goroutine), the gossip join loop, the etcd probe, the
// endpoint restorer (which then becomes the relabel loop), the usage
// publisher, the policy revision publisher and, once synced, the routing
// loop (the only user of its netlink handle). The etcd session owns its lease goroutine and, for the
// guarded prefixes, a watch goroutine per prefix and a repairer. Gossip callbacks and cache
// handlers never block: they update the mirror under its mutex, and the
// tables only mark keys for their reconcilers.
package nodeagent
