package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/meshplane/meshplane/labels"
)

// gen draws random policies, identities, endpoints and named ports from
// small pools, so that random operations collide: replace, overlap, share
// selectors, resolve named ports, and delete what exists.
type gen struct {
	t *testing.T
	r *rand.Rand
}

var (
	genApps       = []string{"web", "api", "db"}
	genNamespaces = []string{"prod", "dev"}
	genClusters   = []string{localCluster, "west"}
	genCIDRs      = []string{"10.0.0.0/8", "10.96.0.0/12", "10.96.1.0/24", "192.168.0.0/16", "0.0.0.0/0", "2001:db8::/32", "::/0"}
	genPortNames  = []string{"http", "dns", "metrics"}
)

func (g *gen) pick(s []string) string { return s[g.r.IntN(len(s))] }

func (g *gen) selector() *LabelSelector {
	switch g.r.IntN(5) {
	case 0:
		return &LabelSelector{}
	case 1:
		return &LabelSelector{MatchLabels: map[string]string{"app": g.pick(genApps)}}
	case 2:
		return &LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "app", Operator: OpNotIn, Values: []string{g.pick(genApps)}}}}
	case 3:
		return &LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: OpExists}}}
	}
	return &LabelSelector{MatchLabels: map[string]string{"app": g.pick(genApps)},
		MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: OpDoesNotExist}}}
}

func (g *gen) peers(mesh bool) []Peer {
	var out []Peer
	for range g.r.IntN(3) {
		var p Peer
		switch g.r.IntN(4) {
		case 0:
			p.PodSelector = g.selector()
		case 1:
			p.NamespaceSelector = &LabelSelector{MatchLabels: map[string]string{"env": g.pick(genNamespaces)}}
			if g.r.IntN(2) == 0 {
				p.NamespaceSelector = &LabelSelector{}
			}
		case 2:
			p.PodSelector, p.NamespaceSelector = g.selector(), &LabelSelector{}
		default:
			cidr := netip.MustParsePrefix(g.pick(genCIDRs))
			p.IPBlock = &IPBlock{CIDR: cidr.String()}
			for _, c := range genCIDRs {
				x := netip.MustParsePrefix(c)
				if x.Bits() > cidr.Bits() && cidr.Contains(x.Addr()) && g.r.IntN(2) == 0 {
					p.IPBlock.Except = append(p.IPBlock.Except, c)
				}
			}
		}
		if mesh && p.IPBlock == nil {
			switch g.r.IntN(3) {
			case 0:
				p.Clusters = []string{ClustersAll}
			case 1:
				p.Clusters = []string{g.pick(genClusters)}
			}
		}
		out = append(out, p)
	}
	return out
}

func (g *gen) ports() []Port {
	var out []Port
	for range g.r.IntN(3) {
		var p Port
		switch g.r.IntN(5) {
		case 0:
			p.Port = PortNumber(int32(80 + g.r.IntN(3)))
		case 1:
			p.Port, p.EndPort = PortNumber(8000), new(int32(8000+int32(g.r.IntN(3))*50))
		case 2:
			p.Port = PortName(g.pick(genPortNames))
		case 3:
			p.Protocol = ProtocolUDP
			p.Port = PortName("dns")
		default:
			p.Protocol = ProtocolSCTP
		}
		out = append(out, p)
	}
	return out
}

