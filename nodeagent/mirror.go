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
// The handlers are called from the caches' delivery goroutines and from
// the gossip goroutine; mu serialises them. Nothing here blocks: the
// tables only record what changed for the reconcilers.
type mirror struct {
	local string // this node's name
	// nodeChanged, if set, is poked (without blocking) when a node record
	// changes, so gossip can join a new node at once.
	nodeChanged chan struct{}
	// routesChanged, if set, is called (it must not block) when the
	// routes wantedRoutes returns may have changed.
	routesChanged func()

	mu        sync.Mutex
	nodes     map[string]node.Record                // mu guards: the node records
	down      map[string]bool                       // nodes gossip says are dead or left
	epByNode  map[string]map[netip.Addr]identity.ID // ipcache entries by hosting node
	epNode    map[netip.Addr]string
	services  map[string]service.Service
	svcByNode map[string]map[string]struct{} // services with backends on a node
	svcHeld   map[string]heldIDs             // IDs each service holds
	// isolated are the IPs of endpoints/<ip> keys that never held a valid
	// value: they have the unknown identity (see endpointHandler.Invalid).
	isolated map[netip.Addr]struct{}

	ipc        *projection[bpf.IPCacheKey, bpf.IPCacheValue]
	svc        *projection[bpf.ServiceKey, bpf.ServiceValue]
	be         *projection[bpf.BackendKey, bpf.BackendValue]
	backendIDs *idAllocator[backendRef]
	serviceIDs *idAllocator[frontendRef]
	// idErrors counts services whose entries could not all get IDs.
	idErrors int
}

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

// Sources sort by priority: a node's own entries beat a pod's.
const (
	srcNode     = "0node/"
	srcEndpoint = "1ep/"
	srcCIDR     = "2cidr/"
	srcService  = "svc/"
)

