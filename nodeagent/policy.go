package nodeagent

import (
	"net/netip"
	"strings"
	"sync"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/labels"
	"github.com/meshplane/meshplane/nodeagent/reconciler"
	"github.com/meshplane/meshplane/policy"
)

// cidrIdentityBase is where node-local CIDR identities start: above every
// cluster identity (24 bits), so they never collide with one and never
// leave the node (they are not in etcd).
const cidrIdentityBase = 1 << 24

// policyState turns the policies in etcd, the cluster's identities and the
// local endpoints into the policy map and the endpoints' enforcement
// flags, through a policy.Engine, which hands back only what changed.
//
// Several engine entries can need the same map key (a port range and a
// port prefix of another rule), so keys are reference-counted here.
//
// An ipBlock's prefixes get node-local CIDR identities (cidrIdentityBase
// and up), ipcache entries and CIDR map entries (cidrMap); the engine
// matches them against ipBlocks.
//
// Until the first full state is loaded (policies and identities
// delivered, see markSynced) the enforcement flags an endpoint had in the
// pinned map stand: a restarting agent must not open an enforced pod
// because it has not read the policies yet, nor close an open one.
//
// mu guards everything; handlers (watch deliveries, the endpoints' add
// and remove) call in concurrently. Lock order: an endpoint's owner lock, then mu,
// then the mirror's mu (setCIDR).
type policyState struct {
	epT  *reconciler.Table[bpf.EndpointKey, bpf.EndpointValue]
	polT *reconciler.Table[bpf.PolicyKey, bpf.PolicyValue]
	// setCIDR adds (id != 0) or removes a CIDR identity's ipcache entry.
	setCIDR func(p netip.Prefix, id uint32)
	// cidrMap, if set, is the CIDR map's desired content; mu guards it.
	cidrMap *cidrMap

	mu   sync.Mutex
	eng  *policy.Engine
	refs map[bpf.PolicyKey]int // mu guards: map keys by number of entries wanting them
	// flags is each local endpoint's enforcement; an endpoint enforcing
	// ingress holds the host entry (hostEntry).
	flags   map[uint32]bpf.EndpointFlags
	epIPs   map[uint32][]netip.Addr    // local endpoints' IPs: their keys in epT
	cidrIDs map[netip.Prefix]uint32    // CIDR identities
	cidrs   *idAllocator[netip.Prefix] // local numbers of CIDR identities
	synced  bool                       // the engine has the first full state
	errs    int                        // entries that could not become map keys (never expected)
	lastErr error                      // the last of those
}

func newPolicyState(cluster string, epT *reconciler.Table[bpf.EndpointKey, bpf.EndpointValue],
	polT *reconciler.Table[bpf.PolicyKey, bpf.PolicyValue], setCIDR func(netip.Prefix, uint32)) *policyState {
	// The engine has the world identity built in (ipBlocks of /0).
	return &policyState{
		epT: epT, polT: polT, setCIDR: setCIDR,
		eng:     policy.NewEngine(cluster),
		refs:    make(map[bpf.PolicyKey]int),
		flags:   make(map[uint32]bpf.EndpointFlags),
		epIPs:   make(map[uint32][]netip.Addr),
		cidrIDs: make(map[netip.Prefix]uint32),
		cidrs:   newIDAllocator[netip.Prefix]("CIDR identity", uint32(identity.Max)),
	}
}

// seedFlags records the flags an endpoint has in the pinned map, which
// stand until markSynced.
func (s *policyState) seedFlags(id uint32, f bpf.EndpointFlags) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.epIPs[id]; ok && !s.synced {
		s.setFlagsLocked(id, f)
	}
}

// markSynced switches from the seeded flags to the engine's.
func (s *policyState) markSynced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.synced = true
	s.cidrs.dropUnreferenced() // seeds of prefixes no policy names any more
	for id := range s.epIPs {
		in, out := s.eng.Enforced(id)
		s.setFlagsLocked(id, enforcement(in, out))
	}
}

func enforcement(in, out bool) bpf.EndpointFlags {
	var f bpf.EndpointFlags
	if in {
		f |= bpf.EndpointPolicyIngress
	}
	if out {
		f |= bpf.EndpointPolicyEgress
	}
	return f
}

