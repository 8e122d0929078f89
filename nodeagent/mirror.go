package nodeagent

import (
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/health"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/nodeagent/reconciler"
	"github.com/meshplane/meshplane/service"
)

// mirror turns the cluster state the watch caches deliver (node records,
// ipcache entries, services) and the health gossip reports into the
// desired contents of the ipcache, services and backends maps.
//
// A node that gossip declares dead (or that left) loses its routes (the
// ipcache entries of its pod CIDRs) and its service backends here; they
// come back when it is alive again. Dead means confirmed (health/doc.go):
// a node whose agent is stalled (unresponsive) or restarting keeps them,
// since its datapath, in the kernel, still forwards. Its own addresses and its pods' IPs
// keep their identities: identity is not reachability.
//
// Node names are unique only within a cluster, so the mirror keys its
// state by cluster as well (nodeRef, endpointRef, serviceRef): two
// clusters that both have a node1 do not collide, and removeCluster drops
// one cluster's entries whole. Every entry comes from one cluster's watch
// (its etcd prefix) or gossip, and the handler says which: today the
// agent subscribes handlers for its own cluster (Config.Cluster) only.
//
// The handlers are called from the caches' delivery goroutines and from
// the gossip goroutine; mu serialises them. Nothing here blocks: the
// tables only record what changed for the reconcilers.
type mirror struct {
	local nodeRef // this node
	// nodeChanged, if set, is poked (without blocking) when a node record
	// changes, so gossip can join a new node at once.
	nodeChanged chan struct{}
	// routesChanged, if set, is called (it must not block) when the
	// routes wantedRoutes returns may have changed.
	routesChanged func()

	mu        sync.Mutex
	nodes     map[nodeRef]node.Record                // mu guards: the node records
	down      map[nodeRef]bool                       // nodes gossip says are dead or left
	epByNode  map[nodeRef]map[netip.Addr]identity.ID // ipcache entries by hosting node
	epNode    map[endpointRef]nodeRef                // the hosting node of each ipcache entry
	services  map[serviceRef]service.Service
	svcByNode map[nodeRef]map[serviceRef]struct{} // services with backends on a node
	svcHeld   map[serviceRef]heldIDs              // IDs each service holds
	// isolated are the IPs of endpoints/<ip> keys that never held a valid
	// value: they have the unknown identity (see endpointHandler.Invalid).
	isolated map[endpointRef]struct{}

	ipc        *projection[bpf.IPCacheKey, bpf.IPCacheValue]
	svc        *projection[bpf.ServiceKey, bpf.ServiceValue]
	be         *projection[bpf.BackendKey, bpf.BackendValue]
	backendIDs *idAllocator[backendRef]
	serviceIDs *idAllocator[frontendRef]
	// idErrors counts services whose entries could not all get IDs.
	idErrors int
}

// nodeRef names a node in the mesh: its cluster and its name, which is
// unique only within the cluster.
type nodeRef struct {
	cluster string
	name    string
}

// String is how sources name the node: cluster/name. Cluster names are
// DNS labels, so the slash is unambiguous.
func (n nodeRef) String() string { return n.cluster + "/" + n.name }

// endpointRef names an ipcache entry (endpoints/<ip>) of one cluster.
type endpointRef struct {
	cluster string
	ip      netip.Addr
}

// String is how sources name the entry: cluster/ip.
func (e endpointRef) String() string { return e.cluster + "/" + e.ip.String() }

// serviceRef names a service of one cluster by its key under services/.
type serviceRef struct {
	cluster string
	key     string
}

// String is how sources name the service: cluster/key.
func (s serviceRef) String() string { return s.cluster + "/" + s.key }

type backendRef struct {
	addr  netip.AddrPort
	proto uint8
}

type frontendRef struct {
	addr  netip.AddrPort
	proto uint8
}

type heldIDs struct {
	frontends []frontendRef
	backends  []backendRef
}

// Sources sort by priority: a node's own entries beat a pod's. Node,
// endpoint and service sources carry their cluster after the prefix
// (srcNode+nodeRef.String()).
const (
	srcNode     = "0node/"
	srcEndpoint = "1ep/"
	srcCIDR     = "2cidr/"
	srcService  = "svc/"
)

