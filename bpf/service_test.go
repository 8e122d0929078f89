package bpf_test

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/netnstest"
)

// testService is a service frontend in a node's maps.
type testService struct {
	n     *testNode
	id    uint32
	fe    netip.AddrPort
	proto uint8
}

// set writes the frontend with backends, as the agent does: the backends
// first, then the slots, then slot 0 with the count; slots past the new
// count are deleted.
func (s *testService) set(backends ...netip.AddrPort) {
	t := s.n.t
	t.Helper()
	for i, be := range backends {
		id, ok := s.n.backendIDs[be]
		if !ok {
			id = uint32(len(s.n.backendIDs) + 1)
			s.n.backendIDs[be] = id
		}
		if err := s.n.maps.Backends.Put(bpf.BackendKey{ID: id}, bpf.BackendValueFor(be, s.proto, 0)); err != nil {
			t.Fatal(err)
		}
		if err := s.n.maps.Services.Put(bpf.ServiceKeyFor(s.fe, s.proto, uint16(i+1)), bpf.BackendSlot(s.id, id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.n.maps.Services.Put(bpf.ServiceKeyFor(s.fe, s.proto, 0), bpf.ServiceEntry(s.id, uint16(len(backends)))); err != nil {
		t.Fatal(err)
	}
	for slot := len(backends) + 1; slot <= 8; slot++ {
		if _, err := s.n.maps.Services.Delete(bpf.ServiceKeyFor(s.fe, s.proto, uint16(slot))); err != nil {
			t.Fatal(err)
		}
	}
}

// terminate marks a backend terminating: it keeps its connections but
// gets no new ones.
func (s *testService) terminate(be netip.AddrPort) {
	s.n.t.Helper()
	v := bpf.BackendValueFor(be, s.proto, bpf.BackendTerminating)
	if err := s.n.maps.Backends.Put(bpf.BackendKey{ID: s.n.backendIDs[be]}, v); err != nil {
		s.n.t.Fatal(err)
	}
}

// deleteBackend removes a backend from the Backends map.
func (s *testService) deleteBackend(be netip.AddrPort) {
	s.n.t.Helper()
	if ok, err := s.n.maps.Backends.Delete(bpf.BackendKey{ID: s.n.backendIDs[be]}); !ok || err != nil {
		s.n.t.Fatalf("delete backend %s: %v, %v", be, ok, err)
	}
}

// TestService sends real connections to a ClusterIP frontend on one node
// with backends in three pods.
func TestService(t *testing.T) {
	n := newNode(t)
	client := n.addPod("client", "10.200.1.1", 71000)
	var backends []netip.AddrPort
	pods := map[string]*testPod{}
	for i, name := range []string{"b1", "b2", "b3"} {
		p := n.addPod(name, fmt.Sprintf("10.200.1.%d", 2+i), uint32(71001+i))
		p.serveTCP(8080)
		p.serveUDP(5353)
		pods[name] = p
		backends = append(backends, netip.AddrPortFrom(p.ip, 8080))
	}
	// Policy on every side: translated connections and their replies
	// pass on conntrack.
	client.setFlags(bpf.EndpointPolicyIngress | bpf.EndpointPolicyEgress)
	client.policy(bpf.Egress, 0, bpf.ProtoAny, 0, bpf.Allow)
	for _, p := range pods {
		p.setFlags(bpf.EndpointPolicyIngress | bpf.EndpointPolicyEgress)
		p.policy(bpf.Ingress, client.identity, bpf.ProtoTCP, 8080, bpf.Allow)
		p.policy(bpf.Ingress, client.identity, bpf.ProtoUDP, 5353, bpf.Allow)
	}
	svc := &testService{n: n, id: 7, fe: netip.MustParseAddrPort("10.96.0.10:80"), proto: bpf.ProtoTCP}
	svc.set(backends...)

	spread := func(t *testing.T, conns int) map[string]int {
		t.Helper()
		got := map[string]int{}
		for range conns {
			name, err := client.tcp(svc.fe.String(), allowedTimeout)
			if err != nil {
				t.Fatalf("connection to %s: %v", svc.fe, err)
			}
			got[name]++
		}
		return got
	}

	t.Run("new connections spread over all backends", func(t *testing.T) {
		// Connecting at all proves the reverse translation: the client's
		// socket takes the SYN-ACK only from the frontend's address.
		got := spread(t, 60)
		for name := range pods {
			if got[name] == 0 {
				t.Errorf("backend %s got none of 60 connections: %v", name, got)
			}
		}
		f := n.flows.wait(t, "of a translated connection", func(f bpf.Flow) bool {
			return f.Verdict == bpf.Forwarded && f.Direction == bpf.Egress && f.EndpointID == client.epID && f.Service == svc.fe
		})
		if f.Dst.Port() != 8080 || pods[podName(pods, f.Dst.Addr())] == nil {
			t.Errorf("flow of a translated connection goes to %s; want a backend", f.Dst)
		}
	})

	t.Run("an established connection keeps its backend", func(t *testing.T) {
		c, err := client.dialTCP(svc.fe.String(), netip.Addr{}, allowedTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		first, err := c.exchange(allowedTimeout)
		if err != nil {
			t.Fatal(err)
		}
		// Only the other backends are in the service now; the first one
		// still exists.
		var others []netip.AddrPort
		for _, be := range backends {
			if be.Addr() != pods[first].ip {
				others = append(others, be)
			}
		}
		svc.set(others...)
		for range 5 {
			if name, err := c.exchange(allowedTimeout); err != nil || name != first {
				t.Fatalf("exchange on the established connection: %q, %v; want %s", name, err, first)
			}
		}
		if got := spread(t, 20); got[first] != 0 {
			t.Errorf("new connections reached %s, which left the service: %v", first, got)
		}
		svc.set(backends...)
	})

	t.Run("a terminating backend gets no new connections", func(t *testing.T) {
		svc.terminate(backends[0])
		if got := spread(t, 30); got["b1"] != 0 || got["b2"] == 0 || got["b3"] == 0 {
			t.Errorf("connections with b1 terminating: %v; want b2 and b3 only", got)
		}
		svc.set(backends...)
	})

	t.Run("a removed backend gets no new connections", func(t *testing.T) {
		svc.set(backends[:2]...)
		svc.deleteBackend(backends[2])
		if got := spread(t, 30); got["b3"] != 0 || got["b1"] == 0 || got["b2"] == 0 {
			t.Errorf("connections after b3 left: %v; want b1 and b2 only", got)
		}
	})

	t.Run("udp", func(t *testing.T) {
		udp := &testService{n: n, id: 8, fe: netip.MustParseAddrPort("10.96.0.10:53"), proto: bpf.ProtoUDP}
		udp.set(netip.AddrPortFrom(pods["b1"].ip, 5353), netip.AddrPortFrom(pods["b2"].ip, 5353))
		// The socket is connected to the frontend: it takes only answers
		// translated back to it.
		for range 10 {
			if name, err := client.udp(udp.fe.String(), allowedTimeout); err != nil || (name != "b1" && name != "b2") {
				t.Fatalf("udp to %s: %q, %v", udp.fe, name, err)
			}
		}
	})

	t.Run("icmp error about a translated connection", func(t *testing.T) {
		// Nothing listens on the backend's port: b1 answers with a port
		// unreachable that quotes the translated packet. Translated back,
		// it fails the client's connected socket.
		closed := &testService{n: n, id: 9, fe: netip.MustParseAddrPort("10.96.0.11:53"), proto: bpf.ProtoUDP}
		pods["b1"].policy(bpf.Ingress, client.identity, bpf.ProtoUDP, 5999, bpf.Allow)
		closed.set(netip.AddrPortFrom(pods["b1"].ip, 5999))
		_, err := client.udp(closed.fe.String(), allowedTimeout)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("udp to a service without a listener: %v; want connection refused", err)
		}
	})

	t.Run("no backends", func(t *testing.T) {
		svc.set()
		if _, err := client.tcp(svc.fe.String(), deniedTimeout); err == nil {
			t.Fatal("a connection to a service without backends got through")
		}
		n.flows.wait(t, "of the service without backends", func(f bpf.Flow) bool {
			return f.Verdict == bpf.Dropped && f.Reason == bpf.DropNoBackends && f.Service == svc.fe &&
				f.Direction == bpf.Egress && f.EndpointID == client.epID
		})
	})
}

func podName(pods map[string]*testPod, ip netip.Addr) string {
	for name, p := range pods {
		if p.ip == ip {
			return name
		}
	}
	return ""
}

// TestCrossNode runs pods on two nodes joined by a link, with direct
// routing: each node routes the other's pods via the other's address. The
// client's node runs from_pod (and translates), the server's to_pod.
func TestCrossNode(t *testing.T) {
	n1, n2 := newNode(t), newNode(t)
	up1, up2 := "uplink", "uplink"
	netnstest.Veth(t, n1.ns, up1, n2.ns, up2)
	addr1, addr2 := netip.MustParseAddr("192.168.77.1"), netip.MustParseAddr("192.168.77.2")
	n1.ns.AddAddr(t, up1, netip.PrefixFrom(addr1, 24))
	n2.ns.AddAddr(t, up2, netip.PrefixFrom(addr2, 24))

	a := n1.addPod("a", "10.201.1.1", 72001)
	b := n2.addPod("b", "10.201.2.1", 72002)
	n1.ns.AddRoute(t, netip.PrefixFrom(b.ip, 32), up1, addr2)
	n2.ns.AddRoute(t, netip.PrefixFrom(a.ip, 32), up2, addr1)
	// Each node's ipcache knows the other's pod, and where it lives.
	n1.putIPCache(b.ip, b.identity, addr2, 0)
	n2.putIPCache(a.ip, a.identity, addr1, 0)

	b.serveTCP(8080)
	b.serveTCP(9090)
	b.serveUDP(5353)
	a.serveTCP(8080)
	a.setFlags(bpf.EndpointPolicyIngress)
	b.setFlags(bpf.EndpointPolicyIngress)
	b.policy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080, bpf.Allow)
	b.policy(bpf.Ingress, a.identity, bpf.ProtoUDP, 5353, bpf.Allow)
	a.policy(bpf.Ingress, b.identity, bpf.ProtoTCP, 8080, bpf.Allow)

	t.Run("direct", func(t *testing.T) {
		check(t, a, b, reach{tcp8080: true, udp5353: true})
		n2.flows.wait(t, "of the denied port on the server's node", func(f bpf.Flow) bool {
			return f.Reason == bpf.DropPolicyDenied && f.Direction == bpf.Ingress && f.EndpointID == b.epID &&
				f.SrcIdentity == a.identity && f.Dst.Port() == 9090
		})
		if name, err := b.tcp(a.ip.String()+":8080", allowedTimeout); err != nil || name != "a" {
			t.Errorf("b -> a: %q, %v", name, err)
		}
	})
	t.Run("service", func(t *testing.T) {
		svc := &testService{n: n1, id: 11, fe: netip.MustParseAddrPort("10.96.0.20:80"), proto: bpf.ProtoTCP}
		svc.set(netip.AddrPortFrom(b.ip, 8080))
		for range 5 {
			if name, err := a.tcp(svc.fe.String(), allowedTimeout); err != nil || name != "b" {
				t.Fatalf("a -> %s: %q, %v", svc.fe, name, err)
			}
		}
		n2.flows.wait(t, "of the translated connection on the server's node", func(f bpf.Flow) bool {
			return f.Verdict == bpf.Forwarded && f.Direction == bpf.Ingress && f.EndpointID == b.epID &&
				f.Src.Addr() == a.ip && f.Dst == netip.AddrPortFrom(b.ip, 8080)
		})
	})
}
