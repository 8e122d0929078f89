// Package healthbench measures node failure detection in the lab, with
// agents as separate processes and the CPUs saturated: `meshctl bench
// health`. It answers three questions of the agents' health gossip
// (package health): does a live node ever lose its routes or backends on
// another node (false removals), how long does a crashed node keep them
// (crash to removal), and does a graceful restart cost any connection.
// docs/benchmarks.md records and reads the results.
//
// # The lab
//
// One lab per cluster size in Config.Nodes (3 and 2 by default; in a
// cluster of fewer than four there are no suspicion confirmations, and
// with two no indirect probes): nodes n1..nN, each with a pod
// bench/web-<node> (an echo server on TCP 80) and a service web-<node>
// (10.96.0.<10+i>) whose one backend it is; n1 also hosts the client pod.
// A node's backend is "present" on another node when that node's pinned
// services map gives the service web-<node> one backend slot and its
// pinned ipcache routes the node's pod CIDR to the node. A poller reads
// every pair (observer, node) from the pinned maps every 20 ms and
// records every change.
//
// # Phases
//
// With the lab up, Config.LoadProcs busy-looping processes (2 per CPU by
// default: package cpuload) run for the rest of the case; then:
//
//  1. steady: Config.Duration with no fault. Every removal is false.
//  2. crashes: Config.Crashes times, the agent of a node other than n1
//     (in turn) is killed (SIGKILL); crash_to_removal is the time from
//     the kill until the node's backend and route are gone from every
//     other node's maps (as the poller saw them). Then the agent is
//     started again and the bench waits until every map is whole.
//  3. pauses: Config.Pauses times, an agent is stopped (SIGSTOP) for
//     Config.Pause and continued, and the bench waits until every node
//     reads it alive again. Every removal is false.
//  4. restarts: Config.Restarts times, an agent is stopped gracefully
//     (SIGTERM), kept down for Config.RestartDown (an image pull), and
//     started again, while the client on n1 opens a connection through
//     the service web-<node> every 20 ms (each answered and echoed) and
//     echoes over one long-lived connection to it. Every removal is false;
//     restart_dropped_connections counts the new connections that failed
//     and the long-lived connections that broke.
//
// Removals of the crashed node between its kill and the end of its
// restart are the expected ones; every other removal, in any phase, is
// counted in false_removals. unconfirmed_deaths is, from the agents'
// status, how many deaths memberlist declared that the direct check
// refused to confirm (health/doc.go, "Confirmation"): in the steady phase
// each one would have been a false removal without the check; in the
// pauses it is the mechanism.
//
// Every wait is bounded; the load processes are killed by PID at the end
// of each case, and the labs are removed, also on error or when ctx ends.
//
// # Goroutines
//
// Run starts the poller and the client's traffic goroutines (the latter on
// threads in the client pod's namespace, retired afterwards) and waits
// for them; nothing outlives it. The package never logs; progress goes to
// Config.Progress.
package healthbench
