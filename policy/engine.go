package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	"github.com/meshplane/meshplane/labels"
)

// Direction is the direction of traffic an Entry allows, relative to the
// local endpoint. The numbers are the datapath's.
type Direction uint8

// The directions.
const (
	Ingress Direction = 1
	Egress  Direction = 2
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// WorldID is the reserved world identity: every address outside the
// cluster that no CIDR identity covers. The Engine knows it without
// SetIdentity; only an ipBlock whose cidr is /0 matches it.
const WorldID uint32 = 2

// maxReserved is the highest reserved identity; selectors never match
// reserved identities (they carry no k8s or ns labels).
const maxReserved uint32 = 255

// NamedPort is a port a pod declares by name.
type NamedPort struct {
	Name     string
	Port     uint16
	Protocol uint8 // ProtoTCP, ProtoUDP or ProtoSCTP
}

// Identity is a remote identity that peers may match.
type Identity struct {
	ID uint32
	// Labels of a pod identity (see PodLabels).
	Labels labels.Set
	// CIDR of a CIDR identity: one the agent allocates, node-locally, for
	// each prefix of Engine.CIDRs. Zero for pod identities. An identity
	// with a CIDR is matched by ipBlocks only, whatever its labels.
	CIDR netip.Prefix
}

// Endpoint is a local endpoint whose policy the Engine computes.
type Endpoint struct {
	ID uint32
	// Identity is the endpoint's own security identity; the Engine keeps
	// it for its caller and does not use it.
	Identity uint32
	// Labels are the endpoint's identity labels (PodLabels);
	// spec.podSelector and the policy's namespace are matched against
	// them. Without k8s:io.kubernetes.pod.namespace no policy selects it.
	Labels labels.Set
	// Ports are the endpoint's named ports, against which ingress rules'
	// named ports resolve.
	Ports []NamedPort
}

// Entry is one allowed (direction, remote identity, L4) tuple of an
// endpoint.
type Entry struct {
	Direction Direction
	// Identity is the remote identity; 0 means any.
	Identity uint32
	// Protocol is ProtoTCP, ProtoUDP or ProtoSCTP; 0 means any protocol
	// (and then Port and EndPort are 0).
	Protocol uint8
	// Port is the first port; 0 means any port.
	Port uint16
	// EndPort is 0 for the single Port, else the last port of the range
	// Port..EndPort.
	EndPort uint16
}

func compareEntries(a, b Entry) int {
	return cmp.Or(cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Identity, b.Identity),
		cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port), cmp.Compare(a.EndPort, b.EndPort))
}

// Change is an entry of an endpoint that became wanted (Add) or stopped
// being wanted (!Add).
type Change struct {
	Endpoint uint32
	Entry    Entry
	Add      bool
}

// Enforcement says in which directions an endpoint is default-deny.
type Enforcement struct {
	Endpoint        uint32
	Ingress, Egress bool
}

// Delta is what one Engine call changed: entries that appeared or went
// away, and endpoints whose enforcement changed. Both are sorted by
// endpoint (and entry). A change undone within the same call is not
// reported.
type Delta struct {
	Changes     []Change
	Enforcement []Enforcement
}

// Empty reports whether the delta changes nothing.
func (d Delta) Empty() bool { return len(d.Changes) == 0 && len(d.Enforcement) == 0 }

// Engine resolves policies to the entries of local endpoints, incrementally
// (see the package doc). It is not safe for concurrent use: the caller
// serialises calls. Slices passed in are copied; slices returned are the
// caller's.
type Engine struct {
	cluster string

	policies    map[string]*cPolicy
	byNamespace map[string]map[*cPolicy]struct{}
	selectors   map[string]*cSelector // the selector cache, by key

	// The selectors again, by what a new identity must be tested against:
	// pod selectors tied to one namespace (no namespaceSelector), other pod
	// selectors, and ipBlocks.
	podSelectorsByNS  map[string]map[*cSelector]struct{}
	podSelectorsAnyNS map[*cSelector]struct{}
	cidrSelectors     map[*cSelector]struct{}

	identities map[uint32]*cIdentity
	// The identities again, by what a new selector must be tested
	// against (world is in neither).
	podIdentitiesByNS map[string]map[uint32]*cIdentity
	cidrIdentities    map[uint32]*cIdentity

	endpoints map[uint32]*cEndpoint
	cidrs     map[netip.Prefix]int // prefixes of ipBlocks (/0 too) → references

	// Cluster-wide named ports (SetNamedPorts), for egress rules.
	owners      map[string][]NamedPort      // owner → its distinct ports
	named       map[portName]map[uint16]int // (name, protocol) → port → owners
	egressNamed map[portName]map[*cRule]int // (name, protocol) → rules naming it, times named

	// The call in progress: the state before it of every entry and
	// endpoint it touched.
	txEntries map[changeKey]bool
	txEnforce map[uint32]Enforcement
}

