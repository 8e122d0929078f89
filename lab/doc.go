// Package lab runs clusters of meshplane on one machine: nodes and pods as
// network namespaces, real agents, real eBPF, real packets. It is what
// `meshctl lab` and the demo run, and what end-to-end tests and the
// datapath and health benchmarks (lab/labbench, lab/healthbench) build on
// (Up, Probe, AddPod, StopAgent, KillAgent, PauseAgent, ...).
//
// # What a lab is
//
// A topology (docs/lab.md; ParseTopology) names clusters, their nodes,
// namespaces, pods and services. Up builds it:
//
//   - a lab namespace "mp-<lab>-lab" holding a bridge, br0, and one more
//     per subnet (br1, ...). The host's root namespace is never changed:
//     no interface, route or sysctl.
//   - with subnets, a router "mp-<lab>-router": forwarding on, an
//     interface on every bridge with the first host of its network, and
//     no pod CIDR routes, so native routing cannot cross it and the
//     tunnel can. Nodes and externals then route by default through it.
//   - per node, a namespace "mp-<lab>-n_<cluster>_<node>": eth0 with the
//     node's address on its network's bridge (the peer is in the lab
//     namespace), forwarding on, rp_filter off, and a mesh-agent running
//     inside it (through `meshctl lab nsexec`, which changes only the
//     network namespace, so the agent sees /sys/fs/bpf) with the
//     topology's --routing-mode: the agents route between the nodes (a
//     VXLAN device and routes of protocol 109), the lab does not.
//   - per cluster, an etcd: embedded in a `meshctl lab etcd` process in the
//     root namespace on loopback, or an external one; either way reached
//     through a unix socket, which crosses namespaces. Up creates the
//     cluster's IPAM pool (its podCIDR) before the agents start.
//   - per pod, a namespace "mp-<lab>-p_<cluster>_<ns>_<pod>" with a veth to
//     its node (host side "lxc" + 11 hex characters), set up the CNI way:
//     AddEndpoint gives the address, identity and gateway; the pod gets
//     ip/32, an on-link route to the gateway, a default route through it
//     and a permanent neighbor entry gateway -> host veth MAC; the node a
//     route ip/32 dev lxc... and a permanent neighbor entry for the pod
//     (package cni's wiring, the CNI plugin's own). A `meshctl lab echo`
//     server in the pod serves its ports.
//   - per cluster, what mesh-controlplane writes on Kubernetes: pod
//     metadata (pods/<node>/<ns>/<name>), namespace labels (namespaces/<ns>)
//     and services (services/<ns>/<name>: a frontend per port on the
//     ClusterIP, the running pods the selector picks as backends). The lab
//     writes them through the control plane's own code: a topology source
//     (a snapshot of the lab's state) and controlplane.SyncOnce, with
//     service.Build translating each service, so the demo cannot drift from
//     production. Up, AddPod (before the pod's CNI ADD, and after it for its
//     services) and DeletePod sync; only the difference is written.
//   - per cluster with kubernetes: true (kube.go), a real kube-apiserver
//     on the cluster's etcd (prefix /kube-apiserver/<cluster>, loopback
//     only; set up by kubeapiserver.Prepare and spawned detached, like
//     the other processes) and a mesh-controlplane process
//     watching it, which writes the keys above instead of the lab. The
//     lab plays the rest of Kubernetes in the API server (syncKube):
//     namespaces, pods on their lab nodes (created before the CNI ADD,
//     which then names the pod only; their status set once wired, as no
//     kubelet runs), services with the topology's ClusterIPs, and an
//     EndpointSlice per service from the running pods. Labels change
//     there too; NetworkPolicies are created there by the user.
//   - per external (a host outside every cluster, the "world" of ipBlock
//     policies), a namespace "mp-<lab>-x_<name>" on the bridge at its
//     address, not a router, with a route to the pod CIDR of every node on
//     the lab network through that node (made after the agents) and an echo
//     server answering "ext:<name>". Probe takes it as a source or target
//     ("ext:<name>", or the bare name when no pod has it).
//
// The name grammar after "mp-<lab>-" ("lab", "router", "n_...", "p_...", "x_...")
// cannot be produced by another lab's prefix, since lab names have no '_':
// Down of lab "demo" never touches lab "demo-x".
//
// # Readiness
//
// Up returns when every agent says ok and every agent of a cluster has
// every pod of the cluster (with its identity) in its ipcache and every
// service frontend with exactly its backends; AddPod, DeletePod and
// StartAgent wait for the same. So a probe right after them sees the
// datapath as the lab describes it, and tests need no sleeps.
//
// # State and cleanup
//
// Everything lives in a run directory, <RunDir>/<lab>/ (default
// /run/meshplane-lab/demo/): state.json (written after every step, so a
// crash leaves a record), etcd data, agent state directories, sockets
// (sock/, short hashed names: sun_path holds 107 bytes), logs and the
// gossip key. Agents pin their maps under <BPFFS>/mp-<lab>/<cluster>/.
//
// Processes are started detached (their own session, output to a log) so
// they outlive the process that started them, and every one carries an
// argument "--flag=<run dir>/...". Down stops the recorded PIDs, then whatever a /proc scan
// finds with that mark, and only while the mark is there, so a PID the
// kernel gave to someone else is never signalled. Then it deletes the
// namespaces by name (the veths, routes and bridge go with them), the pin
// directory and the run directory. It works on any leftover of a crash
// and is idempotent.
//
// # Goroutines
//
// The package starts goroutines only inside a call and waits for them
// before it returns: InNetns and createNetns run a function on a locked
// OS thread that enters a namespace (the thread is retired afterwards,
// never reused); ServeEtcd and Echo own their accept and connection
// goroutines until their ctx ends. The processes the lab starts are not
// goroutines: Down owns their end. The package never logs; progress goes
// to Options.Stdout.
package lab
