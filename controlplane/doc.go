// Package controlplane is the mesh-controlplane daemon: it takes the
// cluster's desired state from a Source (Kubernetes in production, the
// lab's topology in the lab) and writes what agents need into etcd.
//
// # Model
//
// Level-triggered, per key: the Source calls Notify with the kind and key
// of every object that may have changed; a coalescing queue per kind holds
// the dirty keys (a key is in it at most once, so the queue is bounded by
// the number of objects, and a burst of changes to one object costs one
// write). The kind's reconciler takes batches of keys, asks the Source's
// Lister for each desired value, compares it with its mirror of etcd, and
// writes only the difference in transactions of up to 128 operations,
// each fenced by the leader's condition. A full resync (every key the
// Source holds and every key under the kind's prefix in etcd) runs when a
// replica becomes leader and then every Config.ResyncInterval: it writes
// what differs and deletes keys whose objects are gone, such as pods
// deleted while no control plane ran. An object the Source holds but
// cannot translate keeps what etcd holds and goes to Config.OnInvalid.
//
// # Keys (under /meshplane/v1/<cluster>/)
//
//	key                               written by            lease
//	cluster                           every replica at start, if absent (else compared)  none
//	pods/<node>/<namespace>/<name>    the leader            none
//	namespaces/<namespace>            the leader            none
//	services/<namespace>/<name>       the leader            none
//	policies/<namespace>/<name>       the leader (when the Source provides policies)  none
//	members/<node>                    the leader (when the Source provides nodes)     none
//	leader/controlplane/<lease>       every replica campaigning  the replica's election lease
//
// The cluster record (package cluster) is checked before anything else:
// Run and SyncOnce create it from Config.Cluster and ClusterID when there
// is none, and refuse to go on when it says another name or ID.
//
// A kind the Source does not provide (a nil Lister in Kinds) is left
// alone: the lab leaves policies/ to meshctl policy apply. The garbage
// collectors delete identities/ (identity GC), ipam/ claims of dead nodes
// (IPAM reclaim) and endpoints/<ip> keys whose node and pod are gone; a
// node that is a member (members/) is not gone, and one that is not a
// member, where membership is written, is gone without a grace period.
//
// A Source that is a ViewWriter (controlplane/k8s: the MeshIdentity and
// MeshNode objects) gets the leader's view of identities/ and nodes/:
// during a term, caches of those prefixes trigger WriteViews on every
// change, and a ticker every ViewInterval.
//
// # Services
//
// service.Build is the one translation from a service's spec and its
// endpoints to the value in etcd; controlplane/k8s (from Services and
// EndpointSlices) and the lab (from its topology) both call it.
//
// # Goroutines
//
// Run owns, through one errgroup, the Source's Run, the metrics server
// and the leader loop, and returns after all have exited. The leader loop
// campaigns; during a term a second errgroup owns one goroutine per
// reconciler (each the only user of its kind's mirror and the only caller
// of its Lister), one for the garbage collectors and, for a ViewWriter,
// one that publishes the views (with the goroutines of its three caches); the term ends, and
// the loop resigns and campaigns again, only after they have returned.
// SyncOnce runs one term's resync on the caller's goroutine.
package controlplane