type portName struct {
	name  string
	proto uint8
}

type changeKey struct {
	endpoint uint32
	entry    Entry
}

// NewEngine returns an empty engine for the local cluster named cluster:
// peers without a clusters list match identities labelled
// mesh:cluster=<cluster>.
func NewEngine(cluster string) *Engine {
	e := &Engine{
		cluster:     cluster,
		policies:    make(map[string]*cPolicy),
		byNamespace: make(map[string]map[*cPolicy]struct{}),
		selectors:   make(map[string]*cSelector),

		podSelectorsByNS:  make(map[string]map[*cSelector]struct{}),
		podSelectorsAnyNS: make(map[*cSelector]struct{}),
		cidrSelectors:     make(map[*cSelector]struct{}),

		identities:        make(map[uint32]*cIdentity),
		podIdentitiesByNS: make(map[string]map[uint32]*cIdentity),
		cidrIdentities:    make(map[uint32]*cIdentity),
		endpoints:         make(map[uint32]*cEndpoint),
		cidrs:             make(map[netip.Prefix]int),
		owners:            make(map[string][]NamedPort),
		named:             make(map[portName]map[uint16]int),
		egressNamed:       make(map[portName]map[*cRule]int),
		txEntries:         make(map[changeKey]bool),
		txEnforce:         make(map[uint32]Enforcement),
	}
	e.identities[WorldID] = &cIdentity{Identity: Identity{ID: WorldID}, selectors: make(map[*cSelector]struct{})}
	return e
}

// SetPolicy adds p, or replaces the policy with p's Key. p should come from
// Parse or Decode; SetPolicy does not validate, and parts of an invalid
// policy match nothing. It touches only the endpoints that p or its
// previous version selects. The Engine keeps a copy of p.
func (e *Engine) SetPolicy(p *Policy) Delta {
	e.begin()
	c := canonical(p)
	old := e.policies[c.Key()]
	if old != nil && reflect.DeepEqual(old.src, c) {
		return e.commit()
	}
	np := e.compile(c) // before the old version lets go of shared selectors
	if old != nil {
		e.removePolicy(old)
	}
	e.addPolicy(np)
	return e.commit()
}

// DeletePolicy removes a policy; a policy that does not exist is no
// change.
func (e *Engine) DeletePolicy(namespace, name string) Delta {
	e.begin()
	if p := e.policies[namespace+"/"+name]; p != nil {
		e.removePolicy(p)
	}
	return e.commit()
}

// SetIdentity adds or replaces a remote identity. Only the cached peer
// selectors are tested against it, and entries are added only for it.
// Reserved identities (1-255) and 0 are ignored: selectors never match
// them, and world is built in.
func (e *Engine) SetIdentity(id Identity) Delta {
	e.begin()
	if id.ID == 0 || id.ID <= maxReserved {
		return e.commit()
	}
	if id.CIDR.IsValid() {
		id.CIDR = normalizePrefix(id.CIDR)
	}
	if old := e.identities[id.ID]; old != nil {
		if old.Labels.Equal(id.Labels) && old.CIDR == id.CIDR {
			return e.commit()
		}
		e.removeIdentity(old)
	}
	ci := &cIdentity{Identity: id, selectors: make(map[*cSelector]struct{})}
	e.identities[id.ID] = ci
	test := func(candidates map[*cSelector]struct{}) {
		for s := range candidates {
			if s.matchesIdentity(ci) {
				s.matches[id.ID] = struct{}{}
				ci.selectors[s] = struct{}{}
				e.selectorIdentity(s, id.ID, +1)
			}
		}
	}
	if id.CIDR.IsValid() {
		e.cidrIdentities[id.ID] = ci
		test(e.cidrSelectors)
	} else if ns, ok := id.Labels.Get(SourceK8s, LabelNamespace); ok {
		m := e.podIdentitiesByNS[ns]
		if m == nil {
			m = make(map[uint32]*cIdentity)
			e.podIdentitiesByNS[ns] = m
		}
		m[id.ID] = ci
		test(e.podSelectorsByNS[ns])
		test(e.podSelectorsAnyNS)
	}
	return e.commit()
}

// DeleteIdentity removes a remote identity and every entry for it.
func (e *Engine) DeleteIdentity(id uint32) Delta {
	e.begin()
	if ci := e.identities[id]; ci != nil && id > maxReserved {
		e.removeIdentity(ci)
	}
	return e.commit()
}

