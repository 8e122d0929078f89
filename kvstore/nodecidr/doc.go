// Package nodecidr keeps a cluster's IPAM pools in etcd and lets nodes
// claim per-node pod CIDRs from them by compare-and-create.
//
// # Keys (under /meshplane/v1/<cluster>/)
//
//	ipam/pools/<name>      pool (JSON)            meshctl ipam pool; no lease
//	ipam/pools-version     ""                     every pool change; no lease
//	ipam/cidrs/<cidr>      claim {node, pool}     the claiming node; no lease; deleted by GC
//	ipam/nodes/<node>      {cidrs}                the claiming node; no lease; deleted by GC
//	nodes/<node>           node record (JSON)     the node; on its session lease
//
// # Invariants
//
//   - A pool change is validated against every pool and claim it read and
//     written in a transaction that compares the pools version and (for an
//     update or a removal) that no claim changed since: no overlapping pools,
//     no orphaned claim.
//   - A claim creates the CIDR key, rewrites the node's index and record,
//     and compares the index and the pools version, all in one transaction:
//     a CIDR is held by at most one node, and a node's index lists exactly
//     the CIDRs whose claims name it.
//   - GC reclaims a node's CIDRs only in a transaction that checks its record
//     (and so its lease) is still gone: never a live node's.
//
// Claimer and Pools start no goroutines; GC is for one goroutine (the
// control plane's leader, or meshctl).
package nodecidr
