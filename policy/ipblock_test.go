package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// ipBlockGen draws ipBlocks whose prefixes nest and overlap: most inside
// 10.0.0.0/16, a few wider (10.0.0.0/8, 0.0.0.0/0) and some IPv6.
type ipBlockGen struct{ r *rand.Rand }

// prefix returns a random prefix inside outer, at least one bit longer
// when strict; the zero Prefix if there is none.
func (g ipBlockGen) prefix(outer netip.Prefix, strict bool) netip.Prefix {
	width := outer.Addr().BitLen()
	lo := outer.Bits()
	if strict {
		lo++
	}
	if lo > width {
		return netip.Prefix{}
	}
	// Stay near the outer prefix most of the time, so that blocks nest.
	hi := min(width, lo+12)
	if g.r.IntN(4) == 0 {
		hi = width
	}
	return g.inside(outer, lo+g.r.IntN(hi-lo+1))
}

// inside returns a prefix of bits bits inside outer, random past outer's.
func (g ipBlockGen) inside(outer netip.Prefix, bits int) netip.Prefix {
	a := outer.Addr().AsSlice()
	for i := outer.Bits(); i < bits; i++ {
		if g.r.IntN(2) == 0 {
			a[i/8] |= 0x80 >> (i % 8)
		}
	}
	addr, _ := netip.AddrFromSlice(a)
	return netip.PrefixFrom(addr, bits).Masked()
}

// blockRoots are where blocks and addresses are drawn from; ::/0 is left
// out (see TestIPBlockLongestPrefix).
var blockRoots = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.0.0.0/16"),
	netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("2001:db8::/112"),
}

func (g ipBlockGen) block() *IPBlock {
	root := blockRoots[g.r.IntN(len(blockRoots))]
	cidr := root
	if g.r.IntN(3) != 0 {
		cidr = g.prefix(root, false)
	}
	b := &IPBlock{CIDR: cidr.String()}
	for range g.r.IntN(4) {
		if x := g.prefix(cidr, true); x.IsValid() {
			b.Except = append(b.Except, x.String())
		}
	}
	return b
}

// address returns an address near the generated blocks: inside one of
// them, or anywhere in their roots.
func (g ipBlockGen) address(blocks []*IPBlock) netip.Addr {
	var p netip.Prefix
	if len(blocks) > 0 && g.r.IntN(3) != 0 {
		b := blocks[g.r.IntN(len(blocks))]
		p = netip.MustParsePrefix(b.CIDR)
		if len(b.Except) > 0 && g.r.IntN(2) == 0 {
			p = netip.MustParsePrefix(b.Except[g.r.IntN(len(b.Except))])
		}
	} else {
		p = blockRoots[g.r.IntN(len(blockRoots))]
	}
	return g.inside(p, p.Addr().BitLen()).Addr()
}

// directMatch evaluates the Kubernetes definition: a is in cidr and in no
// except.
func directMatch(b *IPBlock, a netip.Addr) bool {
	if !netip.MustParsePrefix(b.CIDR).Contains(a) {
		return false
	}
	for _, x := range b.Except {
		if netip.MustParsePrefix(x).Contains(a) {
			return false
		}
	}
	return true
}

