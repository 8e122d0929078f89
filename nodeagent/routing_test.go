package nodeagent

import (
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/health"
	"github.com/meshplane/meshplane/netnstest"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/nodeagent/reconciler"
)

// routingIn returns a routing of mode whose netlink handle is the test
// namespace's, with a dummy underlay holding 192.168.90.1/24 (MTU 1500).
func routingIn(t *testing.T, ns *netnstest.NS, mode string, routes *[]nodeRoute) *routing {
	t.Helper()
	r := &routing{mode: mode, port: DefaultTunnelPort, nodeIP: netip.MustParseAddr("192.168.90.1"),
		log: slog.New(slog.DiscardHandler), nl: ns.Netlink(), poke: make(chan struct{}, 1), skipped: map[string]string{},
		routes: func() []nodeRoute { return *routes }}
	return r
}

// underlayNS returns a namespace whose eth0 (a veth to another
// namespace, up) has 192.168.90.1/24 and mtu.
func underlayNS(t *testing.T, mtu int) *netnstest.NS {
	t.Helper()
	netnstest.Require(t)
	ns := netnstest.New(t)
	eth, _ := netnstest.Veth(t, ns, "eth0", netnstest.New(t), "eth0")
	if err := ns.Netlink().LinkSetMTU(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: eth.Index}}, mtu); err != nil {
		t.Fatal(err)
	}
	ns.AddAddr(t, "eth0", netip.MustParsePrefix("192.168.90.1/24"))
	return ns
}

func ipNet(p string) *net.IPNet {
	_, n, _ := net.ParseCIDR(p)
	return n
}

// kernelRoutes lists the namespace's main-table IPv4 routes as
// "dst via gw dev proto" strings, sorted.
func kernelRoutes(t *testing.T, ns *netnstest.NS) []string {
	t.Helper()
	rs, err := ns.Netlink().RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		if r.Gw == nil {
			continue // the connected routes
		}
		dev := ""
		if l, err := ns.Netlink().LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		out = append(out, r.Dst.String()+" via "+r.Gw.String()+" dev "+dev+" proto "+r.Protocol.String())
	}
	slices.Sort(out)
	return out
}

func checkRoutes(t *testing.T, ns *netnstest.NS, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := kernelRoutes(t, ns); !slices.Equal(got, want) {
		t.Errorf("routes:\n got %q\nwant %q", got, want)
	}
}

// TestRoutingNative: routes of protocol 109 to the wanted pod CIDRs via
// the nodes, a node off the L2 segment skipped, stale routes of ours
// removed, others' routes never touched, and routes that go with their
// node and come back.
func TestRoutingNative(t *testing.T) {
	netnstest.Require(t)
	ns := underlayNS(t, 1500)
	// Someone else's route, and a stale one of ours.
	if err := ns.Netlink().RouteAdd(&netlink.Route{Dst: ipNet("10.9.9.0/24"), Gw: net.ParseIP("192.168.90.9"), Protocol: unix.RTPROT_STATIC}); err != nil {
		t.Fatal(err)
	}
	if err := ns.Netlink().RouteAdd(&netlink.Route{Dst: ipNet("10.9.4.0/24"), Gw: net.ParseIP("192.168.90.4"), Protocol: RouteProtocol}); err != nil {
		t.Fatal(err)
	}
	routes := []nodeRoute{
		{"n2", netip.MustParsePrefix("10.9.2.0/24"), netip.MustParseAddr("192.168.90.2")},
		{"n3", netip.MustParsePrefix("10.9.3.0/24"), netip.MustParseAddr("192.168.91.3")}, // another subnet
	}
	r := routingIn(t, ns, RoutingNative, &routes)
	if _, err := r.setup(); err != nil {
		t.Fatal(err)
	}
	if got := r.underlayMTU.Load(); got != 1500 {
		t.Errorf("underlay MTU %d, want 1500", got)
	}
	if err := r.reconcile(); err != nil {
		t.Fatal(err)
	}
	checkRoutes(t, ns, "10.9.2.0/24 via 192.168.90.2 dev eth0 proto 109", "10.9.9.0/24 via 192.168.90.9 dev eth0 proto static")
	if r.installed != 1 || r.skipped["n3"] == "" {
		t.Errorf("installed %d, skipped %v; want 1 and n3", r.installed, r.skipped)
	}

	// n2 dies: its route goes; it comes back.
	alive := routes
	routes = routes[1:]
	if err := r.reconcile(); err != nil {
		t.Fatal(err)
	}
	checkRoutes(t, ns, "10.9.9.0/24 via 192.168.90.9 dev eth0 proto static")
	routes = alive
	// Another node's address changed: the route is replaced.
	routes[0].via = netip.MustParseAddr("192.168.90.22")
	if err := r.reconcile(); err != nil {
		t.Fatal(err)
	}
	checkRoutes(t, ns, "10.9.2.0/24 via 192.168.90.22 dev eth0 proto 109", "10.9.9.0/24 via 192.168.90.9 dev eth0 proto static")
}

