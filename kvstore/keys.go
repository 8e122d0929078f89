package kvstore

import (
	"fmt"
	"strings"

	"github.com/meshplane/meshplane/cluster"
)

// Root is the prefix of every key meshplane writes. The version segment lets
// a future layout live beside this one during an upgrade.
const Root = "/meshplane/v1/"

// Keys is the etcd key layout of one cluster. Every key meshplane writes is
// built here, so the layout is in one place (docs/kvstore.md mirrors it):
//
//	<root><cluster>/cluster                         cluster record (JSON)    no lease; created once (EnsureCluster), never rewritten
//	<root><cluster>/identities/id/<id>              canonical label set      no lease; deleted only by identity GC
//	<root><cluster>/identities/labels/<hash>        id (decimal)             no lease; created with the id key
//	<root><cluster>/identities/refs/<hash>/<node>   "" (empty)               the node's session lease
//	<root><cluster>/ipam/pools/<name>               pool (JSON)              no lease; written by meshctl ipam pool
//	<root><cluster>/ipam/pools-version              "" (bumped)              no lease; changes with every pool write
//	<root><cluster>/ipam/cidrs/<cidr>               claim (JSON: node, pool) no lease; deleted by IPAM GC
//	<root><cluster>/ipam/nodes/<node>               the node's CIDRs (JSON)  no lease; same transaction as the claims
//	<root><cluster>/nodes/<node>                    node record (JSON)       the node's session lease
//	<root><cluster>/members/<node>                  membership (JSON)        no lease; written by the control plane from Kubernetes Nodes
//	<root><cluster>/endpoints/<ip>                  ipcache entry (JSON)     the hosting node's session lease
//	<root><cluster>/services/<namespace>/<name>     service (JSON)           no lease; written by the control plane
//	<root><cluster>/policies/<namespace>/<name>     policy (JSON)            no lease; written by meshctl policy apply or the control plane
//	<root><cluster>/leader/<name>/<lease>           candidate (its value)    the candidate's own election lease (Campaign)
//	<root><cluster>/pods/<node>/<namespace>/<name>  pod metadata (JSON)      no lease; written by the control plane
//	<root><cluster>/namespaces/<namespace>          namespace labels (JSON)  no lease; written by the control plane
//
// Pods are keyed by node first so that an agent watches only its own
// node's pods (pods/<node>/): with thousands of agents, a watch on every
// pod would send each of a cluster's label changes to every agent.
//
// <cidr> is the CIDR with '/' written as '_' (10.192.3.0_24).
//
// <lease> is the candidate's lease ID in hex; the candidate whose key has
// the lowest create revision leads (see Campaign).
//
// <hash> is labels.Set.Hash() of the canonical label set. References are
// keyed by the label hash, not the ID, so that an agent that loses the race
// for a new label set still writes its reference in the same transaction
// (it does not know the winner's ID until the transaction answers).
type Keys struct {
	cluster string
	base    string
}

// ValidateClusterName checks a cluster name: a DNS label of at most 32
// characters (cluster.ValidateName, the one rule), as an ErrConfig error.
func ValidateClusterName(name string) error {
	if err := cluster.ValidateName(name); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}

// NewKeys returns the key layout of a cluster.
func NewKeys(cluster string) (Keys, error) {
	if err := ValidateClusterName(cluster); err != nil {
		return Keys{}, err
	}
	return Keys{cluster: cluster, base: Root + cluster + "/"}, nil
}

// Cluster returns the cluster name.
func (k Keys) Cluster() string { return k.cluster }

// Prefix returns the prefix of all of the cluster's keys.
func (k Keys) Prefix() string { return k.base }

// ClusterRecord is the key of the cluster's record (cluster.Record: its
// name and ID), on no lease: the first writer creates it and nobody
// rewrites it (EnsureCluster).
func (k Keys) ClusterRecord() string { return k.base + "cluster" }

// IdentityIDPrefix is the prefix of the ID → labels keys.
func (k Keys) IdentityIDPrefix() string { return k.base + "identities/id/" }

// IdentityID is the key holding the labels of an ID.
func (k Keys) IdentityID(id string) string { return k.IdentityIDPrefix() + id }

// IdentityLabelsPrefix is the prefix of the label hash → ID index.
func (k Keys) IdentityLabelsPrefix() string { return k.base + "identities/labels/" }

// IdentityLabels is the index key of a label set's hash.
func (k Keys) IdentityLabels(hash string) string { return k.IdentityLabelsPrefix() + hash }