// SetEndpoint adds or replaces a local endpoint. Only policies of the
// endpoint's namespace are tested against it.
func (e *Engine) SetEndpoint(ep Endpoint) Delta {
	e.begin()
	ep.Ports = distinctPorts(ep.Ports)
	ce := e.endpoints[ep.ID]
	if ce != nil {
		if ce.Identity == ep.Identity && ce.Labels.Equal(ep.Labels) && slices.Equal(ce.Ports, ep.Ports) {
			return e.commit()
		}
		e.detachAll(ce)
		ce.Endpoint = ep
	} else {
		ce = &cEndpoint{Endpoint: ep, entries: make(map[Entry]int), policies: make(map[*cPolicy]struct{})}
		e.endpoints[ep.ID] = ce
	}
	if ns, ok := ep.Labels.Get(SourceK8s, LabelNamespace); ok {
		for p := range e.byNamespace[ns] {
			if p.subject.matches(ep.Labels) {
				e.attach(p, ce)
			}
		}
	}
	return e.commit()
}

// DeleteEndpoint removes a local endpoint; the delta removes all its
// entries and reports it as no longer enforced.
func (e *Engine) DeleteEndpoint(id uint32) Delta {
	e.begin()
	if ce := e.endpoints[id]; ce != nil {
		e.noteEnforcement(ce)
		e.detachAll(ce)
		delete(e.endpoints, id)
	}
	return e.commit()
}

// SetNamedPorts sets the named ports of one owner (a pod, e.g. by IP) of
// the cluster, against which egress rules' named ports resolve: a name
// means every port any owner gives it. Nil or empty ports remove the owner.
func (e *Engine) SetNamedPorts(owner string, ports []NamedPort) Delta {
	e.begin()
	old := e.owners[owner]
	now := distinctPorts(ports)
	for _, p := range old {
		if _, found := slices.BinarySearchFunc(now, p, compareNamedPorts); !found {
			e.namedPort(p, -1)
		}
	}
	for _, p := range now {
		if _, found := slices.BinarySearchFunc(old, p, compareNamedPorts); !found {
			e.namedPort(p, +1)
		}
	}
	if len(now) == 0 {
		delete(e.owners, owner)
	} else {
		e.owners[owner] = now
	}
	return e.commit()
}

// CIDRs returns every prefix that the policies' ipBlocks name (cidrs and
// excepts), sorted and without duplicates. The agent allocates a CIDR
// identity for each and puts it in the ipcache, so that the longest-prefix
// match of an address finds the most specific block any policy names.
// /0 prefixes are left out: the world identity stands for them (see
// WorldCIDRs).
func (e *Engine) CIDRs() []netip.Prefix {
	return e.sortedCIDRs(func(p netip.Prefix) bool { return p.Bits() > 0 })
}

// WorldCIDRs returns the /0 prefixes (0.0.0.0/0, ::/0) that ipBlocks name
// as their cidr, sorted. The world identity stands for them: an agent that
// classifies an address by the longest of the named prefixes that
// contains it (the package doc's "ipBlock") classifies an address inside
// none of CIDRs as world when its family's /0 is named, and as nothing
// otherwise.
func (e *Engine) WorldCIDRs() []netip.Prefix {
	return e.sortedCIDRs(func(p netip.Prefix) bool { return p.Bits() == 0 })
}

func (e *Engine) sortedCIDRs(keep func(netip.Prefix) bool) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(e.cidrs))
	for p := range e.cidrs {
		if keep(p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, comparePrefixes)
	return out
}

// Entries returns the wanted entries of an endpoint, sorted.
func (e *Engine) Entries(endpoint uint32) []Entry {
	ce := e.endpoints[endpoint]
	if ce == nil {
		return nil
	}
	out := make([]Entry, 0, len(ce.entries))
	for en := range ce.entries {
		out = append(out, en)
	}
	slices.SortFunc(out, compareEntries)
	return out
}

// Enforced reports in which directions an endpoint is default-deny: some
// policy that selects it enforces that direction.
func (e *Engine) Enforced(endpoint uint32) (ingress, egress bool) {
	ce := e.endpoints[endpoint]
	if ce == nil {
		return false, false
	}
	return ce.nIngress > 0, ce.nEgress > 0
}

// Selecting returns the keys of the policies that select an endpoint,
// sorted.
func (e *Engine) Selecting(endpoint uint32) []string {
	ce := e.endpoints[endpoint]
	if ce == nil {
		return nil
	}
	out := make([]string, 0, len(ce.policies))
	for p := range ce.policies {
		out = append(out, p.key)
	}
	slices.Sort(out)
	return out
}