// TestRoutingTunnel: the VXLAN device (flow-based, port 8472, MTU 50
// below the underlay, NOARP), routes through it onlink, the device
// adopted by a restarted agent, and removed by native mode.
func TestRoutingTunnel(t *testing.T) {
	netnstest.Require(t)
	ns := underlayNS(t, 1400)
	routes := []nodeRoute{{"n3", netip.MustParsePrefix("10.9.3.0/24"), netip.MustParseAddr("192.168.91.3")}}
	r := routingIn(t, ns, RoutingTunnel, &routes)
	idx, err := r.setup()
	if err != nil {
		t.Fatal(err)
	}
	l, err := ns.Netlink().LinkByName(TunnelDevice)
	if err != nil {
		t.Fatal(err)
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok || !vx.FlowBased || vx.Port != DefaultTunnelPort || vx.MTU != 1400-TunnelOverhead || vx.RawFlags&unix.IFF_NOARP == 0 || vx.Index != idx {
		t.Errorf("device %+v; want flow-based, port %d, MTU %d, NOARP, index %d", l.Attrs(), DefaultTunnelPort, 1400-TunnelOverhead, idx)
	}
	if err := r.reconcile(); err != nil {
		t.Fatal(err)
	}
	// Across subnets too: the route names the device, not the underlay.
	checkRoutes(t, ns, "10.9.3.0/24 via 192.168.91.3 dev mesh_vxlan proto 109")

	again := routingIn(t, ns, RoutingTunnel, &routes)
	if idx2, err := again.setup(); err != nil || idx2 != idx {
		t.Errorf("restart: setup = %d, %v; want the same device %d", idx2, err, idx)
	}
	if err := again.reconcile(); err != nil {
		t.Fatal(err)
	}
	checkRoutes(t, ns, "10.9.3.0/24 via 192.168.91.3 dev mesh_vxlan proto 109")

	// A node address on no interface: the MTU is a guess, the rest works.
	lost := routingIn(t, ns, RoutingTunnel, &routes)
	lost.nodeIP = netip.MustParseAddr("192.168.99.1")
	if _, err := lost.setup(); err != nil {
		t.Fatal(err)
	}
	if got := lost.underlayMTU.Load(); got != defaultUnderlayMTU {
		t.Errorf("underlay MTU %d for an address on no interface, want %d", got, defaultUnderlayMTU)
	}

	native := routingIn(t, ns, RoutingNative, &routes)
	if _, err := native.setup(); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Netlink().LinkByName(TunnelDevice); err == nil {
		t.Errorf("native mode kept %s", TunnelDevice)
	}
	checkRoutes(t, ns)
}

// TestWantedRoutes: the mirror wants a route per pod CIDR of every other
// node that is usable; a dead node's go and come back.
func TestWantedRoutes(t *testing.T) {
	m := newMirror(nodeRef{"c1", "n1"}, reconciler.NewTable[bpf.IPCacheKey, bpf.IPCacheValue](),
		reconciler.NewTable[bpf.ServiceKey, bpf.ServiceValue](), reconciler.NewTable[bpf.BackendKey, bpf.BackendValue](), 16, 16)
	pokes := 0
	m.routesChanged = func() { pokes++ }
	h := nodeHandler{m, "c1"}
	for i, name := range []string{"n1", "n2", "n3"} {
		h.Upsert(name, node.Record{
			IPs:      []netip.Addr{netip.AddrFrom4([4]byte{192, 168, 90, byte(i + 1)})},
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(i + 1), 0}), 24)},
		})
	}
	want := func(nodes ...string) {
		t.Helper()
		var got []string
		for _, r := range m.wantedRoutes() {
			got = append(got, r.node+" "+r.dst.String()+" via "+r.via.String())
		}
		var exp []string
		for _, n := range nodes {
			i := n[1] - '0'
			exp = append(exp, n+" 10.9."+string('0'+i)+".0/24 via 192.168.90."+string('0'+i))
		}
		if !slices.Equal(got, exp) {
			t.Errorf("wanted routes %q, want %q", got, exp)
		}
	}
	want("n2", "n3")
	if pokes != 2 {
		t.Errorf("%d pokes for two other nodes, want 2", pokes)
	}
	m.setHealth(nodeRef{"c1", "n2"}, health.Dead)
	want("n3")
	m.setHealth(nodeRef{"c1", "n2"}, health.Alive)
	want("n2", "n3")
	h.Delete("n3")
	want("n2")
}