func newMirror(local nodeRef, ipc *reconciler.Table[bpf.IPCacheKey, bpf.IPCacheValue],
	svc *reconciler.Table[bpf.ServiceKey, bpf.ServiceValue], be *reconciler.Table[bpf.BackendKey, bpf.BackendValue],
	maxBackends, maxServices uint32) *mirror {
	return &mirror{
		local:      local,
		nodes:      make(map[nodeRef]node.Record),
		down:       make(map[nodeRef]bool),
		epByNode:   make(map[nodeRef]map[netip.Addr]identity.ID),
		epNode:     make(map[endpointRef]nodeRef),
		services:   make(map[serviceRef]service.Service),
		svcByNode:  make(map[nodeRef]map[serviceRef]struct{}),
		svcHeld:    make(map[serviceRef]heldIDs),
		isolated:   make(map[endpointRef]struct{}),
		ipc:        newProjection(ipc),
		svc:        newProjection(svc),
		be:         newProjection(be),
		backendIDs: newIDAllocator[backendRef]("backend", maxBackends),
		serviceIDs: newIDAllocator[frontendRef]("service", maxServices),
	}
}

// seed records the backend and service IDs found in the pinned maps, so a
// restarted agent gives the same objects the same IDs.
func (m *mirror) seed(services map[bpf.ServiceKey]bpf.ServiceValue, backends map[bpf.BackendKey]bpf.BackendValue) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, v := range backends {
		m.backendIDs.seed(backendRef{v.AddrPort(), v.Proto}, k.ID)
	}
	for k, v := range services {
		if k.Slot == 0 {
			m.serviceIDs.seed(frontendRef{k.AddrPort(), k.Proto}, v.ServiceID)
		}
	}
}

// dropSeeds forgets the seeded IDs that no service took once the state
// is loaded; their map entries are pruned.
func (m *mirror) dropSeeds() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.backendIDs.dropUnreferenced()
	m.serviceIDs.dropUnreferenced()
}

func (m *mirror) usableLocked(n nodeRef) bool { return n == m.local || !m.down[n] }

