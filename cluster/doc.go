// Package cluster is the model of a cluster's identity: its name and its
// ID in a mesh (1-255), stored once in the cluster's etcd beside its pod
// pools, at cluster (kvstore.Keys.ClusterRecord), on no lease. It is pure
// (the standard library and package identity): it says what the record
// holds, how it is encoded and checked, and how a configuration that
// disagrees with it is reported; kvstore.EnsureCluster writes and reads
// it.
//
// The record is permanent. The cluster ID is in bits 16-23 of every
// identity the cluster allocates (package identity) and in every node
// record, so a cluster whose ID changed under running agents would hold
// identities of two clusters at once. Nothing rewrites the record: the
// first writer creates it with a create-if-absent transaction, and every
// later one compares it with its configuration and refuses to go on when
// a field differs (MismatchError).
//
// Writers and readers, all through kvstore.EnsureCluster:
//
//   - meshctl cluster init, and meshctl ipam pool add/update before they
//     write a pool: create it if absent, else compare.
//   - mesh-controlplane at start (Run, and SyncOnce for the lab): create
//     it if absent, else compare; on a mismatch it does not start.
//   - mesh-agent at start, before it writes anything (lease, node record,
//     CIDR claim): create it if absent, else compare; on a mismatch it
//     exits with the error. An agent creates the record, rather than
//     waiting for one, so that the first agent of a fresh cluster (the lab,
//     the demo, one machine) works alone, as it creates the default IPAM
//     pool.
//   - meshctl cluster show reads it.
//
// The pod CIDRs that meshctl connect will check are not copied here:
// they are the cluster's IPAM pools (ipam/pools/), which change, while
// this record does not.
package cluster
