// Package policy is meshplane's network policy model: Kubernetes
// NetworkPolicy and our MeshNetworkPolicy, how they are parsed, validated
// and stored, and how they resolve to the per-endpoint (direction, remote
// identity, protocol, port) entries the datapath enforces. It is pure code:
// no I/O, no goroutines, no logging.
//
// # Documents
//
// Parse reads YAML as users write it for Kubernetes: one or more documents
// separated by "---" lines, each
//
//   - a NetworkPolicy (apiVersion networking.k8s.io/v1), exactly as
//     Kubernetes defines it: spec.podSelector, spec.policyTypes,
//     spec.ingress[].from[] and spec.egress[].to[] peers (podSelector,
//     namespaceSelector, ipBlock{cidr, except}), ports[] (protocol TCP, UDP
//     or SCTP, default TCP; port a number or a port name, absent for every
//     port; endPort for a range);
//   - a MeshNetworkPolicy (apiVersion meshplane.io/v1alpha1): the same
//     spec, plus an optional clusters list on each selector peer naming the
//     mesh clusters whose pods it matches ("*" for all of them);
//   - or a List of them, as kubectl get -o yaml prints.
//
// Unknown fields are errors, except in metadata, where every ObjectMeta
// field is accepted (so exported manifests apply as they are) and only name
// and namespace (default "default") mean anything. Validation follows the
// API server's (names, label selector syntax and operators, CIDRs that
// must be masked, excepts strictly inside their cidr, ports 1-65535,
// endPort only with a numeric port and not below it, IANA port names, one
// kind of peer per peer) and adds the MeshNetworkPolicy rules. Every error
// wraps ErrInvalid and is a *FieldError that names the document, the
// policy and the field path and says what to do, e.g.
//
//	policy "deny-all" (document 2): spec.ingress[0].from[1].ipBlock.except[0]: 10.0.0.0/8 is not inside cidr 192.168.0.0/16
//
// Parse is all-or-nothing, and several problems are reported at once
// (errors.Join). Two documents may not define the same namespace/name, and
// NetworkPolicy and MeshNetworkPolicy share that name space: both are
// stored under policies/<namespace>/<name>.
//
// Parse and Decode default policies as Kubernetes does (namespace
// "default"; policyTypes Ingress, plus Egress when spec.egress has rules;
// protocol TCP) and make empty lists nil. Encode writes that canonical form
// as JSON, the value stored in etcd; Decode reads it back, strictly, and
// Decode(Encode(p)) equals p. Manifest writes the YAML a user would write.
//
// # Limits
//
// Parse, Decode, Validate and Encode bound what one policy may hold and
// expand to (MaxInputBytes, MaxPolicyBytes, MaxRules, MaxPeers, MaxPorts,
// MaxExcepts, MaxSelectorTerms, MaxValues) and, above all, MaxEntries: the
// entries one policy makes on each endpoint it selects, counting one
// identity per peer (each rule's peers times its ports, a port range as the
// aligned blocks the datapath stores). A policy over a limit is invalid,
// with a *FieldError naming the limit; one written to etcd by hand is then
// an invalid value to the agents, never expanded.
//
// # Identity labels
//
// Selectors match the label sets of security identities (package labels),
// which the agent builds with PodLabels:
//
//	k8s:<key>=<value>                        each label of the pod
//	k8s:io.kubernetes.pod.namespace=<ns>     the pod's namespace
//	ns:<key>=<value>                         each label of the namespace
//	ns:kubernetes.io/metadata.name=<ns>      always, as Kubernetes sets it
//	mesh:cluster=<cluster>                   the pod's cluster
//
// Reserved identities (1-255: host, world, remote-node, ...) carry none of
// these, so selectors never match them.
//
// # Semantics
//
// An endpoint is enforced in a direction when some policy whose podSelector
// selects it (in the policy's namespace) lists that direction in
// policyTypes; then it is default-deny in that direction, and the union of
// the rules of every such policy is allowed. An endpoint that no policy
// selects for a direction is not enforced in it. Rules only allow: there
// are no deny rules, so the order of policies never matters. Rules of a
// direction the policy's policyTypes does not list are ignored, as in
// Kubernetes.
//
// A rule with no peers allows every identity (Entry.Identity 0); a rule
// with no ports allows every protocol and port (Entry.Protocol 0). An empty
// rule list, or policyTypes naming a direction with no rules, allows
// nothing. Peers:
//
//   - podSelector alone: pods of the policy's namespace whose k8s: labels
//     match;
//   - namespaceSelector alone: every pod of the namespaces whose ns:
//     labels match;
//   - both: pods that match podSelector in namespaces that match
//     namespaceSelector;
//   - ipBlock: CIDR identities (Identity.CIDR) whose prefix lies inside
//     cidr and inside none of except. The world identity (2) stands for
//     0.0.0.0/0 and ::/0 and is matched only by an ipBlock whose cidr is
//     /0. Pod identities are never matched by an ipBlock: the engine
//     matches identities, and a pod's identity is its labels'. Addresses
//     are the agent's side: it gives each prefix of CIDRs a CIDR identity
//     and classifies an address by the longest of those prefixes (and of
//     WorldCIDRs, as world) that contains it. Since every cidr and every
//     except is among them, that prefix P lies inside a block's cidr iff
//     the address does, and inside one of its excepts iff the address
//     does (prefixes that contain one address are nested), so the entries
//     for P's identity allow exactly the addresses the block allows,
//     Kubernetes' "in cidr and in no except" (TestIPBlockLongestPrefix
//     checks it on random blocks). The agent's ipcache holds these
//     prefixes beside pods' and nodes' own entries, which win for their
//     addresses; its CIDR map holds them alone, and the datapath looks the
//     remote address up there when the remote's own identity allowed
//     nothing, so an ipBlock that covers a pod's IP selects the pod, as
//     the upstream conformance tests expect (Cilium does not; the agent's
//     --policy-ipblock-selects-pods=false keeps that behaviour).
//
// Selector peers match the local cluster's pods only, unless a
// MeshNetworkPolicy peer lists clusters: then pods of the listed clusters
// ("*": every cluster, the local one included). An identity without a
// mesh:cluster label matches only "*". Choosing the local cluster by
// default keeps a plain NetworkPolicy meaning what it means in Kubernetes
// when clusters are joined into a mesh: connecting a cluster never widens
// an existing policy.
//
// Named ports resolve, like Cilium's, for ingress against the selected
// endpoint's own ports (Endpoint.Ports) and for egress against the union of
// the named ports of every pod in the cluster (SetNamedPorts), whichever
// pod the traffic goes to. A name that resolves to nothing allows nothing.
//
// # Engine
//
// The Engine turns policies, remote identities, local endpoints and the
// cluster's named ports into the wanted entries of each local endpoint,
// and answers every change with a Delta: the entries that became wanted or
// stopped being wanted, and the endpoints whose enforcement changed. The
// agent writes exactly those into the policy maps.
//
// Resolution is incremental. Each distinct peer selector is compiled once
// and cached with the set of identities it matches and the rules that use
// it; selectors are indexed by namespace (peers without namespaceSelector)
// or kind, and identities likewise. So:
//
//   - SetIdentity tests the new identity against the candidate cached
//     selectors only (those of its namespace, those across namespaces, or
//     the ipBlocks for a CIDR identity) and adds entries for that identity
//     only, on the endpoints selected by policies whose rules use a
//     matching selector; DeleteIdentity follows the identity's own list of
//     selectors.
//   - SetPolicy and DeletePolicy touch only the endpoints the policy (or
//     its previous version) selects; a selector new to the cache is
//     evaluated once against the candidate identities. Setting an
//     unchanged policy is no change.
//   - SetEndpoint tests only the policies of the endpoint's namespace.
//   - SetNamedPorts touches only the egress rules that name a port that
//     appeared or disappeared cluster-wide.
//
// Each (endpoint, entry) carries a count of its contributions (policy,
// rule, peer, port); an entry is added when the count goes 0 -> 1 and
// removed at 1 -> 0, so overlapping rules of several policies make one
// entry that stays until its last contributor goes. A change undone within
// the same call is not reported. A test applies random operations and
// checks that the result equals a fresh Engine fed the final state, and
// that the deltas add up to it.
//
// SetPolicy expects a valid policy (from Parse or Decode) and does not
// validate; parts of an invalid one fail closed (they match nothing).
//
// The Engine is not safe for concurrent use; the agent serialises calls.
package policy