func (g *gen) policy() *Policy {
	mesh := g.r.IntN(2) == 0
	p := &Policy{Kind: KindNetworkPolicy, Namespace: g.pick(genNamespaces), Name: fmt.Sprintf("p%d", g.r.IntN(4))}
	if mesh {
		p.Kind = KindMeshNetworkPolicy
	}
	p.Spec.PodSelector = *g.selector()
	switch g.r.IntN(4) {
	case 0:
		p.Spec.PolicyTypes = []Type{TypeIngress}
	case 1:
		p.Spec.PolicyTypes = []Type{TypeEgress}
	case 2:
		p.Spec.PolicyTypes = []Type{TypeIngress, TypeEgress}
	}
	for range g.r.IntN(3) {
		p.Spec.Ingress = append(p.Spec.Ingress, IngressRule{Ports: g.ports(), From: g.peers(mesh)})
	}
	for range g.r.IntN(3) {
		p.Spec.Egress = append(p.Spec.Egress, EgressRule{Ports: g.ports(), To: g.peers(mesh)})
	}
	if err := p.Validate(); err != nil {
		g.t.Fatalf("generated an invalid policy: %v", err)
	}
	return p
}

func (g *gen) podLabels() labels.Set {
	pod := map[string]string{"app": g.pick(genApps)}
	if g.r.IntN(2) == 0 {
		pod["tier"] = "x"
	}
	ns := g.pick(genNamespaces)
	return podLabelSet(g.t, g.pick(genClusters), ns, pod, map[string]string{"env": ns})
}

func (g *gen) identity() Identity {
	id := Identity{ID: uint32(300 + g.r.IntN(16))}
	if g.r.IntN(3) == 0 {
		id.CIDR = netip.MustParsePrefix(g.pick(genCIDRs[:4]))
		if g.r.IntN(2) == 0 {
			id.CIDR = netip.MustParsePrefix("10.96.1.128/25")
		}
		return id
	}
	id.Labels = g.podLabels()
	return id
}

func (g *gen) namedPorts() []NamedPort {
	var out []NamedPort
	for range g.r.IntN(3) {
		proto := ProtoTCP
		if g.r.IntN(3) == 0 {
			proto = ProtoUDP
		}
		out = append(out, NamedPort{Name: g.pick(genPortNames), Port: uint16(8080 + g.r.IntN(3)), Protocol: proto})
	}
	return out
}

func (g *gen) endpoint() Endpoint {
	return Endpoint{ID: uint32(1 + g.r.IntN(5)), Identity: uint32(300 + g.r.IntN(16)), Labels: g.podLabels(), Ports: g.namedPorts()}
}

// world is the engine's inputs as a plain model.
type world struct {
	policies   map[string]*Policy
	identities map[uint32]Identity
	endpoints  map[uint32]Endpoint
	named      map[string][]NamedPort
}

// datapath applies deltas the way the agent does, to check that the delta
// stream alone reproduces the engine's state.
type datapath struct {
	t        *testing.T
	entries  map[uint32]map[Entry]bool
	enforced map[uint32]Enforcement
}

func (d *datapath) apply(delta Delta) {
	for _, c := range delta.Changes {
		m := d.entries[c.Endpoint]
		if m == nil {
			m = make(map[Entry]bool)
			d.entries[c.Endpoint] = m
		}
		if m[c.Entry] == c.Add {
			d.t.Fatalf("delta %+v: the entry is already in that state", c)
		}
		if c.Add {
			m[c.Entry] = true
		} else {
			delete(m, c.Entry)
		}
	}
	for _, en := range delta.Enforcement {
		if d.enforced[en.Endpoint] == en {
			d.t.Fatalf("delta %+v: enforcement did not change", en)
		}
		d.enforced[en.Endpoint] = en
	}
}

