package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/labels"
	"github.com/meshplane/meshplane/pod"
)

// A pod's labels come from etcd: the control plane publishes each pod's
// metadata under pods/<node>/<namespace>/<name> and each namespace's
// labels under namespaces/<namespace>; the agent watches its own node's
// pods and all namespaces (podMetadata). An endpoint takes its labels,
// namespace labels and ports from there (Endpoint.withMetadata) when it is
// added, and again whenever they change (endpoints.relabel, run by
// relabelLoop): a relabelled endpoint gets the identity of its new label
// set without the pod restarting. See docs/architecture.md, "A pod's
// labels: from etcd to its identity".

// DefaultPodMetadataWait is how long AddEndpoint waits, for a request
// without labels, for the pod's metadata to reach etcd (Config).
const DefaultPodMetadataWait = 30 * time.Second

// metadata is what etcd says of one pod and its namespace; nil: nothing
// (yet).
type metadata struct {
	pod       *pod.Pod
	namespace *pod.Namespace
}

// metadataSource is where endpoints read pods' metadata.
type metadataSource interface {
	// lookup returns what etcd has now (as far as the watch has seen);
	// it does not block.
	lookup(namespace, name string) metadata
	// wait returns once the metadata has been listed from etcd and, with
	// need, once the pod and its namespace are there. It gives up when
	// ctx ends or after its own timeout, with an error that wraps
	// ErrNoMetadata.
	wait(ctx context.Context, namespace, name string, need bool) error
}

// withMetadata returns the endpoint with the labels and ports of the pod's
// metadata, and the labels of its namespace's, where etcd has them.
func (ep Endpoint) withMetadata(m metadata) Endpoint {
	if m.pod != nil {
		ep.Labels = maps.Clone(m.pod.Labels)
		ep.Ports = slices.Clone(m.pod.Ports)
		ep.PodMetadata = true
	}
	if m.namespace != nil {
		ep.NamespaceLabels = maps.Clone(m.namespace.Labels)
		ep.NamespaceMetadata = true
	}
	return ep
}

// sameLabels reports whether ep and o have the same labels, namespace
// labels and ports, from the same sources.
func (ep *Endpoint) sameLabels(o *Endpoint) bool {
	return maps.Equal(ep.Labels, o.Labels) && maps.Equal(ep.NamespaceLabels, o.NamespaceLabels) &&
		slices.Equal(ep.Ports, o.Ports) && ep.PodMetadata == o.PodMetadata && ep.NamespaceMetadata == o.NamespaceMetadata
}

// relabelResult is what relabel did to one endpoint.
type relabelResult struct {
	changed  bool        // its labels, namespace labels or ports changed
	old, new identity.ID // its identity before and after
}

// relabel brings the endpoint of owner to the labels, namespace labels and
// ports m gives, with the identity of its new label set. In order:
//
//  1. allocate the new identity (the endpoint now holds both);
//  2. write the state file: new labels and identity, the old label set in
//     Superseded (a crash from here on restarts with the new identity, and
//     restore drops the old reference);
//  3. install it: the endpoints map value and the policy engine switch to
//     the new identity together, under the policy state's lock;
//  4. publish endpoints/<ip> with the new identity (the local ipcache
//     entry with it, see Agent.publish);
//  5. release the old identity.
//
// So the endpoint always has an identity it holds, and the node's maps
// never mix the old and the new. If step 4 fails (etcd), the endpoint
// stays unsettled: the old identity stays held and a later call (the
// relabel loop retries) publishes and releases. An endpoint whose restore
// has not run yet is left to restore, which calls back here.
func (e *endpoints) relabel(ctx context.Context, d endpointDeps, owner string, m metadata) (res relabelResult, err error) {
	unlock := e.owners.lock(owner)
	defer unlock()
	e.mu.Lock()
	ep, referenced := e.byKey[owner], e.referenced[owner]
	_, unsettled := e.unsettled[owner]
	e.mu.Unlock()
	if ep == nil || !referenced {
		return res, nil
	}
	res.old, res.new = ep.Identity, ep.Identity
	if unsettled {
		if err := e.settle(ctx, d, owner, ep); err != nil {
			return res, err
		}
	}
	next := ep.withMetadata(m)
	if ep.sameLabels(&next) {
		return res, nil
	}
	res.changed = true
	if err := next.validate(); err != nil {
		return res, err
	}
	oldSet, err := ep.labelSet(e.cluster, e.filter)
	if err != nil {
		return res, err
	}
	newSet, err := next.labelSet(e.cluster, e.filter)
	if err != nil {
		return res, err
	}
	// Labels the filter drops, and ports, change no identity.
	newIdentity := !newSet.Equal(oldSet)
	if newIdentity {
		id, err := d.allocateIdentity(ctx, newSet)
		if err != nil {
			return res, fmt.Errorf("identity for %s: %w", owner, err)
		}
		next.Identity = id
		next.Superseded = append(slices.Clone(ep.Superseded), oldSet.String())
		if len(next.Superseded) > maxSuperseded {
			next.Superseded = next.Superseded[len(next.Superseded)-maxSuperseded:]
		}
		afterStep("relabel:identity", owner, netip.Addr{})
	}
	if err := e.save(&next); err != nil {
		if newIdentity {
			_ = d.releaseIdentity(newSet)
		}
		return res, err
	}
	afterStep("relabel:state", owner, netip.Addr{})
	e.mu.Lock()
	*ep = next
	if newIdentity {
		e.unsettled[owner] = append(e.unsettled[owner], oldSet)
	} else if _, ok := e.unsettled[owner]; !ok {
		e.unsettled[owner] = nil // the ports in the entries
	}
	e.mu.Unlock()
	res.new = ep.Identity
	e.hooks.relabelled(ep, newSet)
	return res, e.settle(ctx, d, owner, ep)
}

