// Package k8s is the Kubernetes side of mesh-controlplane, and the only
// importer of client-go: it watches the cluster and converts what it sees
// to meshplane's model, as a controlplane.Source.
//
// One SharedInformerFactory holds one informer — one list, then one watch,
// cluster-wide — per kind: Namespaces, Pods, Services, EndpointSlices
// (discovery.k8s.io/v1), NetworkPolicies (networking.k8s.io/v1), Nodes, and
// one more informer over crd's REST client for MeshNetworkPolicies
// (meshplane.io/v1alpha1), which Run installs first (crd.Install) unless
// Config.SkipCRDInstall.
// The control plane is level-triggered: event handlers only pass the key
// of what changed to the control plane's Notify (an EndpointSlice passes
// its Service's, from the kubernetes.io/service-name label); the listers
// (Kinds, Nodes) convert an object from the informer's cache when the
// reconciler asks for it.
//
// The conversions, each usable on its own:
//
//   - PodFrom: namespace, name, UID, labels, node, service account and the
//     containers' ports (names kept, sidecars included). Pods that are not
//     scheduled, have finished, or use the host's network have no value.
//   - NamespaceFrom: name and labels.
//   - ServiceFrom: a Service and its EndpointSlices through service.Build
//     (every ClusterIP and port, node ports, session affinity, the traffic
//     policies; backends by their ready, serving and terminating
//     conditions). ExternalName services have no value.
//   - PolicyFrom: the NetworkPolicy's manifest, as JSON, through
//     policy.Parse, the one policy parser. A policy that fails it is a
//     *PolicyError carrying the policy.FieldErrors, for the control plane
//     to report (as an Event) instead of writing it.
//   - MeshPolicyFrom: a MeshNetworkPolicy's Document through policy.Parse.
//     NetworkPolicies and MeshNetworkPolicies share the Policies lister's
//     keys (policies/<namespace>/<name>); both of one name is an error on
//     both. Every verdict on a MeshNetworkPolicy is queued for its Accepted
//     condition (crd.Writer.ReportMeshNetworkPolicy: also a Warning Event
//     when invalid), written by a goroutine of Run: only the leader's
//     reconcilers call the lister, so only the leader writes status.
//   - NodeFrom: name and InternalIP / ExternalIP addresses; the Nodes
//     lister of Kinds gives them as node.Member (members/<node>).
//
// The Source is a controlplane.ViewWriter: WriteViews syncs the
// MeshIdentity and MeshNode objects through crd.Writer.
//
// Errors: configuration problems (no kubeconfig, an empty or unreadable
// one) wrap ErrConfig; an apiserver that cannot be reached or rejects the
// credentials wraps ErrUnreachable; each permission RBAC denies is a
// *PermissionError (errors.Is ErrForbidden) naming the verb and resource.
// Check (list and watch on the seven resources, create on events, and the
// writes of the verdicts and views on meshplane.io) finds them all at
// once; CRDs that are not installed wrap ErrConfig; Run calls it first, so a control plane
// without its permissions stops with that error instead of retrying in
// the background.
//
// ReportInvalid (controlplane.InvalidReporter) turns an object the control
// plane cannot write into a Warning Event on it (reason MeshplaneInvalid,
// the error as message), once per distinct error: `kubectl describe
// networkpolicy` shows why meshplane does not enforce a policy.
//
// Goroutines: Run starts the informers' goroutines, one that writes the
// queued Events, one that writes the MeshNetworkPolicy verdicts, and the
// crd.Writer's events broadcaster, and stops them (and waits for them) before it returns.
package k8s
