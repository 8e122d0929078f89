package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// addPolicy registers a compiled policy and adds its entries to the
// endpoints it selects.
func (e *Engine) addPolicy(p *cPolicy) {
	e.policies[p.key] = p
	ns := e.byNamespace[p.namespace]
	if ns == nil {
		ns = make(map[*cPolicy]struct{})
		e.byNamespace[p.namespace] = ns
	}
	ns[p] = struct{}{}
	for _, r := range p.rules {
		for _, pt := range r.ports {
			if pt.name != "" && !pt.never && r.dir == Egress {
				pn := portName{pt.name, pt.proto}
				if e.egressNamed[pn] == nil {
					e.egressNamed[pn] = make(map[*cRule]int)
				}
				e.egressNamed[pn][r]++
			}
		}
		for _, s := range r.peers {
			if s.kind == selectCIDR {
				for _, x := range append([]netip.Prefix{s.cidr}, s.except...) {
					e.cidrs[x]++
					p.cidrs = append(p.cidrs, x)
				}
			}
		}
	}
	for _, ce := range e.endpoints {
		if p.subject.matches(ce.Labels) {
			e.attach(p, ce)
		}
	}
}

// removePolicy takes a policy's entries away from the endpoints it
// selects and unregisters it.
func (e *Engine) removePolicy(p *cPolicy) {
	for ce := range p.selected {
		e.detach(p, ce)
	}
	for _, r := range p.rules {
		for _, pt := range r.ports {
			if pt.name != "" && !pt.never && r.dir == Egress {
				pn := portName{pt.name, pt.proto}
				if m := e.egressNamed[pn]; m != nil {
					if m[r]--; m[r] <= 0 {
						delete(m, r)
					}
					if len(m) == 0 {
						delete(e.egressNamed, pn)
					}
				}
			}
		}
		for _, s := range r.peers {
			e.release(s, r)
		}
	}
	for _, x := range p.cidrs {
		if e.cidrs[x]--; e.cidrs[x] <= 0 {
			delete(e.cidrs, x)
		}
	}
	delete(e.byNamespace[p.namespace], p)
	if len(e.byNamespace[p.namespace]) == 0 {
		delete(e.byNamespace, p.namespace)
	}
	delete(e.policies, p.key)
}

// attach makes p select ce and adds p's entries to it.
func (e *Engine) attach(p *cPolicy, ce *cEndpoint) {
	e.noteEnforcement(ce)
	p.selected[ce] = struct{}{}
	ce.policies[p] = struct{}{}
	if p.ingress {
		ce.nIngress++
	}
	if p.egress {
		ce.nEgress++
	}
	for _, r := range p.rules {
		e.ruleEntries(r, ce, +1)
	}
}

// detach undoes attach.
func (e *Engine) detach(p *cPolicy, ce *cEndpoint) {
	e.noteEnforcement(ce)
	for _, r := range p.rules {
		e.ruleEntries(r, ce, -1)
	}
	if p.ingress {
		ce.nIngress--
	}
	if p.egress {
		ce.nEgress--
	}
	delete(p.selected, ce)
	delete(ce.policies, p)
}

func (e *Engine) detachAll(ce *cEndpoint) {
	for p := range ce.policies {
		e.detach(p, ce)
	}
}

// removeIdentity takes an identity out of every selector and its entries
// out of every endpoint.
func (e *Engine) removeIdentity(ci *cIdentity) {
	for s := range ci.selectors {
		e.selectorIdentity(s, ci.ID, -1)
		delete(s.matches, ci.ID)
	}
	delete(e.identities, ci.ID)
	delete(e.cidrIdentities, ci.ID)
	if ns, ok := ci.Labels.Get(SourceK8s, LabelNamespace); ok && !ci.CIDR.IsValid() {
		if m := e.podIdentitiesByNS[ns]; m != nil {
			delete(m, ci.ID)
			if len(m) == 0 {
				delete(e.podIdentitiesByNS, ns)
			}
		}
	}
}

// portEntry is a resolved port: the L4 part of an Entry.
type portEntry struct {
	proto         uint8
	port, endPort uint16
}

// resolve returns the L4 parts r allows for endpoint ce, one per
// contribution (so possibly repeated); empty when r's ports are all names
// that resolve to nothing.
func (e *Engine) resolve(r *cRule, ce *cEndpoint) []portEntry {
	if len(r.ports) == 0 {
		return []portEntry{{}}
	}
	out := make([]portEntry, 0, len(r.ports))
	for _, p := range r.ports {
		switch {
		case p.never:
		case p.name == "":
			out = append(out, portEntry{p.proto, p.port, p.endPort})
		case r.dir == Ingress:
			for _, np := range ce.Ports {
				if np.Name == p.name && np.Protocol == p.proto {
					out = append(out, portEntry{proto: p.proto, port: np.Port})
				}
			}
		default:
			for port := range e.named[portName{p.name, p.proto}] {
				out = append(out, portEntry{proto: p.proto, port: port})
			}
		}
	}
	return out
}

