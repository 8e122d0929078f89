package nodeagent

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/health"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/nodeagent/reconciler"
	"github.com/meshplane/meshplane/service"
)

// TestMirrorClusters: two clusters that both have a node1 and a node2
// (east, this node's, and west) keep apart in the mirror: node addresses,
// pod CIDRs, pod IPs, services under the same key and their backends
// each take their own cluster's node, gossip about east's node2 leaves
// west's node2 alone, and removing west leaves exactly east's entries.
func TestMirrorClusters(t *testing.T) {
	ipcT := reconciler.NewTable[bpf.IPCacheKey, bpf.IPCacheValue]()
	svcT := reconciler.NewTable[bpf.ServiceKey, bpf.ServiceValue]()
	beT := reconciler.NewTable[bpf.BackendKey, bpf.BackendValue]()
	m := newMirror(nodeRef{"east", "node1"}, ipcT, svcT, beT, 16, 16)

	// Cluster c (east 1, west 2) has node n at 192.168.c.n, with pod CIDR
	// 10.c.n.0/24, a pod 10.c.n.7 of identity 1000*c+n, and a service
	// default/web at 10.9c.0.10:80 whose backend is the pod on node2.
	for c, cluster := range []string{"east", "west"} {
		c := byte(c + 1)
		nodes, eps, svcs := nodeHandler{m, cluster}, endpointHandler{m, cluster}, serviceHandler{m, cluster}
		for _, n := range []byte{1, 2} {
			name := "node" + string('0'+n)
			nodes.Upsert(name, node.Record{Name: name,
				IPs:      []netip.Addr{netip.AddrFrom4([4]byte{192, 168, c, n})},
				PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, c, n, 0}), 24)}})
			ip := netip.AddrFrom4([4]byte{10, c, n, 7})
			eps.Upsert(ipcache.KeyOf(ip), ipcache.Entry{IP: ip, Identity: identity.ID(1000*int(c) + int(n)), Node: name})
		}
		svcs.Upsert("default/web", service.Service{Namespace: "default", Name: "web", Frontends: []service.Frontend{{
			Address:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 95 + c, 0, 10}), 80),
			Protocol: service.TCP,
			Backends: []service.Backend{{Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, c, 2, 7}), 8080), Node: "node2"}},
		}}})
	}
	// A key of west's that never decoded takes west's node1 (whose pod
	// CIDR covers it) as its node.
	endpointHandler{m, "west"}.Invalid("10.2.1.9", nil)
	// A delete from west of east's pod IP concerns west's entry only.
	endpointHandler{m, "west"}.Delete("10.1.2.7")

	type entry struct {
		prefix string
		id     identity.ID
		node   string
		flags  bpf.IPCacheFlags
	}
	checkIPCache := func(step string, want ...entry) {
		t.Helper()
		exp := make(map[bpf.IPCacheKey]bpf.IPCacheValue)
		for _, e := range want {
			exp[bpf.IPCacheKeyFor(netip.MustParsePrefix(e.prefix))] = bpf.IPCacheValueFor(uint32(e.id), netip.MustParseAddr(e.node), e.flags)
		}
		got := make(map[bpf.IPCacheKey]bpf.IPCacheValue)
		ipcT.Range(func(k bpf.IPCacheKey, v bpf.IPCacheValue) bool { got[k] = v; return true })
		if !maps.Equal(got, exp) {
			t.Errorf("%s: ipcache\n%v\nwant\n%v", step, got, exp)
		}
	}
	east := []entry{
		{"192.168.1.1/32", identity.Host, "192.168.1.1", bpf.IPCacheLocal},
		{"10.1.1.0/24", identity.World, "192.168.1.1", bpf.IPCacheLocal},
		{"10.1.1.7/32", 1001, "192.168.1.1", bpf.IPCacheLocal},
		{"192.168.1.2/32", identity.RemoteNode, "192.168.1.2", 0},
		{"10.1.2.7/32", 1002, "192.168.1.2", 0},
	}
	eastNode2CIDR := entry{"10.1.2.0/24", identity.World, "192.168.1.2", 0}
	west := []entry{
		// west's node1 is not this node, though it has its name.
		{"192.168.2.1/32", identity.RemoteNode, "192.168.2.1", 0},
		{"10.2.1.0/24", identity.World, "192.168.2.1", 0},
		{"10.2.1.7/32", 2001, "192.168.2.1", 0},
		{"10.2.1.9/32", identity.Unknown, "192.168.2.1", 0},
		{"192.168.2.2/32", identity.RemoteNode, "192.168.2.2", 0},
		{"10.2.2.0/24", identity.World, "192.168.2.2", 0},
		{"10.2.2.7/32", 2002, "192.168.2.2", 0},
	}
	// checkServices compares each frontend's usable backends with want
	// (a frontend missing from want must have no slots at all), and the
	// backends map with the union.
	checkServices := func(step string, want map[string][]string) {
		t.Helper()
		var all []string
		for _, fe := range []string{"10.96.0.10:80", "10.97.0.10:80"} {
			ap := netip.MustParseAddrPort(fe)
			slot0, ok := svcT.Get(bpf.ServiceKeyFor(ap, 6, 0))
			bes, wanted := want[fe]
			if ok != wanted {
				t.Errorf("%s: frontend %s installed %v, want %v", step, fe, ok, wanted)
				continue
			}
			var got []string
			for i := range slot0.Count {
				s, _ := svcT.Get(bpf.ServiceKeyFor(ap, 6, i+1))
				b, _ := beT.Get(bpf.BackendKey{ID: s.BackendID})
				got = append(got, b.AddrPort().String())
			}
			if !slices.Equal(got, bes) {
				t.Errorf("%s: frontend %s has backends %q, want %q", step, fe, got, bes)
			}
			all = append(all, bes...)
		}
		var got []string
		beT.Range(func(_ bpf.BackendKey, v bpf.BackendValue) bool { got = append(got, v.AddrPort().String()); return true })
		slices.Sort(got)
		slices.Sort(all)
		if !slices.Equal(got, all) {
			t.Errorf("%s: backends map %q, want %q", step, got, all)
		}
	}
	checkRoutes := func(step string, want ...string) {
		t.Helper()
		var got []string
		for _, r := range m.wantedRoutes() {
			got = append(got, r.node+" "+r.dst.String()+" via "+r.via.String())
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: routes %q, want %q", step, got, want)
		}
	}
	bothServices := map[string][]string{"10.96.0.10:80": {"10.1.2.7:8080"}, "10.97.0.10:80": {"10.2.2.7:8080"}}
	eastRoute := "node2 10.1.2.0/24 via 192.168.1.2"
	westRoutes := []string{"west/node1 10.2.1.0/24 via 192.168.2.1", "west/node2 10.2.2.0/24 via 192.168.2.2"}

	checkIPCache("both", slices.Concat(east, []entry{eastNode2CIDR}, west)...)
	checkServices("both", bothServices)
	checkRoutes("both", append([]string{eastRoute}, westRoutes...)...)

	// Gossip (east's) declares east's node2 dead: its pod CIDR and
	// backend go; west's node2 keeps both.
	m.setHealth(nodeRef{"east", "node2"}, health.Dead)
	checkIPCache("east node2 dead", slices.Concat(east, west)...)
	checkServices("east node2 dead", map[string][]string{"10.96.0.10:80": nil, "10.97.0.10:80": {"10.2.2.7:8080"}})
	checkRoutes("east node2 dead", westRoutes...)
	m.setHealth(nodeRef{"east", "node2"}, health.Alive)
	checkIPCache("east node2 alive", slices.Concat(east, []entry{eastNode2CIDR}, west)...)
	checkServices("east node2 alive", bothServices)

	// A dead node of west's, gone with west, must not linger.
	m.setHealth(nodeRef{"west", "node1"}, health.Dead)
	m.removeCluster("west")
	checkIPCache("west removed", slices.Concat(east, []entry{eastNode2CIDR})...)
	checkServices("west removed", map[string][]string{"10.96.0.10:80": {"10.1.2.7:8080"}})
	checkRoutes("west removed", eastRoute)
	m.mu.Lock()
	left := map[string]int{"nodes": len(m.nodes), "down nodes": len(m.down), "ipcache entries": len(m.epNode),
		"isolated IPs": len(m.isolated), "services": len(m.services), "services holding IDs": len(m.svcHeld),
		"backend IDs": len(m.backendIDs.ids), "service IDs": len(m.serviceIDs.ids)}
	m.mu.Unlock()
	wantLeft := map[string]int{"nodes": 2, "down nodes": 0, "ipcache entries": 2,
		"isolated IPs": 0, "services": 1, "services holding IDs": 1, "backend IDs": 1, "service IDs": 1}
	if !maps.Equal(left, wantLeft) {
		t.Errorf("west removed: the mirror holds %v, want %v", left, wantLeft)
	}
}
