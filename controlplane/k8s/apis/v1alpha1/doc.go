// Package v1alpha1 holds the Go types of meshplane's custom resources,
// API group meshplane.io, version v1alpha1:
//
//   - MeshNetworkPolicy (namespaced, short name mnp): the policy users
//     write. Its spec is exactly what package policy parses for kind
//     MeshNetworkPolicy (a NetworkPolicy spec plus clusters on selector
//     peers): the object marshalled to JSON is a document policy.Parse
//     reads to the same policy as the YAML a user applies with meshctl.
//     The control plane writes status: observedGeneration and the
//     Accepted condition (False, reason Invalid, with policy.Parse's
//     message, for a policy the API server took but meshplane cannot
//     enforce).
//   - MeshIdentity (cluster-scoped, short name mid): a read-only view of
//     one security identity (its ID, its labels, the nodes that reference
//     it), named by the decimal ID.
//   - MeshNode (cluster-scoped, short name mn): a read-only view of one
//     node of the mesh (addresses, pod CIDRs, gossip health, agent state,
//     policy revision), named like the node.
//
// The views are written by the control plane's leader from etcd (package
// controlplane/k8s/crd); etcd, not the API server, is their source of
// truth, and edits to them are overwritten.
//
// The CRD manifests in deploy/crds and zz_generated.deepcopy.go are
// generated from these types and their +kubebuilder markers by
// controller-gen (`make generate`); edit the types, never the output.
//
// +kubebuilder:object:generate=true
// +groupName=meshplane.io
package v1alpha1
