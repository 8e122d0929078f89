// Package node is the model of a node as the cluster sees it: the node
// record stored at nodes/<node> in etcd (kvstore.Keys.Node), on the node's
// session lease. It is pure (standard library only), like ipcache and
// service: it says what a record holds and how it is encoded and checked,
// and nothing about who writes it.
//
// Writers and readers:
//
//   - kvstore/nodecidr writes the record inside its CIDR claim
//     transaction, so that a node's pod CIDRs in the record and the claims
//     never disagree; the agent adds its own fields (SetNodeInfo).
//   - The agent's watch caches read it (Decode): the mirror routes to
//     other nodes' pod CIDRs, gossip joins through GossipAddr, status
//     lists the nodes; meshctl reads PolicyRevision; IPAM's GC takes a
//     record as the sign that a node still exists.
//
// The node membership, members/<node> (Member, DecodeMember), is the
// other half: which nodes the orchestrator lists, and their addresses,
// written by the control plane's leader on no lease. A node may be a
// member without a record (its agent is down) or have a record without
// being a member (a lab, or a node Kubernetes has just deleted).
//
// A record is not the failure detector: the lease is long, and gossip
// tells a dead node within seconds.
package node