// settle publishes a relabelled endpoint's entries, then releases the
// identities it held before. The caller holds owner's lock.
func (e *endpoints) settle(ctx context.Context, d endpointDeps, owner string, ep *Endpoint) error {
	for _, ip := range ep.IPs {
		if err := d.publish(ctx, ep.ipcacheEntry(ip, ep.Identity)); err != nil {
			return fmt.Errorf("publish %s of %s: %w", ip, owner, err)
		}
		afterStep("relabel:published", owner, ip)
	}
	e.mu.Lock()
	sets := e.unsettled[owner]
	delete(e.unsettled, owner)
	e.mu.Unlock()
	var errs []error
	for _, set := range sets {
		errs = append(errs, d.releaseIdentity(set))
	}
	afterStep("relabel:released", owner, netip.Addr{})
	return errors.Join(errs...)
}

// podMetadata is the metadata of this node's pods and of all namespaces,
// from two watch caches. Its handlers never block: they record which pods
// and namespaces changed for relabelLoop, and wake the AddEndpoint calls
// that wait for a pod's metadata.
type podMetadata struct {
	pods       *kvstore.Cache[pod.Pod]       // keys "<namespace>/<name>"
	namespaces *kvstore.Cache[pod.Namespace] // keys "<namespace>"
	timeout    time.Duration                 // of wait
	wake       chan struct{}                 // capacity 1: dirty has something

	mu      sync.Mutex    // mu guards changed and the dirty sets
	changed chan struct{} // closed (and replaced) at every change
	all     bool          // every endpoint is to be looked at
	dirty   map[string]struct{}
	dirtyNS map[string]struct{}
}

func newPodMetadata(pods *kvstore.Cache[pod.Pod], namespaces *kvstore.Cache[pod.Namespace], timeout time.Duration) *podMetadata {
	m := &podMetadata{
		pods: pods, namespaces: namespaces, timeout: timeout,
		wake: make(chan struct{}, 1), changed: make(chan struct{}),
		dirty: make(map[string]struct{}), dirtyNS: make(map[string]struct{}),
	}
	pods.Subscribe(podHandler{m})
	namespaces.Subscribe(namespaceHandler{m})
	return m
}

func (m *podMetadata) lookup(namespace, name string) metadata {
	var md metadata
	if p, ok := m.pods.Get(namespace + "/" + name); ok {
		md.pod = &p
	}
	if n, ok := m.namespaces.Get(namespace); ok {
		md.namespace = &n
	}
	return md
}

