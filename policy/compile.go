package policy

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
)

// cPolicy is a compiled policy.
type cPolicy struct {
	key       string
	namespace string
	src       *Policy // canonical
	subject   requirements
	ingress   bool
	egress    bool
	rules     []*cRule
	cidrs     []netip.Prefix
	selected  map[*cEndpoint]struct{}
}

// cRule is a compiled rule of one direction.
type cRule struct {
	policy *cPolicy
	dir    Direction
	peers  []*cSelector // none: any identity
	ports  []cPort      // none: any protocol and port
}

// cPort is a compiled port: a protocol and a port, a range or a name.
type cPort struct {
	proto   uint8
	port    uint16 // 0: every port of proto
	endPort uint16 // 0: just port
	name    string // a named port; port is 0
	never   bool   // invalid: resolves to nothing
}

// cSelector is a cached peer selector and the identities it matches.
type cSelector struct {
	key     string
	kind    selectorKind
	reqs    requirements   // pod
	ns      string         // pod: the one namespace it matches, or "" for any
	cidr    netip.Prefix   // ipBlock
	except  []netip.Prefix // ipBlock
	matches map[uint32]struct{}
	users   map[*cRule]int // rules using it, times used
}

type selectorKind uint8

const (
	selectPods selectorKind = iota
	selectCIDR
	selectNothing // an invalid peer: fail closed
)

type cIdentity struct {
	Identity
	selectors map[*cSelector]struct{}
}

type cEndpoint struct {
	Endpoint
	entries  map[Entry]int // wanted entries and how many contributions each has
	policies map[*cPolicy]struct{}
	nIngress int // selecting policies that enforce ingress
	nEgress  int
}

func (ep *cEndpoint) enforcement() Enforcement {
	return Enforcement{Endpoint: ep.ID, Ingress: ep.nIngress > 0, Egress: ep.nEgress > 0}
}

// compile turns a canonical policy into rules, acquiring (and, when new,
// evaluating) their selectors.
func (e *Engine) compile(p *Policy) *cPolicy {
	cp := &cPolicy{
		key:       p.Key(),
		namespace: p.Namespace,
		src:       p,
		ingress:   p.Spec.Enforces(TypeIngress),
		egress:    p.Spec.Enforces(TypeEgress),
		selected:  make(map[*cEndpoint]struct{}),
	}
	subject := []requirement{{source: SourceK8s, key: LabelNamespace, op: OpIn, values: []string{p.Namespace}}}
	cp.subject = normalize(compileSelector(subject, SourceK8s, &p.Spec.PodSelector))
	if cp.ingress {
		for _, r := range p.Spec.Ingress {
			cp.rules = append(cp.rules, e.compileRule(cp, Ingress, r.Ports, r.From))
		}
	}
	if cp.egress {
		for _, r := range p.Spec.Egress {
			cp.rules = append(cp.rules, e.compileRule(cp, Egress, r.Ports, r.To))
		}
	}
	return cp
}

func (e *Engine) compileRule(p *cPolicy, dir Direction, ports []Port, peers []Peer) *cRule {
	r := &cRule{policy: p, dir: dir}
	for i := range peers {
		s := e.acquire(e.peerSelector(p, &peers[i]))
		s.users[r]++
		r.peers = append(r.peers, s)
	}
	for _, pt := range ports {
		r.ports = append(r.ports, compilePort(pt))
	}
	return r
}

func compilePort(pt Port) cPort {
	c := cPort{proto: pt.Protocol.Number()}
	switch {
	case c.proto == 0:
		c.never = true
	case pt.Port == nil:
		if pt.EndPort != nil {
			c.never = true
		}
	case pt.Port.Name != "":
		c.name = pt.Port.Name
		if pt.Port.Number != 0 || pt.EndPort != nil {
			c.never = true
		}
	case pt.Port.Number < 1 || pt.Port.Number > 65535:
		c.never = true
	default:
		c.port = uint16(pt.Port.Number)
		if pt.EndPort != nil && *pt.EndPort != pt.Port.Number {
			if *pt.EndPort < pt.Port.Number || *pt.EndPort > 65535 {
				c.never = true
			}
			c.endPort = uint16(*pt.EndPort)
		}
	}
	return c
}