// installEndpoint is how the endpoints install a local endpoint: its map
// values (with the enforcement flags) and its policy.
func (s *policyState) installEndpoint(ep *Endpoint, set labels.Set) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := endpointValue(ep)
	s.epIPs[ep.ID] = ep.IPs
	v.Flags = s.flags[ep.ID]
	for _, ip := range ep.IPs {
		s.epT.Set(bpf.EndpointKeyFor(ip), v)
	}
	ports := make([]policy.NamedPort, 0, len(ep.Ports))
	for _, p := range ep.Ports {
		ports = append(ports, policy.NamedPort{Name: p.Name, Port: p.Port, Protocol: p.Protocol})
	}
	s.applyLocked(s.eng.SetEndpoint(policy.Endpoint{ID: ep.ID, Identity: uint32(ep.Identity), Labels: set, Ports: ports}))
}

// removeEndpoint forgets a local endpoint and its policy.
func (s *policyState) removeEndpoint(ep *Endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ip := range ep.IPs {
		s.epT.Delete(bpf.EndpointKeyFor(ip))
	}
	s.applyLocked(s.eng.DeleteEndpoint(ep.ID))
	if s.flags[ep.ID]&bpf.EndpointPolicyIngress != 0 {
		s.entryLocked(ep.ID, hostEntry(), false)
	}
	delete(s.flags, ep.ID)
	delete(s.epIPs, ep.ID)
}

// applyLocked writes an engine delta into the tables.
func (s *policyState) applyLocked(d policy.Delta) {
	for _, c := range d.Changes {
		s.entryLocked(c.Endpoint, c.Entry, c.Add)
	}
	if !s.synced {
		return
	}
	for _, e := range d.Enforcement {
		if _, ok := s.epIPs[e.Endpoint]; ok {
			s.setFlagsLocked(e.Endpoint, enforcement(e.Ingress, e.Egress))
		}
	}
}

func (s *policyState) entryLocked(ep uint32, e policy.Entry, add bool) {
	keys, err := policyKeys(ep, e)
	if err != nil {
		s.errs++
		s.lastErr = err
		return
	}
	for _, k := range keys {
		n := s.refs[k]
		switch {
		case add:
			s.refs[k] = n + 1
			if n == 0 {
				s.polT.Set(k, bpf.PolicyValue{Verdict: bpf.Allow})
			}
		case n <= 1:
			delete(s.refs, k)
			if n == 1 {
				s.polT.Delete(k)
			}
		default:
			s.refs[k] = n - 1
		}
	}
}

// hostEntry is the entry every ingress-enforced endpoint gets: its own
// node (kubelet's probes) may always reach it, as in Cilium and Calico.
func hostEntry() policy.Entry {
	return policy.Entry{Direction: policy.Ingress, Identity: uint32(identity.Host)}
}

// setFlagsLocked changes an endpoint's enforcement in its map values
// (epT holds them; only the flags change) and takes or drops its host
// entry with the ingress flag.
func (s *policyState) setFlagsLocked(id uint32, f bpf.EndpointFlags) {
	old, had := s.flags[id]
	if had && old == f {
		return
	}
	s.flags[id] = f
	if in := f&bpf.EndpointPolicyIngress != 0; in != (old&bpf.EndpointPolicyIngress != 0) {
		s.entryLocked(id, hostEntry(), in)
	}
	for _, ip := range s.epIPs[id] {
		k := bpf.EndpointKeyFor(ip)
		if v, ok := s.epT.Get(k); ok {
			v.Flags = f
			s.epT.Set(k, v)
		}
	}
}