func (m *podMetadata) wait(caller context.Context, namespace, name string, need bool) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(caller, m.timeout)
	defer cancel()
	if err := m.pods.WaitSynced(ctx); err != nil {
		return fmt.Errorf("%w: the agent has not listed its pods' metadata yet: %w", ErrNotReady, err)
	}
	if err := m.namespaces.WaitSynced(ctx); err != nil {
		return fmt.Errorf("%w: the agent has not listed the namespaces yet: %w", ErrNotReady, err)
	}
	for need {
		m.mu.Lock()
		changed := m.changed
		m.mu.Unlock()
		md := m.lookup(namespace, name)
		if md.pod != nil && md.namespace != nil {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			var missing []string
			if md.pod == nil {
				missing = append(missing, "pods/<node>/"+namespace+"/"+name)
			}
			if md.namespace == nil {
				missing = append(missing, "namespaces/"+namespace)
			}
			bound := fmt.Sprintf("the agent's --pod-metadata-wait %s", m.timeout)
			if caller.Err() != nil {
				bound = "the caller's deadline"
			}
			return fmt.Errorf("%w: %s not there after %s (%s; the request has no labels, so they must come from etcd): is the control plane running and does it see the pod on this node?",
				ErrNoMetadata, strings.Join(missing, " and "), time.Since(start).Round(time.Millisecond), bound)
		}
	}
	return nil
}

// markLocked records a change and wakes waiters and the loop.
func (m *podMetadata) markLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *podMetadata) markPods(owners ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, o := range owners {
		m.dirty[o] = struct{}{}
	}
	m.markLocked()
}

func (m *podMetadata) markAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.all = true
	m.markLocked()
}

// take returns and clears what changed.
func (m *podMetadata) take() (all bool, pods, namespaces map[string]struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	all, pods, namespaces = m.all, m.dirty, m.dirtyNS
	m.all, m.dirty, m.dirtyNS = false, make(map[string]struct{}), make(map[string]struct{})
	return all, pods, namespaces
}

// podHandler receives this node's pods (keys "<namespace>/<name>").
type podHandler struct{ m *podMetadata }

func (h podHandler) Upsert(key string, _ pod.Pod) { h.m.markPods(key) }

// Delete keeps the endpoint's labels: the pod is going (a CNI DEL
// follows), or its metadata will be written again.
func (podHandler) Delete(string) {}

// namespaceHandler receives the namespaces.
type namespaceHandler struct{ m *podMetadata }

func (h namespaceHandler) Upsert(key string, _ pod.Namespace) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dirtyNS[key] = struct{}{}
	m.markLocked()
}

func (namespaceHandler) Delete(string) {}

// relabelTimeout bounds one endpoint's relabel (its etcd writes).
const relabelTimeout = 10 * time.Second

// relabelLoop relabels the endpoints whose pod or namespace metadata
// changed, until ctx ends. It starts after restoreEndpoints, with every
// endpoint to look at once: labels may have changed while the agent was
// down. A relabel that fails on etcd is retried with backoff; one whose
// new labels are invalid is not (it waits for the next change).
func (a *Agent) relabelLoop(ctx context.Context, m *podMetadata) {
	m.markAll()
	backoff := 200 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		}
		all, pods, namespaces := m.take()
		if all || len(namespaces) > 0 {
			for _, ep := range a.eps.list() {
				if _, ok := namespaces[ep.Namespace]; all || ok {
					pods[ep.owner()] = struct{}{}
				}
			}
		}
		var failed []string
		for _, owner := range slices.Sorted(maps.Keys(pods)) {
			if !a.relabelOne(ctx, m, owner) {
				failed = append(failed, owner)
			}
		}
		if len(failed) == 0 {
			backoff = 200 * time.Millisecond
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
		m.markPods(failed...)
	}
}

// relabelOne relabels one endpoint; false means retry.
func (a *Agent) relabelOne(ctx context.Context, m *podMetadata, owner string) bool {
	namespace, name, _ := strings.Cut(owner, "/")
	rctx, cancel := context.WithTimeout(ctx, relabelTimeout)
	defer cancel()
	res, err := a.eps.relabel(rctx, a, owner, m.lookup(namespace, name))
	switch {
	case err != nil && ctx.Err() != nil:
		return true
	case errors.Is(err, ErrInvalidEndpoint):
		a.met.relabelErrors.Inc()
		a.log.Error("cannot relabel an endpoint: its metadata in etcd is invalid; it keeps its labels until the metadata is fixed",
			"endpoint", owner, "err", err)
		return true
	case err != nil:
		a.met.relabelErrors.Inc()
		a.log.Warn("cannot relabel an endpoint yet; retrying", "endpoint", owner, "err", err)
		return false
	case res.changed:
		a.met.relabels.Inc()
		a.log.Info("endpoint relabelled", "endpoint", owner, "oldIdentity", res.old, "identity", res.new)
	}
	return true
}

// relabelled is the agent's endpointHooks.relabelled: the map entries and
// policy; the programs stay attached.
func (a *Agent) relabelled(ep *Endpoint, set labels.Set) {
	a.pol.installEndpoint(ep, set)
}