// IdentityRefsPrefix is the prefix of all nodes' references.
func (k Keys) IdentityRefsPrefix() string { return k.base + "identities/refs/" }

// IdentityRefs is the prefix of the references to one label set.
func (k Keys) IdentityRefs(hash string) string { return k.IdentityRefsPrefix() + hash + "/" }

// IdentityRef is the reference a node holds on a label set.
func (k Keys) IdentityRef(hash, node string) string { return k.IdentityRefs(hash) + node }

// IPAMPoolsPrefix is the prefix of the cluster's IPAM pools.
func (k Keys) IPAMPoolsPrefix() string { return k.base + "ipam/pools/" }

// IPAMPool is the key of one pool.
func (k Keys) IPAMPool(name string) string { return k.IPAMPoolsPrefix() + name }

// IPAMPoolsVersion is a key every pool change rewrites, so that a
// transaction can compare "no pool changed since I read them" in one compare.
func (k Keys) IPAMPoolsVersion() string { return k.base + "ipam/pools-version" }

// IPAMCIDRsPrefix is the prefix of node CIDR claims.
func (k Keys) IPAMCIDRsPrefix() string { return k.base + "ipam/cidrs/" }

// IPAMCIDR is the claim key of a node CIDR.
func (k Keys) IPAMCIDR(cidr string) string {
	return k.IPAMCIDRsPrefix() + strings.ReplaceAll(cidr, "/", "_")
}

// IPAMNodesPrefix is the prefix of the per-node CIDR index.
func (k Keys) IPAMNodesPrefix() string { return k.base + "ipam/nodes/" }

// IPAMNode is the key listing a node's CIDRs.
func (k Keys) IPAMNode(node string) string { return k.IPAMNodesPrefix() + node }

// NodesPrefix is the prefix of node records.
func (k Keys) NodesPrefix() string { return k.base + "nodes/" }

// Node is the key of a node's record, on the node's session lease.
func (k Keys) Node(name string) string { return k.NodesPrefix() + name }

// MembersPrefix is the prefix of the node membership: the nodes that
// belong to the cluster (node.Member), written by the control plane's
// leader, on no lease.
func (k Keys) MembersPrefix() string { return k.base + "members/" }

// Member is the key of a node's membership.
func (k Keys) Member(node string) string { return k.MembersPrefix() + node }

// EndpointsPrefix is the prefix of the ipcache keys: IP → identity, node.
func (k Keys) EndpointsPrefix() string { return k.base + "endpoints/" }

// Endpoint is the ipcache key of one IP (its text form).
func (k Keys) Endpoint(ip string) string { return k.EndpointsPrefix() + ip }

// ServicesPrefix is the prefix of the service keys.
func (k Keys) ServicesPrefix() string { return k.base + "services/" }

// Service is the key of one service.
func (k Keys) Service(namespace, name string) string {
	return k.ServicesPrefix() + namespace + "/" + name
}

// PoliciesPrefix is the prefix of the network policy keys.
func (k Keys) PoliciesPrefix() string { return k.base + "policies/" }

// Policy is the key of one network policy (policy.Policy.Encode): a
// NetworkPolicy and a MeshNetworkPolicy of the same namespace and name
// share it.
func (k Keys) Policy(namespace, name string) string {
	return k.PoliciesPrefix() + namespace + "/" + name
}

// LeadersPrefix is the prefix of the cluster's leader elections.
func (k Keys) LeadersPrefix() string { return k.base + "leader/" }

// Leader is the prefix of one election (name: "controlplane"), which
// Campaign and Leader take: each candidate's key is Leader(name) + "/" +
// its lease in hex.
func (k Keys) Leader(name string) string { return k.LeadersPrefix() + name }

// PodsPrefix is the prefix of the pod metadata keys (pod.Pod.Key is
// relative to it).
func (k Keys) PodsPrefix() string { return k.base + "pods/" }

// NodePodsPrefix is the prefix of the metadata of the pods on one node:
// what that node's agent watches.
func (k Keys) NodePodsPrefix(node string) string { return k.PodsPrefix() + node + "/" }

// Pod is the metadata key of one pod on node.
func (k Keys) Pod(node, namespace, name string) string {
	return k.NodePodsPrefix(node) + namespace + "/" + name
}

// NamespacesPrefix is the prefix of the namespace keys.
func (k Keys) NamespacesPrefix() string { return k.base + "namespaces/" }

// Namespace is the key of one namespace's metadata (its labels).
func (k Keys) Namespace(name string) string { return k.NamespacesPrefix() + name }