// ruleEntries adds d times every contribution of r to ce.
func (e *Engine) ruleEntries(r *cRule, ce *cEndpoint, d int) {
	ports := e.resolve(r, ce)
	if len(ports) == 0 {
		return
	}
	if len(r.peers) == 0 {
		for _, pt := range ports {
			e.adjust(ce, Entry{Direction: r.dir, Protocol: pt.proto, Port: pt.port, EndPort: pt.endPort}, d)
		}
		return
	}
	for _, s := range r.peers {
		for id := range s.matches {
			for _, pt := range ports {
				e.adjust(ce, Entry{Direction: r.dir, Identity: id, Protocol: pt.proto, Port: pt.port, EndPort: pt.endPort}, d)
			}
		}
	}
}

// selectorIdentity adds d times the contributions of identity id through
// selector s, to every endpoint selected by a policy whose rules use s.
func (e *Engine) selectorIdentity(s *cSelector, id uint32, d int) {
	for r, n := range s.users {
		for ce := range r.policy.selected {
			for _, pt := range e.resolve(r, ce) {
				e.adjust(ce, Entry{Direction: r.dir, Identity: id, Protocol: pt.proto, Port: pt.port, EndPort: pt.endPort}, d*n)
			}
		}
	}
}

// namedPort counts one owner more (d=1) or less (d=-1) for a cluster-wide
// named port, and when the port appears or disappears, adds or removes
// its contributions to the egress rules that name it.
func (e *Engine) namedPort(p NamedPort, d int) {
	pn := portName{p.Name, p.Protocol}
	m := e.named[pn]
	if m == nil {
		m = make(map[uint16]int)
		e.named[pn] = m
	}
	before := m[p.Port]
	m[p.Port] = before + d
	if after := before + d; after <= 0 {
		delete(m, p.Port)
		if len(m) == 0 {
			delete(e.named, pn)
		}
	}
	if (before > 0) == (before+d > 0) {
		return
	}
	for r, n := range e.egressNamed[pn] {
		for ce := range r.policy.selected {
			en := Entry{Direction: Egress, Protocol: p.Protocol, Port: p.Port}
			if len(r.peers) == 0 {
				e.adjust(ce, en, d*n)
				continue
			}
			for _, s := range r.peers {
				for id := range s.matches {
					en.Identity = id
					e.adjust(ce, en, d*n)
				}
			}
		}
	}
}

// adjust changes the contribution count of an entry, noting the entry's
// state before the call the first time it changes.
func (e *Engine) adjust(ce *cEndpoint, en Entry, d int) {
	if d == 0 {
		return
	}
	before := ce.entries[en]
	after := before + d
	switch {
	case after < 0:
		panic(fmt.Sprintf("policy: entry %+v of endpoint %d has %d contributions, removing %d: Engine bug", en, ce.ID, before, -d))
	case after == 0:
		delete(ce.entries, en)
	default:
		ce.entries[en] = after
	}
	if (before == 0) != (after == 0) {
		k := changeKey{ce.ID, en}
		if _, seen := e.txEntries[k]; !seen {
			e.txEntries[k] = before > 0
		}
	}
}

// noteEnforcement records an endpoint's enforcement before the call, the
// first time the call may change it.
func (e *Engine) noteEnforcement(ce *cEndpoint) {
	if _, seen := e.txEnforce[ce.ID]; !seen {
		e.txEnforce[ce.ID] = ce.enforcement()
	}
}

func (e *Engine) begin() {
	clear(e.txEntries)
	clear(e.txEnforce)
}

// commit returns what changed since begin.
func (e *Engine) commit() Delta {
	var d Delta
	for k, was := range e.txEntries {
		now := false
		if ce := e.endpoints[k.endpoint]; ce != nil {
			now = ce.entries[k.entry] > 0
		}
		if now != was {
			d.Changes = append(d.Changes, Change{Endpoint: k.endpoint, Entry: k.entry, Add: now})
		}
	}
	for id, was := range e.txEnforce {
		now := Enforcement{Endpoint: id}
		if ce := e.endpoints[id]; ce != nil {
			now = ce.enforcement()
		}
		if now != was {
			d.Enforcement = append(d.Enforcement, now)
		}
	}
	slices.SortFunc(d.Changes, func(a, b Change) int {
		return cmp.Or(cmp.Compare(a.Endpoint, b.Endpoint), compareEntries(a.Entry, b.Entry))
	})
	slices.SortFunc(d.Enforcement, func(a, b Enforcement) int { return cmp.Compare(a.Endpoint, b.Endpoint) })
	e.begin()
	return d
}