func newMirror(local string, ipc *reconciler.Table[bpf.IPCacheKey, bpf.IPCacheValue],
	svc *reconciler.Table[bpf.ServiceKey, bpf.ServiceValue], be *reconciler.Table[bpf.BackendKey, bpf.BackendValue],
	maxBackends, maxServices uint32) *mirror {
	return &mirror{
		local:      local,
		nodes:      make(map[string]node.Record),
		down:       make(map[string]bool),
		epByNode:   make(map[string]map[netip.Addr]identity.ID),
		epNode:     make(map[netip.Addr]string),
		services:   make(map[string]service.Service),
		svcByNode:  make(map[string]map[string]struct{}),
		svcHeld:    make(map[string]heldIDs),
		isolated:   make(map[netip.Addr]struct{}),
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

func (m *mirror) usableLocked(node string) bool { return node == m.local || !m.down[node] }

// nodeIPLocked is the address of node to route ip's family to, if known.
func (m *mirror) nodeIPLocked(node string, is4 bool) netip.Addr {
	r, ok := m.nodes[node]
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

// nodeHandler receives node records.
type nodeHandler struct{ m *mirror }

func (h nodeHandler) Upsert(name string, r node.Record) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nodes[name] = r
	m.refreshNodeLocked(name)
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
	delete(m.nodes, name)
	m.refreshNodeLocked(name)
}

// setHealth applies a gossip state change.
func (m *mirror) setHealth(name string, s health.State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	down := s.Down() // unresponsive and restarting nodes keep theirs
	if m.down[name] == down {
		return
	}
	if down {
		m.down[name] = true
	} else {
		delete(m.down, name)
	}
	m.refreshNodeLocked(name)
	for key := range m.svcByNode[name] {
		m.refreshServiceLocked(key)
	}
}

// refreshNodeLocked recomputes a node's own entries (its addresses, and
// its pod CIDRs while it is usable) and its pods' entries, whose node
// address comes from the record.
func (m *mirror) refreshNodeLocked(name string) {
	r, ok := m.nodes[name]
	var entries []kv[bpf.IPCacheKey, bpf.IPCacheValue]
	if ok {
		id, flags := identity.RemoteNode, bpf.IPCacheFlags(0)
		if name == m.local {
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
		if m.usableLocked(name) {
			for _, p := range r.PodCIDRs {
				k := bpf.IPCacheKeyFor(p)
				if !seen[k] {
					seen[k] = true
					entries = append(entries, kv[bpf.IPCacheKey, bpf.IPCacheValue]{k,
						bpf.IPCacheValueFor(uint32(identity.World), m.nodeIPLocked(name, p.Addr().Is4()), flags)})
				}
			}
		}
	}
	m.ipc.update(srcNode+name, entries)
	if m.routesChanged != nil && name != m.local {
		m.routesChanged()
	}
	for ip, id := range m.epByNode[name] {
		m.ipc.update(srcEndpoint+ip.String(), []kv[bpf.IPCacheKey, bpf.IPCacheValue]{m.endpointEntryLocked(ip, id, name)})
	}
	// Isolated IPs take their node address from the pod CIDR that
	// covers them, which may have changed. There are few.
	for ip := range m.isolated {
		m.ipc.update(srcEndpoint+ip.String(), []kv[bpf.IPCacheKey, bpf.IPCacheValue]{m.isolatedEntryLocked(ip)})
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
	for name, r := range m.nodes {
		if name == m.local || !m.usableLocked(name) {
			continue
		}
		for _, p := range r.PodCIDRs {
			p = p.Masked()
			if via := m.nodeIPLocked(name, p.Addr().Is4()); via.IsValid() {
				out = append(out, nodeRoute{node: name, dst: p, via: via})
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
// flag of the node whose pod CIDR covers it, as its pod CIDR entry would
// route it. See endpointHandler.Invalid.
func (m *mirror) isolatedEntryLocked(ip netip.Addr) kv[bpf.IPCacheKey, bpf.IPCacheValue] {
	var nodeIP netip.Addr
	flags := bpf.IPCacheFlags(0)
	for name, r := range m.nodes {
		if slices.ContainsFunc(r.PodCIDRs, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			nodeIP = m.nodeIPLocked(name, ip.Is4())
			if name == m.local {
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

func (m *mirror) endpointEntryLocked(ip netip.Addr, id identity.ID, node string) kv[bpf.IPCacheKey, bpf.IPCacheValue] {
	flags := bpf.IPCacheFlags(0)
	if node == m.local {
		flags = bpf.IPCacheLocal
	}
	return kv[bpf.IPCacheKey, bpf.IPCacheValue]{
		bpf.IPCacheKeyFor(netip.PrefixFrom(ip, ip.BitLen())),
		bpf.IPCacheValueFor(uint32(id), m.nodeIPLocked(node, ip.Is4()), flags),
	}
}

// --- ipcache entries ---

// endpointHandler receives ipcache entries (endpoints/<ip>).
type endpointHandler struct{ m *mirror }

func (h endpointHandler) Upsert(key string, e ipcache.Entry) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	ip := e.IP.Unmap()
	delete(m.isolated, ip)
	if old, ok := m.epNode[ip]; ok && old != e.Node {
		delete(m.epByNode[old], ip)
	}
	byNode := m.epByNode[e.Node]
	if byNode == nil {
		byNode = make(map[netip.Addr]identity.ID)
		m.epByNode[e.Node] = byNode
	}
	byNode[ip] = e.Identity
	m.epNode[ip] = e.Node
	m.ipc.update(srcEndpoint+ip.String(), []kv[bpf.IPCacheKey, bpf.IPCacheValue]{m.endpointEntryLocked(ip, e.Identity, e.Node)})
}

func (h endpointHandler) Delete(key string) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	ip, err := netip.ParseAddr(key)
	if err != nil {
		return
	}
	ip = ip.Unmap()
	delete(m.isolated, ip)
	if node, ok := m.epNode[ip]; ok {
		delete(m.epByNode[node], ip)
		if len(m.epByNode[node]) == 0 {
			delete(m.epByNode, node)
		}
		delete(m.epNode, ip)
	}
	m.ipc.update(srcEndpoint+ip.String(), nil)
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
	ip = ip.Unmap()
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.epNode[ip]; ok {
		return // a valid entry for the same IP under another spelling of the key
	}
	m.isolated[ip] = struct{}{}
	m.ipc.update(srcEndpoint+ip.String(), []kv[bpf.IPCacheKey, bpf.IPCacheValue]{m.isolatedEntryLocked(ip)})
}

// --- services ---

// serviceHandler receives services.
type serviceHandler struct{ m *mirror }

func (h serviceHandler) Upsert(key string, s service.Service) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.services[key]; ok {
		m.unindexLocked(key, old)
	}
	m.services[key] = s
	for _, f := range s.Frontends {
		for _, b := range f.Backends {
			if b.Node == "" {
				continue
			}
			set := m.svcByNode[b.Node]
			if set == nil {
				set = make(map[string]struct{})
				m.svcByNode[b.Node] = set
			}
			set[key] = struct{}{}
		}
	}
	m.refreshServiceLocked(key)
}

func (h serviceHandler) Delete(key string) {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.services[key]; ok {
		m.unindexLocked(key, old)
	}
	delete(m.services, key)
	m.refreshServiceLocked(key)
}

func (m *mirror) unindexLocked(key string, s service.Service) {
	for _, f := range s.Frontends {
		for _, b := range f.Backends {
			if set := m.svcByNode[b.Node]; set != nil {
				delete(set, key)
				if len(set) == 0 {
					delete(m.svcByNode, b.Node)
				}
			}
		}
	}
}

// refreshServiceLocked recomputes a service's slots and backends: slot 0
// of each frontend holds the count of usable backends and the service ID,
// slots 1..n their backend IDs. IDs are acquired before the old ones are
// released, so an unchanged backend keeps its ID.
func (m *mirror) refreshServiceLocked(key string) {
	s, ok := m.services[key]
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
				if seenHere[br] || (b.Node != "" && !m.usableLocked(b.Node)) {
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
	m.be.update(srcService+key, backends)
	m.svc.update(srcService+key, slots)
	old := m.svcHeld[key]
	for _, fr := range old.frontends {
		m.serviceIDs.release(fr)
	}
	for _, br := range old.backends {
		m.backendIDs.release(br)
	}
	if len(held.frontends)+len(held.backends) > 0 {
		m.svcHeld[key] = held
	} else {
		delete(m.svcHeld, key)
	}
	if failed {
		m.idErrors++
	}
}