// peerSelector builds the (unregistered) selector of a peer. See the
// package doc for what each kind of peer matches.
func (e *Engine) peerSelector(p *cPolicy, peer *Peer) *cSelector {
	hasSel := peer.PodSelector != nil || peer.NamespaceSelector != nil
	switch {
	case peer.IPBlock != nil && !hasSel:
		cidr, err := netip.ParsePrefix(peer.IPBlock.CIDR)
		if err != nil || len(peer.Clusters) > 0 {
			return nothingSelector()
		}
		s := &cSelector{kind: selectCIDR, cidr: normalizePrefix(cidr)}
		for _, x := range peer.IPBlock.Except {
			ex, err := netip.ParsePrefix(x)
			if err != nil {
				return nothingSelector() // dropping it would widen the match
			}
			s.except = append(s.except, normalizePrefix(ex))
		}
		slices.SortFunc(s.except, comparePrefixes)
		s.except = slices.Compact(s.except)
		var b strings.Builder
		b.WriteString("cidr " + s.cidr.String())
		for _, x := range s.except {
			b.WriteString(" except " + x.String())
		}
		s.key = b.String()
		return s
	case peer.IPBlock == nil && hasSel:
		// A pod identity always has the namespace label; requiring it keeps
		// a selector that is otherwise empty from matching other kinds.
		rs := []requirement{{source: SourceK8s, key: LabelNamespace, op: OpExists}}
		if peer.PodSelector != nil {
			rs = compileSelector(rs, SourceK8s, peer.PodSelector)
		}
		if peer.NamespaceSelector != nil {
			rs = compileSelector(rs, SourceNamespace, peer.NamespaceSelector)
		} else {
			rs = append(rs, requirement{source: SourceK8s, key: LabelNamespace, op: OpIn, values: []string{p.namespace}})
		}
		switch {
		case len(peer.Clusters) == 0:
			rs = append(rs, requirement{source: SourceMesh, key: LabelCluster, op: OpIn, values: []string{e.cluster}})
		case slices.Contains(peer.Clusters, ClustersAll):
		default:
			rs = append(rs, requirement{source: SourceMesh, key: LabelCluster, op: OpIn,
				values: slices.Compact(slices.Sorted(slices.Values(peer.Clusters)))})
		}
		s := &cSelector{kind: selectPods, reqs: normalize(rs)}
		if peer.NamespaceSelector == nil {
			s.ns = p.namespace
		}
		s.key = "pods " + s.reqs.String()
		return s
	}
	return nothingSelector()
}

func nothingSelector() *cSelector { return &cSelector{kind: selectNothing, key: "nothing"} }

// acquire returns the cached selector equal to s, or registers s and
// evaluates it against every identity. The caller records its use in
// users.
func (e *Engine) acquire(s *cSelector) *cSelector {
	if c := e.selectors[s.key]; c != nil {
		return c
	}
	s.matches = make(map[uint32]struct{})
	s.users = make(map[*cRule]int)
	e.selectors[s.key] = s
	switch {
	case s.kind == selectNothing:
		return s
	case s.kind == selectCIDR:
		e.cidrSelectors[s] = struct{}{}
	case s.ns == "":
		e.podSelectorsAnyNS[s] = struct{}{}
	default:
		m := e.podSelectorsByNS[s.ns]
		if m == nil {
			m = make(map[*cSelector]struct{})
			e.podSelectorsByNS[s.ns] = m
		}
		m[s] = struct{}{}
	}
	test := func(candidates map[uint32]*cIdentity) {
		for id, ci := range candidates {
			if s.matchesIdentity(ci) {
				s.matches[id] = struct{}{}
				ci.selectors[s] = struct{}{}
			}
		}
	}
	switch {
	case s.kind == selectCIDR:
		test(e.cidrIdentities)
		if world := e.identities[WorldID]; s.matchesIdentity(world) {
			s.matches[WorldID] = struct{}{}
			world.selectors[s] = struct{}{}
		}
	case s.ns != "":
		test(e.podIdentitiesByNS[s.ns])
	default:
		for _, m := range e.podIdentitiesByNS {
			test(m)
		}
	}
	return s
}

// release drops one use of s by r and forgets s when nothing uses it.
func (e *Engine) release(s *cSelector, r *cRule) {
	if s.users[r]--; s.users[r] <= 0 {
		delete(s.users, r)
	}
	if len(s.users) > 0 {
		return
	}
	for id := range s.matches {
		if ci := e.identities[id]; ci != nil {
			delete(ci.selectors, s)
		}
	}
	delete(e.selectors, s.key)
	delete(e.cidrSelectors, s)
	delete(e.podSelectorsAnyNS, s)
	if m := e.podSelectorsByNS[s.ns]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(e.podSelectorsByNS, s.ns)
		}
	}
}

func (s *cSelector) matchesIdentity(id *cIdentity) bool {
	switch s.kind {
	case selectCIDR:
		if id.ID == WorldID {
			return s.cidr.Bits() == 0
		}
		if !id.CIDR.IsValid() || !prefixInside(id.CIDR, s.cidr) {
			return false
		}
		for _, x := range s.except {
			if prefixInside(id.CIDR, x) {
				return false
			}
		}
		return true
	case selectPods:
		if id.ID <= maxReserved || id.CIDR.IsValid() {
			return false
		}
		return s.reqs.matches(id.Labels)
	}
	return false
}

// prefixInside reports whether p lies within outer.
func prefixInside(p, outer netip.Prefix) bool {
	return p.Addr().Is4() == outer.Addr().Is4() && p.Bits() >= outer.Bits() && outer.Contains(p.Addr())
}

// normalizePrefix masks p and writes IPv4-mapped IPv6 prefixes as IPv4,
// so that equal blocks compare equal.
func normalizePrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

func comparePrefixes(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

func compareNamedPorts(a, b NamedPort) int {
	return cmp.Or(strings.Compare(a.Name, b.Name), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
}

// distinctPorts returns the usable named ports sorted and without
// duplicates, in a new slice.
func distinctPorts(ports []NamedPort) []NamedPort {
	var out []NamedPort
	for _, p := range ports {
		if p.Name != "" && p.Port != 0 && p.Protocol != 0 {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, compareNamedPorts)
	return slices.Compact(out)
}
