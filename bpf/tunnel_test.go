package bpf_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/netnstest"
)

// The underlay between the two nodes of TestTunnel.
var (
	underlay1 = netip.MustParsePrefix("192.168.251.1/24")
	underlay2 = netip.MustParsePrefix("192.168.251.2/24")
)

// addTunnel gives the node a flow-based VXLAN device on UDP 8472 with the
// tunnel programs, and a route to each remote pod CIDR through it, via
// its node's address (onlink), as the agent's tunnel mode does.
func (n *testNode) addTunnel(routes map[netip.Prefix]netip.Addr) int {
	t := n.t
	t.Helper()
	nl := n.ns.Netlink()
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "mesh_vxlan", MTU: 1450}, FlowBased: true, Port: 8472}
	if err := nl.LinkAdd(vx); err != nil {
		t.Fatalf("add vxlan: %v", err)
	}
	l, err := nl.LinkByName("mesh_vxlan")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetARPOff(l); err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	idx := l.Attrs().Index
	for dst, via := range routes {
		r := &netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)},
			Gw: via.AsSlice(), Flags: int(netlink.FLAG_ONLINK)}
		if err := nl.RouteAdd(r); err != nil {
			t.Fatalf("route %s via %s dev mesh_vxlan onlink: %v", dst, via, err)
		}
	}
	if err := n.ns.Do(func() error { return n.dp.AttachTunnel(idx) }); err != nil {
		t.Fatalf("AttachTunnel: %v", err)
	}
	return idx
}

func (n *testNode) counter(dir bpf.Direction, reason bpf.DropReason) uint64 {
	n.t.Helper()
	cs, err := n.dp.Counters()
	if err != nil {
		n.t.Fatalf("Counters: %v", err)
	}
	for _, c := range cs {
		if c.Direction == dir && c.Reason == reason {
			return c.Packets
		}
	}
	return 0
}

// TestTunnel runs pod-to-pod traffic between two nodes through VXLAN from
// the datapath: to_tunnel takes the remote node from the ipcache,
// from_tunnel delivers the decapsulated packet to the pod's veth, where
// to_pod still enforces the pod's ingress policy. A destination without a
// tunnel endpoint is dropped and counted, and so is a packet whose outer
// source is not another node's address.
func TestTunnel(t *testing.T) {
	n1, n2 := newNode(t), newNode(t)
	netnstest.Veth(t, n1.ns, "und0", n2.ns, "und0")
	n1.ns.AddAddr(t, "und0", underlay1)
	n2.ns.AddAddr(t, "und0", underlay2)
	a := n1.addPod("a", "10.201.1.1", 70001)
	b := n2.addPod("b", "10.201.2.1", 70002)
	b.serveTCP(8080)
	b.serveTCP(9090)
	b.serveUDP(5353)
	// Each node's ipcache knows the other's pod and where it lives.
	n1.putIPCache(b.ip, b.identity, underlay2.Addr(), 0)
	n2.putIPCache(a.ip, a.identity, underlay1.Addr(), 0)
	// ... and the other node's address, as the agent's mirror puts it.
	n1.putIPCache(underlay2.Addr(), uint32(identity.RemoteNode), underlay2.Addr(), 0)
	n2.putIPCache(underlay1.Addr(), uint32(identity.RemoteNode), underlay1.Addr(), 0)
	n1.addTunnel(map[netip.Prefix]netip.Addr{netip.MustParsePrefix("10.201.2.0/24"): underlay2.Addr()})
	n2.addTunnel(map[netip.Prefix]netip.Addr{netip.MustParsePrefix("10.201.1.0/24"): underlay1.Addr()})

	check(t, a, b, reach{true, true, true, true})

	// to_pod runs on the redirected packets: ingress policy holds.
	b.setFlags(bpf.EndpointPolicyIngress)
	b.policy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080, bpf.Allow)
	check(t, a, b, reach{tcp8080: true})
	if n := n2.counter(bpf.Ingress, bpf.DropPolicyDenied); n == 0 {
		t.Errorf("no ingress policy drops counted on the server's node")
	}

	// A tunnel packet from an address that is no node's (n2 forgets n1's
	// address; a pod's or the world's identity is no better) is dropped
	// before anything else looks at it.
	b.setFlags(0)
	for _, id := range []uint32{0, a.identity} {
		key := bpf.IPCacheKeyFor(netip.PrefixFrom(underlay1.Addr(), 32))
		if id == 0 {
			if _, err := n2.maps.IPCache.Delete(key); err != nil {
				t.Fatal(err)
			}
		} else {
			n2.putIPCache(underlay1.Addr(), id, underlay1.Addr(), 0)
		}
		check(t, a, b, reach{})
	}
	if n := n2.counter(bpf.Ingress, bpf.DropTunnelSource); n == 0 {
		t.Errorf("no %q drops counted", bpf.DropTunnelSource)
	}
	n2.putIPCache(underlay1.Addr(), uint32(identity.RemoteNode), underlay1.Addr(), 0)
	check(t, a, b, reach{true, true, true, true})

	// Without the ipcache entry, to_tunnel has no remote node.
	if _, err := n1.maps.IPCache.Delete(bpf.IPCacheKeyFor(netip.PrefixFrom(b.ip, 32))); err != nil {
		t.Fatal(err)
	}
	check(t, a, b, reach{})
	if n := n1.counter(bpf.Egress, bpf.DropNoTunnelEndpoint); n == 0 {
		t.Errorf("no %q drops counted", bpf.DropNoTunnelEndpoint)
	}
}