// policyKeys are the map keys of an engine entry: a port range becomes
// its port prefixes.
func policyKeys(ep uint32, e policy.Entry) ([]bpf.PolicyKey, error) {
	dir := bpf.Direction(e.Direction)
	if e.Protocol == 0 {
		k, err := bpf.PolicyKeyFor(ep, dir, e.Identity, bpf.ProtoAny, 0, 0)
		return []bpf.PolicyKey{k}, err
	}
	if e.Port == 0 {
		k, err := bpf.PolicyKeyFor(ep, dir, e.Identity, e.Protocol, 0, 0)
		return []bpf.PolicyKey{k}, err
	}
	last := e.Port
	if e.EndPort != 0 {
		last = e.EndPort
	}
	pps, err := bpf.PortPrefixes(e.Port, last)
	if err != nil {
		return nil, err
	}
	keys := make([]bpf.PolicyKey, 0, len(pps))
	for _, pp := range pps {
		k, err := bpf.PolicyKeyFor(ep, dir, e.Identity, e.Protocol, pp.Port, pp.Bits)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// syncCIDRsLocked gives every prefix the policies' ipBlocks name a CIDR
// identity, and takes it from those no longer named.
func (s *policyState) syncCIDRsLocked() {
	want := make(map[netip.Prefix]bool)
	for _, p := range s.eng.CIDRs() {
		want[p] = true
		if _, ok := s.cidrIDs[p]; ok {
			continue
		}
		n, err := s.cidrs.acquire(p)
		if err != nil {
			s.errs++
			s.lastErr = err
			continue
		}
		id := cidrIdentityBase + n
		s.cidrIDs[p] = id
		s.applyLocked(s.eng.SetIdentity(policy.Identity{ID: id, CIDR: p}))
		s.setCIDR(p, id)
		s.cidrMap.set(p, id)
	}
	for p, id := range s.cidrIDs {
		if want[p] {
			continue
		}
		s.applyLocked(s.eng.DeleteIdentity(id))
		s.setCIDR(p, 0)
		s.cidrMap.set(p, 0)
		s.cidrs.release(p)
		delete(s.cidrIDs, p)
	}
	s.cidrMap.setWorlds(s.eng.WorldCIDRs())
}

// --- watch handlers ---

// policyHandler receives the policies in etcd.
type policyHandler struct{ s *policyState }

func (h policyHandler) Upsert(_ string, p *policy.Policy) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyLocked(s.eng.SetPolicy(p))
	s.syncCIDRsLocked()
}

func (h policyHandler) Delete(key string) {
	ns, name, ok := policyKeyParts(key)
	if !ok {
		return
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyLocked(s.eng.DeletePolicy(ns, name))
	s.syncCIDRsLocked()
}

// Invalid is told about a policy key whose value never decoded (a key
// with a last good version keeps it, and is not delivered). Whatever the
// policy was, it could select only pods of its namespace: so the agent
// enforces policy.DenyAll there, under the key's name, until a valid
// value replaces it (Upsert) or the key is deleted (Delete). A key that
// names no namespace was never written by meshplane and concerns no
// pod: nothing is isolated (status and logs still report it).
func (h policyHandler) Invalid(key string, _ error) {
	ns, name, ok := policyKeyParts(key)
	if !ok {
		return
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyLocked(s.eng.SetPolicy(policy.DenyAll(ns, name)))
	s.syncCIDRsLocked()
}

// policyKeyParts splits a policies/ key (relative to the prefix) into
// namespace and name.
func policyKeyParts(key string) (ns, name string, ok bool) {
	ns, name, ok = strings.Cut(key, "/")
	return ns, name, ok && ns != "" && name != ""
}

// identityHandler receives the cluster's identities.
type identityHandler struct{ s *policyState }

func (h identityHandler) Upsert(key string, set labels.Set) {
	id, err := identity.Parse(key)
	if err != nil {
		return
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyLocked(s.eng.SetIdentity(policy.Identity{ID: uint32(id), Labels: set}))
}

func (h identityHandler) Delete(key string) {
	id, err := identity.Parse(key)
	if err != nil {
		return
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyLocked(s.eng.DeleteIdentity(uint32(id)))
}

// namedPortHandler receives the ipcache entries for their named ports,
// which named egress ports resolve against.
type namedPortHandler struct{ s *policyState }

func (h namedPortHandler) Upsert(key string, e ipcache.Entry) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(e.Ports) == 0 {
		s.applyLocked(s.eng.SetNamedPorts(key, nil))
		return
	}
	ports := make([]policy.NamedPort, 0, len(e.Ports))
	for _, p := range e.Ports {
		ports = append(ports, policy.NamedPort{Name: p.Name, Port: p.Port, Protocol: p.Protocol})
	}
	s.applyLocked(s.eng.SetNamedPorts(key, ports))
}

func (h namedPortHandler) Delete(key string) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyLocked(s.eng.SetNamedPorts(key, nil))
}

// errors returns how many engine entries could not become map keys, and
// the last reason (never expected: the engine validates its input).
func (s *policyState) errors() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errs, s.lastErr
}
