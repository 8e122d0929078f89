package controlplane

import (
	"context"
	"fmt"

	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/policy"
	"github.com/meshplane/meshplane/service"
)

// Kind is one kind of desired state the control plane writes to etcd.
type Kind uint8

// The kinds, each under its own prefix of the cluster's keys.
const (
	KindPod       Kind = iota + 1 // pods/<node>/<namespace>/<name>
	KindNamespace                 // namespaces/<namespace>
	KindService                   // services/<namespace>/<name>
	KindPolicy                    // policies/<namespace>/<name>
	KindNode                      // members/<node>: the node membership
)

// Kinds lists every kind, in the order a full resync visits them.
var allKinds = []Kind{KindNamespace, KindPod, KindService, KindPolicy, KindNode}

// String names the kind, as metrics and logs label it.
func (k Kind) String() string {
	switch k {
	case KindPod:
		return "pod"
	case KindNamespace:
		return "namespace"
	case KindService:
		return "service"
	case KindPolicy:
		return "policy"
	case KindNode:
		return "node"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Notify tells the control plane that the desired value of one object may
// have changed (created, updated or deleted). It never blocks and never
// fails: it marks the key dirty in a coalescing queue (a key queued twice
// before the reconciler takes it is reconciled once, with the value the
// source holds then), so a watch callback may call it directly. It is
// safe for concurrent use.
type Notify func(kind Kind, key string)

// Source is where the desired state comes from: Kubernetes informers in
// production (controlplane/k8s), the lab's topology in the lab, a fake in
// tests. The control plane is level-triggered: a notification carries only
// a key, and the reconciler asks the source's Lister for the key's value
// when it gets to it; a full resync (every key of every kind, at start and
// then periodically) repairs anything a lost notification or a write from
// outside left behind.
type Source interface {
	// Run watches the desired state and calls notify for every key whose
	// value may have changed, until ctx ends; it returns ctx's error, or
	// an error that ends the control plane (a watch that cannot start).
	// Run is called once, before any other method returns meaningful
	// data; notify may be called from any goroutine, concurrently.
	Run(ctx context.Context, notify Notify) error
	// WaitSynced blocks until the source holds a complete first view of
	// every kind it provides (the informers' initial lists), or ctx ends.
	// The control plane resyncs only after it: a partial view would delete
	// what is still there.
	WaitSynced(ctx context.Context) error
	// Kinds returns the listers of the kinds this source provides. It is
	// called once, after WaitSynced.
	Kinds() Kinds
}

// InvalidReporter is an optional capability of a Source: it is told of
// every object it holds that cannot be written (Lister.Get returned an
// error), so that it can say so where the object's owner looks
// (controlplane/k8s: a Kubernetes Event on the object). ReportInvalid is
// called from the kind's reconciler goroutine, at every reconcile of the
// object (so also at each resync): it must not block, and should
// deduplicate. Config.OnInvalid, when set, replaces it.
type InvalidReporter interface {
	ReportInvalid(kind Kind, key string, err error)
}

// Kinds holds one Lister per kind. A nil Lister means the source does not
// provide the kind: the control plane leaves its prefix alone (the lab, for
// example, leaves policies to meshctl policy apply).
//
// A source may notify keys of a kind it does not provide: they are
// counted and dropped.
type Kinds struct {
	// Pods are keyed "<namespace>/<name>" (pod.Pod.Owner); the etcd key
	// adds the node (pods/<node>/<namespace>/<name>). A pod not yet
	// scheduled (no node yet) or one that has finished has no value (ok
	// false): the agent needs the metadata before the CNI call, so an IP is
	// not required.
	Pods Lister[pod.Pod]
	// Namespaces are keyed by name.
	Namespaces Lister[pod.Namespace]
	// Services are keyed "<namespace>/<name>"; build each value with
	// service.Build so that every source translates the same way.
	Services Lister[service.Service]
	// Policies are keyed "<namespace>/<name>"; values come from
	// policy.Parse of the object's manifest. An object that fails it is
	// reported by Get's error (the policy.FieldError), not dropped.
	Policies Lister[*policy.Policy]
	// Nodes are the node membership (members/<node>), keyed by node
	// name: the nodes the orchestrator lists and their addresses. The
	// agents' own records (nodes/<node>, on their leases) are theirs; the
	// garbage collectors read both.
	Nodes Lister[node.Member]
}

// Lister is the desired state of one kind. Its methods read a local cache
// (an informer's store, the lab's state): they do not block on I/O and
// are safe for concurrent use. The reconciler calls them from its one
// goroutine.
type Lister[T any] interface {
	// Keys returns the key of every object the source holds now, in no
	// particular order; the caller owns the slice.
	Keys() []string
	// Get returns the desired value of key. ok is false when the source
	// has no object for key (deleted, or not to be written, such as a pod
	// not yet scheduled): the control plane deletes what it wrote for it.
	// A non-nil error means the object exists but cannot be written (it
	// fails validation): the control plane keeps what etcd holds for the
	// key, so nothing that still exists is deleted, and reports the error.
	// The value is the caller's; the source must not change it later.
	Get(key string) (value T, ok bool, err error)
}
