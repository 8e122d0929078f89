// Package e2e holds the end-to-end tests: a lab (lab/) of real network
// namespaces, mesh-agent processes, an etcd per cluster and the eBPF
// datapath, driven with real packets. It has no code of its own beyond
// test helpers.
//
// The tests need root (CAP_BPF, CAP_NET_ADMIN) and the binaries, which
// TestMain builds; without root they skip, and with
// MESHPLANE_REQUIRE_BPF=1 (CI) they fail instead.
package e2e
