// Package cnibench is the harness of `meshctl bench cni`: it times CNI ADD
// and DEL through the real mesh-cni binary against a real agent, on this
// machine.
//
// Run must run in a network namespace of its own (ErrHostNetns otherwise):
// meshctl bench cni creates one and re-runs itself in it through `meshctl
// lab nsexec`, so that the host's namespace gets no interface, route or
// address. In that namespace, which plays the node, Run starts an embedded
// etcd on its loopback (kvstore/embedded), one node agent in this process
// (nodeagent, by default with the eBPF datapath: the programs are attached
// to every pod's veth, as in production), and a named network namespace per
// pod, as a runtime makes them before ADD. It writes each pod's metadata to
// etcd under pods/<node>/<namespace>/<name> (and the namespace's under
// namespaces/), as the control plane does when Kubernetes schedules the
// pod, before the pod's ADD.
//
// Then two phases, each of Config.Pods pods with Config.Parallel commands
// at a time, each command a fork and exec of mesh-cni with the CNI
// environment and configuration on stdin, timed from exec to exit (veth,
// IPs, identity, etcd entries, maps, programs, addresses, routes: all of
// it):
//
//  1. new identity: every pod has a label set of its own, so every ADD
//     allocates an identity in etcd (the slow path);
//  2. known identity: every pod has the same labels, whose identity a first
//     pod, added before the phase and deleted after it, already holds (a
//     Deployment's replicas).
//
// Each phase adds all its pods, then deletes them all. pods_per_s is a
// phase's pods over the wall time of its ADDs.
//
// Everything is bounded: the counts by the Max limits, each phase by
// Config.Timeout. The pods' namespaces, the agent's pins and the temporary
// directory are removed at the end, and the agent must be left without
// endpoints (an error otherwise).
package cnibench
