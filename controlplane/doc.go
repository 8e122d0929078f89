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
// write). The reconciler takes batches of keys, asks the Source's Lister
// for each desired value, compares it with what etcd holds, and writes only
// the difference in transactions of up to 128 operations, each fenced by
// the leader's condition. A full resync (every key the Source holds and
// every key under the kind's prefix in etcd) runs when the leader starts
// and then periodically: it writes what differs and deletes keys whose
// objects are gone, such as pods deleted while no control plane ran.
//
// # Services
//
// service.Build is the one translation from a service's spec and its
// endpoints to the value in etcd; controlplane/k8s (from Services and
// EndpointSlices) and the lab (from its topology) both call it.
package controlplane
