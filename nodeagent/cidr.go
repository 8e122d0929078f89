package nodeagent

import (
	"fmt"
	"net/netip"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/nodeagent/reconciler"
)

// cidrMap is the desired content of the CIDR map (mp_cidr): each prefix
// the policies' ipBlocks name with its node-local CIDR identity (the ones
// the ipcache gets too), and each /0 an ipBlock names with world. No pod,
// node or pod CIDR is in it, so its longest-prefix match of any address
// is the most specific ipBlock prefix containing it: the datapath's third
// policy lookup (bpf.PolicyKey), which makes an ipBlock select the pods
// inside it. With Config.IPBlockOutsideOnly it stays empty (and the
// reconciler empties what an earlier run left), so ipBlocks match only
// addresses without an identity of their own, as in Cilium.
//
// The map fails closed when the prefixes do not all fit: a missing
// except would let its addresses fall through to the block around it and
// be allowed, so rather than the prefixes that happen to fit, the table
// then holds none. An empty CIDR map only ever allows less (the third
// lookup is reached when nothing else allowed), and the agent reports
// the overflow until the policies shrink or --bpf-cidr-max grows.
//
// A nil *cidrMap does nothing. policyState's mu guards it.
type cidrMap struct {
	t       *reconciler.Table[bpf.IPCacheKey, bpf.CIDRValue]
	off     bool                    // Config.IPBlockOutsideOnly
	max     int                     // the map's capacity
	want    map[netip.Prefix]uint32 // every named prefix and its identity
	worlds  map[netip.Prefix]bool   // the /0s in want
	inTable bool                    // the table holds want; false while want does not fit
}

func newCIDRMap(t *reconciler.Table[bpf.IPCacheKey, bpf.CIDRValue], capacity int, outsideOnly bool) *cidrMap {
	return &cidrMap{t: t, off: outsideOnly, max: capacity, want: make(map[netip.Prefix]uint32),
		worlds: make(map[netip.Prefix]bool), inTable: true}
}

// set gives prefix p the CIDR identity id; id 0 removes it.
func (c *cidrMap) set(p netip.Prefix, id uint32) {
	if c == nil || c.off {
		return
	}
	k := bpf.IPCacheKeyFor(p)
	if id == 0 {
		delete(c.want, p)
	} else {
		c.want[p] = id
	}
	fits := len(c.want) <= c.max
	switch {
	case fits && c.inTable && id == 0:
		c.t.Delete(k)
	case fits && c.inTable:
		c.t.Set(k, bpf.CIDRValue{Identity: id})
	case fits: // back within the map's capacity
		for p, id := range c.want {
			c.t.Set(bpf.IPCacheKeyFor(p), bpf.CIDRValue{Identity: id})
		}
		c.inTable = true
	case c.inTable: // just over it (an addition): fail closed
		for p := range c.want {
			c.t.Delete(bpf.IPCacheKeyFor(p))
		}
		c.inTable = false
	}
}

// setWorlds makes the /0 prefixes exactly worlds (the engine's
// WorldCIDRs), each with the world identity.
func (c *cidrMap) setWorlds(worlds []netip.Prefix) {
	if c == nil || c.off {
		return
	}
	want := make(map[netip.Prefix]bool, len(worlds))
	for _, p := range worlds {
		want[p] = true
		if !c.worlds[p] {
			c.worlds[p] = true
			c.set(p, uint32(identity.World))
		}
	}
	for p := range c.worlds {
		if !want[p] {
			delete(c.worlds, p)
			c.set(p, 0)
		}
	}
}

// problem says why the CIDR map is not what the policies want, or "".
func (c *cidrMap) problem() string {
	if c == nil || c.inTable {
		return ""
	}
	return fmt.Sprintf("cidr map: the policies' ipBlocks name %d prefixes but the map holds at most %d (--bpf-cidr-max): "+
		"until it fits the map stays empty and ipBlocks match addresses outside the cluster only, as with --policy-ipblock-selects-pods=false",
		len(c.want), c.max)
}

// cidrProblem is cidrMap.problem under the policy state's lock.
func (s *policyState) cidrProblem() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cidrMap.problem()
}

// buildCIDRMap creates the CIDR map's table and reconciler, hands the
// table to the policy state, and seeds the CIDR identities from the
// pinned map.
func (a *Agent) buildCIDRMap() error {
	a.cidrT = reconciler.NewTable[bpf.IPCacheKey, bpf.CIDRValue]()
	if err := addReconciler(a, "cidr", a.cidrT, a.maps.CIDR); err != nil {
		return err
	}
	a.pol.cidrMap = newCIDRMap(a.cidrT, a.maps.CIDR.MaxEntries(), a.cfg.IPBlockOutsideOnly)
	pinned, err := readAll(a.maps.CIDR)
	if err != nil {
		return err
	}
	a.pol.seedCIDRIdentities(pinned)
	return nil
}

// seedCIDRIdentities records the CIDR identities found in the pinned CIDR
// map, so that a restarted agent gives each prefix the number it had:
// the ipcache, the CIDR map and the policy map then need no rewrite, and
// no packet meets a half-renumbered state. Seeds no policy names are
// dropped once the policies are loaded (markSynced).
func (s *policyState) seedCIDRIdentities(pinned map[bpf.IPCacheKey]bpf.CIDRValue) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range pinned {
		if p := k.Prefix(); p.IsValid() && v.Identity > cidrIdentityBase {
			s.cidrs.seed(p, v.Identity-cidrIdentityBase)
		}
	}
}