// nodeIPLocked is the address of node n to route ip's family to, if known.
func (m *mirror) nodeIPLocked(n nodeRef, is4 bool) netip.Addr {
	r, ok := m.nodes[n]
	if !ok {
		return netip.Addr{}
	}
	for _, a := range r.IPs {
		if a.Unmap().Is4() == is4 {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// setCIDR gives prefix p the node-local CIDR identity id in the ipcache;
// id 0 removes it. Pods and nodes inside p keep their own (longer or,
// for an equal prefix, higher-priority) entries.
func (m *mirror) setCIDR(p netip.Prefix, id uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id == 0 {
		m.ipc.update(srcCIDR+p.String(), nil)
		return
	}
	m.ipc.update(srcCIDR+p.String(), []kv[bpf.IPCacheKey, bpf.IPCacheValue]{{bpf.IPCacheKeyFor(p), bpf.IPCacheValueFor(id, netip.Addr{}, 0)}})
}

// --- nodes ---

// nodeHandler receives the node records of one cluster, from its nodes/
// prefix. A record names its node but not its cluster (node.Record has
// only the numeric ClusterID): the cluster is the one whose prefix
// delivered it. The agent subscribes one for its own cluster; a remote
// cluster's watch would subscribe its own.
type nodeHandler struct {
	m       *mirror
	cluster string
}

func (h nodeHandler) Upsert(name string, r node.Record) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	n := nodeRef{h.cluster, name}
	m.nodes[n] = r
	m.refreshNodeLocked(n)
	m.pokeNodeChanged()
}

func (m *mirror) pokeNodeChanged() {
	if m.nodeChanged == nil {
		return
	}
	select {
	case m.nodeChanged <- struct{}{}:
	default:
	}
}

func (h nodeHandler) Delete(name string) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	n := nodeRef{h.cluster, name}
	delete(m.nodes, n)
	m.refreshNodeLocked(n)
}

// setHealth applies a gossip state change of node n. Gossip is one
// cluster's (its packets carry the cluster's label), so the agent's
// gossip speaks of nodes of its own cluster.
func (m *mirror) setHealth(n nodeRef, s health.State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	down := s.Down() // unresponsive and restarting nodes keep theirs
	if m.down[n] == down {
		return
	}
	if down {
		m.down[n] = true
	} else {
		delete(m.down, n)
	}
	m.refreshNodeLocked(n)
	for ref := range m.svcByNode[n] {
		m.refreshServiceLocked(ref)
	}
}

// removeCluster drops every entry of cluster: its nodes' addresses, pod
// CIDRs and routes, its ipcache entries, its services (and the backend
// and service IDs they hold), and what gossip said of its nodes. It is
// the "remove" of a remote cluster that leaves the mesh. A cluster that
// is only disconnected, or an agent that restarts, keeps its entries
// until the cluster's watch delivers again: Cilium separates the two
// (stop vs remove, pkg/clustermesh/common/remote_cluster.go). The local
// cluster's entries are the node's own; it is not for them.
func (m *mirror) removeCluster(cluster string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for ref := range m.services {
		if ref.cluster == cluster {
			m.deleteServiceLocked(ref)
		}
	}
	for ref := range m.epNode {
		if ref.cluster == cluster {
			m.deleteEndpointLocked(ref)
		}
	}
	for ref := range m.isolated {
		if ref.cluster == cluster {
			m.deleteEndpointLocked(ref)
		}
	}
	for n := range m.nodes {
		if n.cluster == cluster {
			delete(m.nodes, n)
			m.refreshNodeLocked(n)
		}
	}
	for n := range m.down {
		if n.cluster == cluster {
			delete(m.down, n)
		}
	}
}

// routeName is how routes (and so logs and status) name node n: by its
// name in the local cluster, as cluster/name in another.
func (m *mirror) routeName(n nodeRef) string {
	if n.cluster == m.local.cluster {
		return n.name
	}
	return n.String()
}

// refreshNodeLocked recomputes a node's own entries (its addresses, and
// its pod CIDRs while it is usable) and its pods' entries, whose node
// address comes from the record.
func (m *mirror) refreshNodeLocked(n nodeRef) {
	r, ok := m.nodes[n]
	var entries []kv[bpf.IPCacheKey, bpf.IPCacheValue]
	if ok {
		id, flags := identity.RemoteNode, bpf.IPCacheFlags(0)
		if n == m.local {
			id, flags = identity.Host, bpf.IPCacheLocal
		}
		seen := make(map[bpf.IPCacheKey]bool)
		for _, a := range r.IPs {
			a = a.Unmap()
			k := bpf.IPCacheKeyFor(netip.PrefixFrom(a, a.BitLen()))
			if !seen[k] {
				seen[k] = true
				entries = append(entries, kv[bpf.IPCacheKey, bpf.IPCacheValue]{k, bpf.IPCacheValueFor(uint32(id), a, flags)})
			}
		}
		if m.usableLocked(n) {
			for _, p := range r.PodCIDRs {
				k := bpf.IPCacheKeyFor(p)
				if !seen[k] {
					seen[k] = true
					entries = append(entries, kv[bpf.IPCacheKey, bpf.IPCacheValue]{k,
						bpf.IPCacheValueFor(uint32(identity.World), m.nodeIPLocked(n, p.Addr().Is4()), flags)})
				}
			}
		}
	}
	m.ipc.update(srcNode+n.String(), entries)
	if m.routesChanged != nil && n != m.local {
		m.routesChanged()
	}
	for ip, id := range m.epByNode[n] {
		ref := endpointRef{n.cluster, ip}
		m.ipc.update(srcEndpoint+ref.String(), []kv[bpf.IPCacheKey, bpf.IPCacheValue]{m.endpointEntryLocked(ip, id, n)})
	}
	// Isolated IPs take their node address from the pod CIDR that
	// covers them, which may have changed. There are few.
	for ref := range m.isolated {
		if ref.cluster == n.cluster {
			m.ipc.update(srcEndpoint+ref.String(), []kv[bpf.IPCacheKey, bpf.IPCacheValue]{m.isolatedEntryLocked(ref)})
		}
	}
}

// wantedRoutes returns the routes to other nodes' pod CIDRs: those of
// every usable node (a dead one's go, as its ipcache entries do, and come
// back when it is alive), each via the node's address of the CIDR's
// family, sorted by node and prefix.
func (m *mirror) wantedRoutes() []nodeRoute {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []nodeRoute
	for n, r := range m.nodes {
		if n == m.local || !m.usableLocked(n) {
			continue
		}
		for _, p := range r.PodCIDRs {
			p = p.Masked()
			if via := m.nodeIPLocked(n, p.Addr().Is4()); via.IsValid() {
				out = append(out, nodeRoute{node: m.routeName(n), dst: p, via: via})
			}
		}
	}
	slices.SortFunc(out, func(x, y nodeRoute) int {
		if c := strings.Compare(x.node, y.node); c != 0 {
			return c
		}
		return x.dst.Addr().Compare(y.dst.Addr())
	})
	return out
}

// isolatedEntryLocked is the ipcache entry of an IP whose endpoints/ value
// never decoded: the unknown identity (0), with the node address and
// flag of the node of its cluster whose pod CIDR covers it, as its pod
// CIDR entry would route it. See endpointHandler.Invalid.
func (m *mirror) isolatedEntryLocked(ref endpointRef) kv[bpf.IPCacheKey, bpf.IPCacheValue] {
	ip := ref.ip
	var nodeIP netip.Addr
	flags := bpf.IPCacheFlags(0)
	for n, r := range m.nodes {
		if n.cluster != ref.cluster {
			continue
		}
		if slices.ContainsFunc(r.PodCIDRs, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			nodeIP = m.nodeIPLocked(n, ip.Is4())
			if n == m.local {
				flags = bpf.IPCacheLocal
			}
			break
		}
	}
	return kv[bpf.IPCacheKey, bpf.IPCacheValue]{
		bpf.IPCacheKeyFor(netip.PrefixFrom(ip, ip.BitLen())),
		bpf.IPCacheValueFor(uint32(identity.Unknown), nodeIP, flags),
	}
}

func (m *mirror) endpointEntryLocked(ip netip.Addr, id identity.ID, n nodeRef) kv[bpf.IPCacheKey, bpf.IPCacheValue] {
	flags := bpf.IPCacheFlags(0)
	if n == m.local {
		flags = bpf.IPCacheLocal
	}
	return kv[bpf.IPCacheKey, bpf.IPCacheValue]{
		bpf.IPCacheKeyFor(netip.PrefixFrom(ip, ip.BitLen())),
		bpf.IPCacheValueFor(uint32(id), m.nodeIPLocked(n, ip.Is4()), flags),
	}
}

// --- ipcache entries ---

// endpointHandler receives the ipcache entries (endpoints/<ip>) of one
// cluster; an entry's node is a node of that cluster.
type endpointHandler struct {
	m       *mirror
	cluster string
}

func (h endpointHandler) Upsert(key string, e ipcache.Entry) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	ip := e.IP.Unmap()
	ref := endpointRef{h.cluster, ip}
	n := nodeRef{h.cluster, e.Node}
	delete(m.isolated, ref)
	if old, ok := m.epNode[ref]; ok && old != n {
		delete(m.epByNode[old], ip)
	}
	byNode := m.epByNode[n]
	if byNode == nil {
		byNode = make(map[netip.Addr]identity.ID)
		m.epByNode[n] = byNode
	}
	byNode[ip] = e.Identity
	m.epNode[ref] = n
	m.ipc.update(srcEndpoint+ref.String(), []kv[bpf.IPCacheKey, bpf.IPCacheValue]{m.endpointEntryLocked(ip, e.Identity, n)})
}