// TestIPBlockLongestPrefix checks the rule the agent's datapath relies on
// for ipBlocks: classify an address by the longest of the prefixes the
// engine names (CIDRs, each with its CIDR identity, and WorldCIDRs, with
// world) that contains it, and the engine's entries for that identity
// allow exactly the addresses that the policies' ipBlocks allow by the
// Kubernetes definition (in cidr, in no except), union over rules and
// policies. Policies come and go at random, and the CIDR identities
// follow CIDRs as the agent's do.
func TestIPBlockLongestPrefix(t *testing.T) {
	const (
		sequences = 200
		ops       = 12
		addresses = 200
	)
	ep := Endpoint{ID: 1, Labels: podLabelSet(t, localCluster, "prod", map[string]string{"app": "web"}, nil)}
	for seed := range uint64(sequences) {
		r := rand.New(rand.NewPCG(seed, 0x1b10c))
		g := ipBlockGen{r}
		e := NewEngine(localCluster)
		e.SetEndpoint(ep)
		policies := map[string]*Policy{}
		ids := map[netip.Prefix]uint32{} // the CIDR identities, as the agent keeps them
		next := uint32(1 << 24)
		syncCIDRs := func() {
			want := map[netip.Prefix]bool{}
			for _, p := range e.CIDRs() {
				want[p] = true
				if _, ok := ids[p]; !ok {
					ids[p] = next
					e.SetIdentity(Identity{ID: next, CIDR: p})
					next++
				}
			}
			for p, id := range ids {
				if !want[p] {
					e.DeleteIdentity(id)
					delete(ids, p)
				}
			}
		}
		for op := range ops {
			name := fmt.Sprintf("p%d", r.IntN(3))
			if r.IntN(4) == 0 {
				delete(policies, name)
				e.DeletePolicy("prod", name)
			} else {
				p := &Policy{Kind: KindNetworkPolicy, Namespace: "prod", Name: name}
				p.Spec.PolicyTypes = []Type{TypeIngress, TypeEgress}
				for range 1 + r.IntN(2) {
					var in IngressRule
					for range 1 + r.IntN(3) {
						in.From = append(in.From, Peer{IPBlock: g.block()})
					}
					p.Spec.Ingress = append(p.Spec.Ingress, in)
				}
				var out EgressRule
				for range 1 + r.IntN(3) {
					out.To = append(out.To, Peer{IPBlock: g.block()})
				}
				p.Spec.Egress = []EgressRule{out}
				if err := p.Validate(); err != nil {
					t.Fatalf("seed %d: generated an invalid policy: %v", seed, err)
				}
				policies[name] = p
				e.SetPolicy(p)
			}
			syncCIDRs()

			// The datapath's view: the longest named prefix of an address.
			named := map[netip.Prefix]uint32{}
			for p, id := range ids {
				named[p] = id
			}
			for _, p := range e.WorldCIDRs() {
				named[p] = WorldID
			}
			entries := map[Entry]bool{}
			for _, en := range e.Entries(ep.ID) {
				entries[en] = true
			}
			var blocks [2][]*IPBlock // by direction: ingress, egress
			for _, p := range policies {
				for _, r := range p.Spec.Ingress {
					for _, peer := range r.From {
						blocks[0] = append(blocks[0], peer.IPBlock)
					}
				}
				for _, r := range p.Spec.Egress {
					for _, peer := range r.To {
						blocks[1] = append(blocks[1], peer.IPBlock)
					}
				}
			}
			all := append(append([]*IPBlock(nil), blocks[0]...), blocks[1]...)
			for range addresses {
				a := g.address(all)
				var best netip.Prefix
				id, found := uint32(0), false
				for p, pid := range named {
					if p.Contains(a) && (!found || p.Bits() > best.Bits()) {
						best, id, found = p, pid, true
					}
				}
				for d, dir := range []Direction{Ingress, Egress} {
					want := false
					for _, b := range blocks[d] {
						want = want || directMatch(b, a)
					}
					got := found && entries[Entry{Direction: dir, Identity: id}]
					if got != want {
						t.Fatalf("seed %d op %d: %s from %s: longest named prefix %v (identity %d, found %v) allows %v; the ipBlocks say %v\npolicies: %v",
							seed, op, dir, a, best, id, found, got, want, describeBlocks(policies))
					}
				}
			}
		}
	}
}

func describeBlocks(ps map[string]*Policy) string {
	var out string
	for name, p := range ps {
		out += "\n  " + name + ":"
		for _, r := range p.Spec.Ingress {
			for _, peer := range r.From {
				out += fmt.Sprintf(" in %s-%v", peer.IPBlock.CIDR, peer.IPBlock.Except)
			}
		}
		for _, r := range p.Spec.Egress {
			for _, peer := range r.To {
				out += fmt.Sprintf(" out %s-%v", peer.IPBlock.CIDR, peer.IPBlock.Except)
			}
		}
	}
	return out
}
