// Package labbench measures the datapath in the lab against iptables, and
// its tunnel against native routing: `meshctl bench datapath`. It builds
// one lab per enforcer and routing mode (ebpf with native routing, ebpf
// with the VXLAN tunnel, iptables with native routing), each of one
// cluster with two nodes on one L2 segment (a client pod and a second,
// unallowed pod on node1; a server pod with an echo server on port 80 on
// node2), sets each
// up with the same number of policy rules and services, and measures, from
// inside the client pod, TCP connections per second and request/response
// latency to the server. docs/benchmarks.md records and reads the results.
//
// # The enforcers
//
//   - ebpf: agents with the eBPF datapath (the default). Policy rules are
//     an ingress NetworkPolicy on the server allowing the client on TCP 80,
//     plus N /32 ipBlocks from 172.16.0.0/12 on TCP 80, which no traffic
//     uses (chunked into policies of 1000 peers): every one becomes a CIDR
//     identity, an ipcache prefix and a policy map entry of the server's
//     endpoint. Services are N ClusterIPs from 10.96.0.1 on TCP 80, written
//     to etcd with the server as their one backend.
//   - iptables: agents with --datapath=none (they fill their maps, nothing
//     reads them). In the server node's namespace, the filter table's
//     FORWARD chain holds, in order: ESTABLISHED,RELATED ACCEPT (as every
//     real policy chain starts), N rules "-s 172.16.x.y/32 -p tcp --dport
//     80 -j ACCEPT" that never match, the client's ACCEPT, and a DROP of
//     everything else to the server. In the client node's namespace, the
//     nat table is kube-proxy's shape: PREROUTING jumps to KUBE-SERVICES,
//     which has one "-d <ClusterIP>/32 -p tcp --dport 80 -j KUBE-SVC-<n>"
//     per service; KUBE-SVC-<n> jumps to KUBE-SEP-<n>, which DNATs to the
//     server. Rules are loaded with iptables-restore (Config.IPTablesRestore)
//     through `ip netns exec`.
//
// In both, every measured connection goes to the ClusterIP of the last
// service (the only one with services=1): the worst case of a linear
// KUBE-SERVICES chain, and the same path for every row, so rows differ only
// in the rule and service counts. "rules" counts the never-matching rules;
// the client's allow and the default deny are always there, so rules=0 is
// an enforced server with an empty rule list.
//
// Before each row, the state is checked from the datapath's side: for ebpf,
// the server node's pinned policy map holds exactly the N CIDR entries and
// the client's entry, and the client node's pinned services map holds
// every frontend; then a probe from the client must be answered by the
// server and a probe from the other pod must be denied.
//
// # Measurements
//
// From goroutines locked to OS threads that entered the client pod's
// network namespace (lab.InNetns), with blocking socket calls, so the Go
// scheduler adds as little as possible:
//
//   - conn_per_s: Config.Workers loops of connect, read the echo server's
//     hello line, close, for Config.Duration after a warm-up, over the
//     wall time. The client pod's ip_local_port_range and tcp_tw_reuse are
//     widened so TIME_WAIT does not run out of ports.
//   - rr_p50_us, rr_p99_us: one connection, Config.RRCount ping-pongs of
//     Config.RRSize bytes after a warm-up; each timed.
//   - agent_cpu_pct: the CPU time the lab's agents used during the
//     connection loops (from /proc), per wall time: the eBPF datapath
//     reports every new connection to its agent, which costs CPU too.
//
// With Config.Rounds, each Case is measured that many times, the enforcers
// taking turns, and a row reports the medians: load from outside the bench
// (other processes on the machine) then falls on both alike.
//   - conn_per_s_vs_native_ratio, rr_p50_vs_native_ratio,
//     rr_p99_vs_native_ratio (ebpf tunnel rows): the row's figure over the
//     ebpf native row's of the same case, measured in the same rounds: the
//     tunnel's cost (encapsulation, the tunnel programs, the VXLAN
//     device's extra trip through the stack).
//   - policy_apply_p50_ms, policy_apply_p99_ms (ebpf only): Config.Applies
//     times, a policy selecting every pod of the namespace (on both nodes)
//     with a new port is put into etcd, and timed until every node's pinned
//     policy map holds the entry for each of its pods (polled every
//     millisecond); then it is deleted (untimed).
//
// Every wait is bounded in time and every loop in count or time. The labs
// are removed at the end, also on error or when ctx ends.
//
// # Goroutines
//
// Run starts the measuring goroutines (each on its own retired thread)
// and waits for them; nothing outlives it. The package never logs;
// progress goes to Config.Progress.
package labbench