func (h endpointHandler) Delete(key string) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	ip, err := netip.ParseAddr(key)
	if err != nil {
		return
	}
	m.deleteEndpointLocked(endpointRef{h.cluster, ip.Unmap()})
}

// deleteEndpointLocked removes an ipcache entry, valid or isolated.
func (m *mirror) deleteEndpointLocked(ref endpointRef) {
	delete(m.isolated, ref)
	if n, ok := m.epNode[ref]; ok {
		delete(m.epByNode[n], ref.ip)
		if len(m.epByNode[n]) == 0 {
			delete(m.epByNode, n)
		}
		delete(m.epNode, ref)
	}
	m.ipc.update(srcEndpoint+ref.String(), nil)
}

// Invalid is told about an endpoints/<ip> key whose value never decoded
// (a key with a last good value keeps it and is not delivered). The IP is
// in the key, so the agent can keep it from being taken for what covers
// it (a pod CIDR's world entry, an ipBlock's CIDR identity): it gets an
// ipcache entry with the unknown identity, 0. No policy entry names 0 as
// a remote identity except "any remote" (a rule with no peers, which
// allows everyone anyway): the engine never gives a selector or an
// ipBlock identity 0, and the datapath's lookup for remote 0 finds only
// the any-remote entries. So the IP matches no podSelector,
// namespaceSelector or ipBlock rule: fail closed. A valid value replaces
// the entry (Upsert), a delete removes it (Delete). A key that is not an
// IP concerns no address: nothing is installed.
func (h endpointHandler) Invalid(key string, _ error) {
	ip, err := netip.ParseAddr(key)
	if err != nil || ip.Zone() != "" {
		return
	}
	ref := endpointRef{h.cluster, ip.Unmap()}
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.epNode[ref]; ok {
		return // a valid entry for the same IP under another spelling of the key
	}
	m.isolated[ref] = struct{}{}
	m.ipc.update(srcEndpoint+ref.String(), []kv[bpf.IPCacheKey, bpf.IPCacheValue]{m.isolatedEntryLocked(ref)})
}