// TestEngineIncrementalMatchesFresh applies random sequences of operations
// incrementally and checks, after each sequence, that the engine holds
// exactly what a fresh engine fed the final state computes, and that the
// deltas it returned add up to that state.
func TestEngineIncrementalMatchesFresh(t *testing.T) {
	const (
		sequences = 150
		ops       = 250
	)
	for seed := range uint64(sequences) {
		g := &gen{t: t, r: rand.New(rand.NewPCG(seed, 0x5eed))}
		w := world{policies: map[string]*Policy{}, identities: map[uint32]Identity{}, endpoints: map[uint32]Endpoint{}, named: map[string][]NamedPort{}}
		dp := &datapath{t: t, entries: map[uint32]map[Entry]bool{}, enforced: map[uint32]Enforcement{}}
		e := NewEngine(localCluster)
		for range ops {
			var d Delta
			switch op := g.r.IntN(10); op {
			case 0, 1:
				p := g.policy()
				w.policies[p.Key()] = p
				d = e.SetPolicy(p)
			case 2:
				ns, name := g.pick(genNamespaces), fmt.Sprintf("p%d", g.r.IntN(4))
				delete(w.policies, ns+"/"+name)
				d = e.DeletePolicy(ns, name)
			case 3, 4:
				id := g.identity()
				w.identities[id.ID] = id
				d = e.SetIdentity(id)
			case 5:
				id := uint32(300 + g.r.IntN(16))
				delete(w.identities, id)
				d = e.DeleteIdentity(id)
			case 6, 7:
				ep := g.endpoint()
				w.endpoints[ep.ID] = ep
				d = e.SetEndpoint(ep)
			case 8:
				id := uint32(1 + g.r.IntN(5))
				delete(w.endpoints, id)
				d = e.DeleteEndpoint(id)
			default:
				owner := fmt.Sprintf("10.0.0.%d", g.r.IntN(4))
				ports := g.namedPorts()
				if len(ports) == 0 {
					delete(w.named, owner)
				} else {
					w.named[owner] = ports
				}
				d = e.SetNamedPorts(owner, ports)
			}
			dp.apply(d)
		}

		fresh := NewEngine(localCluster)
		for _, id := range w.identities {
			fresh.SetIdentity(id)
		}
		for _, ep := range w.endpoints {
			fresh.SetEndpoint(ep)
		}
		for owner, ports := range w.named {
			fresh.SetNamedPorts(owner, ports)
		}
		for _, p := range w.policies {
			fresh.SetPolicy(p)
		}
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			assertSameState(t, e, fresh)
			for ep := uint32(1); ep < 10; ep++ {
				var fromDeltas []Entry
				for en := range dp.entries[ep] {
					fromDeltas = append(fromDeltas, en)
				}
				slices.SortFunc(fromDeltas, compareEntries)
				if got := e.Entries(ep); !reflect.DeepEqual(fromDeltas, got) && len(got)+len(fromDeltas) > 0 {
					t.Errorf("endpoint %d: deltas add up to\n %+v\nbut the engine has\n %+v", ep, fromDeltas, got)
				}
				i, eg := e.Enforced(ep)
				if en := dp.enforced[ep]; en.Ingress != i || en.Egress != eg {
					t.Errorf("endpoint %d: deltas say enforced %+v, engine says %v %v", ep, en, i, eg)
				}
			}
			// Deleting everything leaves nothing behind.
			for key, p := range w.policies {
				_ = key
				e.DeletePolicy(p.Namespace, p.Name)
			}
			for id := range w.identities {
				e.DeleteIdentity(id)
			}
			for owner := range w.named {
				e.SetNamedPorts(owner, nil)
			}
			for id := range w.endpoints {
				e.DeleteEndpoint(id)
			}
			if len(e.selectors) != 0 || len(e.podSelectorsByNS) != 0 || len(e.podSelectorsAnyNS) != 0 || len(e.cidrSelectors) != 0 ||
				len(e.podIdentitiesByNS) != 0 || len(e.cidrIdentities) != 0 || len(e.policies) != 0 || len(e.cidrs) != 0 || len(e.named) != 0 ||
				len(e.egressNamed) != 0 || len(e.byNamespace) != 0 || len(e.identities) != 1 || len(e.endpoints) != 0 {
				t.Errorf("state left after deleting everything: %d selectors, %d policies, %d cidrs, %d named, %d egressNamed, %d namespaces, %d identities, %d endpoints",
					len(e.selectors), len(e.policies), len(e.cidrs), len(e.named), len(e.egressNamed), len(e.byNamespace), len(e.identities), len(e.endpoints))
			}
		})
	}
}