// --- services ---

// serviceHandler receives the services of one cluster; a backend's node
// is a node of that cluster.
type serviceHandler struct {
	m       *mirror
	cluster string
}

func (h serviceHandler) Upsert(key string, s service.Service) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	ref := serviceRef{h.cluster, key}
	if old, ok := m.services[ref]; ok {
		m.unindexLocked(ref, old)
	}
	m.services[ref] = s
	for _, f := range s.Frontends {
		for _, b := range f.Backends {
			if b.Node == "" {
				continue
			}
			n := nodeRef{h.cluster, b.Node}
			set := m.svcByNode[n]
			if set == nil {
				set = make(map[serviceRef]struct{})
				m.svcByNode[n] = set
			}
			set[ref] = struct{}{}
		}
	}
	m.refreshServiceLocked(ref)
}

func (h serviceHandler) Delete(key string) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	m.deleteServiceLocked(serviceRef{h.cluster, key})
}

// deleteServiceLocked removes a service's slots and backends and
// releases its IDs.
func (m *mirror) deleteServiceLocked(ref serviceRef) {
	if old, ok := m.services[ref]; ok {
		m.unindexLocked(ref, old)
	}
	delete(m.services, ref)
	m.refreshServiceLocked(ref)
}

func (m *mirror) unindexLocked(ref serviceRef, s service.Service) {
	for _, f := range s.Frontends {
		for _, b := range f.Backends {
			n := nodeRef{ref.cluster, b.Node}
			if set := m.svcByNode[n]; set != nil {
				delete(set, ref)
				if len(set) == 0 {
					delete(m.svcByNode, n)
				}
			}
		}
	}
}

// refreshServiceLocked recomputes a service's slots and backends: slot 0
// of each frontend holds the count of usable backends and the service ID,
// slots 1..n their backend IDs. IDs are acquired before the old ones are
// released, so an unchanged backend keeps its ID.
func (m *mirror) refreshServiceLocked(ref serviceRef) {
	s, ok := m.services[ref]
	var held heldIDs
	var slots []kv[bpf.ServiceKey, bpf.ServiceValue]
	var backends []kv[bpf.BackendKey, bpf.BackendValue]
	failed := false
	if ok {
		seenBackend := make(map[backendRef]bool)
		for _, f := range s.Frontends {
			proto := f.Protocol.Number()
			fr := frontendRef{netip.AddrPortFrom(f.Address.Addr().Unmap(), f.Address.Port()), proto}
			sid, err := m.serviceIDs.acquire(fr)
			if err != nil {
				failed = true
				continue
			}
			held.frontends = append(held.frontends, fr)
			var ids []uint32
			seenHere := make(map[backendRef]bool)
			for _, b := range f.Backends {
				br := backendRef{netip.AddrPortFrom(b.Address.Addr().Unmap(), b.Address.Port()), proto}
				if seenHere[br] || (b.Node != "" && !m.usableLocked(nodeRef{ref.cluster, b.Node})) {
					continue
				}
				seenHere[br] = true
				bid, err := m.backendIDs.acquire(br)
				if err != nil {
					failed = true
					continue
				}
				held.backends = append(held.backends, br)
				ids = append(ids, bid)
				if !seenBackend[br] {
					seenBackend[br] = true
					backends = append(backends, kv[bpf.BackendKey, bpf.BackendValue]{bpf.BackendKey{ID: bid}, bpf.BackendValueFor(br.addr, proto, 0)})
				}
			}
			slots = append(slots, kv[bpf.ServiceKey, bpf.ServiceValue]{bpf.ServiceKeyFor(fr.addr, proto, 0), bpf.ServiceEntry(sid, uint16(len(ids)))})
			for i, bid := range ids {
				slots = append(slots, kv[bpf.ServiceKey, bpf.ServiceValue]{bpf.ServiceKeyFor(fr.addr, proto, uint16(i+1)), bpf.BackendSlot(sid, bid)})
			}
		}
	}
	// Backends before slots: a slot never names a backend the map lacks.
	m.be.update(srcService+ref.String(), backends)
	m.svc.update(srcService+ref.String(), slots)
	old := m.svcHeld[ref]
	for _, fr := range old.frontends {
		m.serviceIDs.release(fr)
	}
	for _, br := range old.backends {
		m.backendIDs.release(br)
	}
	if len(held.frontends)+len(held.backends) > 0 {
		m.svcHeld[ref] = held
	} else {
		delete(m.svcHeld, ref)
	}
	if failed {
		m.idErrors++
	}
}
