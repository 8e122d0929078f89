package bpf_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/bpf"
)

const (
	protoICMP uint8 = 1
	tcpSYN    uint8 = 0x02
)

// reach is what a step expects a client to reach on a server.
type reach struct {
	tcp8080, tcp9090, udp5353, icmp bool
}

// check runs each exchange from client to server, all at once (a dropped
// one takes its whole timeout), and compares what got through with want.
func check(t *testing.T, client, server *testPod, want reach) {
	t.Helper()
	var wg sync.WaitGroup
	for _, x := range []struct {
		what string
		want bool
		run  func(timeout time.Duration) error
	}{
		{"tcp/8080", want.tcp8080, func(d time.Duration) error {
			_, err := client.tcp(server.ip.String()+":8080", d)
			return err
		}},
		{"tcp/9090", want.tcp9090, func(d time.Duration) error {
			_, err := client.tcp(server.ip.String()+":9090", d)
			return err
		}},
		{"udp/5353", want.udp5353, func(d time.Duration) error {
			_, err := client.udp(server.ip.String()+":5353", d)
			return err
		}},
		{"icmp echo", want.icmp, func(d time.Duration) error { return client.ping(server.ip, d) }},
	} {
		timeout := deniedTimeout
		if x.want {
			timeout = allowedTimeout
		}
		wg.Go(func() {
			err := x.run(timeout)
			switch {
			case x.want && err != nil:
				t.Errorf("%s %s -> %s: %v; want it through", x.what, client.name, server.name, err)
			case !x.want && err == nil:
				t.Errorf("%s %s -> %s got through; want it dropped", x.what, client.name, server.name)
			}
		})
	}
	wg.Wait()
}

// TestPolicy walks one pair of pods through policy states: each step
// changes the maps as the agent would and checks TCP on two ports, UDP and
// ICMP echo with real packets. Later steps enforce both sides, so replies
// pass only through conntrack.
func TestPolicy(t *testing.T) {
	n := newNode(t)
	a := n.addPod("a", "10.200.0.1", 70001)
	b := n.addPod("b", "10.200.0.2", 70002)
	b.serveTCP(8080)
	b.serveTCP(9090)
	b.serveUDP(5353)

	for _, step := range []struct {
		name  string
		setup func()
		want  reach
		flow  func(bpf.Flow) bool // a flow event the step must produce
	}{
		{
			name: "no policy",
			want: reach{true, true, true, true},
			flow: func(f bpf.Flow) bool {
				return f.Verdict == bpf.Forwarded && f.Direction == bpf.Egress && f.EndpointID == a.epID &&
					f.Proto == bpf.ProtoTCP && f.Dst == netip.AddrPortFrom(b.ip, 8080) && f.TCPFlags&tcpSYN != 0 &&
					f.SrcIdentity == a.identity && f.DstIdentity == b.identity && f.IfIndex == uint32(a.host.Index)
			},
		},
		{
			name:  "ingress enforced without entries",
			setup: func() { b.setFlags(bpf.EndpointPolicyIngress) },
			flow: func(f bpf.Flow) bool {
				return f.Verdict == bpf.Dropped && f.Reason == bpf.DropPolicyDenied && f.Direction == bpf.Ingress &&
					f.EndpointID == b.epID && f.SrcIdentity == a.identity && f.DstIdentity == b.identity &&
					f.Src.Addr() == a.ip && f.Dst == netip.AddrPortFrom(b.ip, 8080)
			},
		},
		{
			name:  "allow tcp/8080 from a",
			setup: func() { b.policy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080, bpf.Allow) },
			want:  reach{tcp8080: true},
			flow: func(f bpf.Flow) bool {
				return f.Verdict == bpf.Forwarded && f.Direction == bpf.Ingress && f.EndpointID == b.epID &&
					f.Dst == netip.AddrPortFrom(b.ip, 8080) && f.SrcIdentity == a.identity
			},
		},
		{
			name: "allow udp/5353 and icmp from any identity",
			setup: func() {
				b.policy(bpf.Ingress, 0, bpf.ProtoUDP, 5353, bpf.Allow)
				b.policy(bpf.Ingress, 0, protoICMP, 0, bpf.Allow)
			},
			want: reach{tcp8080: true, udp5353: true, icmp: true},
		},
		{
			name:  "egress enforced without entries",
			setup: func() { a.setFlags(bpf.EndpointPolicyEgress) },
			flow: func(f bpf.Flow) bool {
				return f.Verdict == bpf.Dropped && f.Reason == bpf.DropPolicyDenied && f.Direction == bpf.Egress &&
					f.EndpointID == a.epID && f.SrcIdentity == a.identity && f.DstIdentity == b.identity
			},
		},
		{
			name: "both sides enforced, egress allows tcp and icmp to b",
			setup: func() {
				a.setFlags(bpf.EndpointPolicyIngress | bpf.EndpointPolicyEgress)
				a.policy(bpf.Egress, b.identity, bpf.ProtoTCP, 0, bpf.Allow)
				a.policy(bpf.Egress, b.identity, protoICMP, 0, bpf.Allow)
			},
			want: reach{tcp8080: true, icmp: true},
		},
		{
			name:  "egress allows udp/5353 to any identity",
			setup: func() { a.policy(bpf.Egress, 0, bpf.ProtoUDP, 5353, bpf.Allow) },
			want:  reach{tcp8080: true, udp5353: true, icmp: true},
		},
		{
			// The Allow of tcp/8080 for a's identity and the Deny of tcp
			// for any identity are found by the two lookups: Deny wins.
			name:  "deny of tcp from any identity wins over the allow for a",
			setup: func() { b.policy(bpf.Ingress, 0, bpf.ProtoTCP, 0, bpf.Deny) },
			want:  reach{udp5353: true, icmp: true},
		},
	} {
		t.Run(step.name, func(t *testing.T) {
			if step.setup != nil {
				step.setup()
			}
			check(t, a, b, step.want)
			if step.flow != nil {
				n.flows.wait(t, "of the step", step.flow)
			}
		})
	}

	t.Run("counters", func(t *testing.T) {
		counters, err := n.dp.Counters()
		if err != nil {
			t.Fatal(err)
		}
		got := make(map[[2]uint8]bpf.Counter)
		for _, c := range counters {
			if c.Packets == 0 {
				t.Errorf("counter %+v: reported with no packets", c)
			}
			// Every packet has at least Ethernet and IPv4 headers and an
			// ICMP or UDP header, and at most a GSO packet's 64 KiB.
			if c.Bytes < c.Packets*42 || c.Bytes > c.Packets*(14+65535) {
				t.Errorf("counter %+v: bytes out of bounds for its packets", c)
			}
			got[[2]uint8{uint8(c.Direction), uint8(c.Reason)}] = c
		}
		for _, k := range []struct {
			dir    bpf.Direction
			reason bpf.DropReason
		}{
			{bpf.Egress, bpf.NotDropped}, {bpf.Ingress, bpf.NotDropped},
			{bpf.Egress, bpf.DropPolicyDenied}, {bpf.Ingress, bpf.DropPolicyDenied},
		} {
			if got[[2]uint8{uint8(k.dir), uint8(k.reason)}].Packets == 0 {
				t.Errorf("no %s packets counted as %q: %+v", k.dir, k.reason, counters)
			}
		}
		if lost, err := n.dp.FlowsLost(); err != nil || lost != 0 {
			t.Errorf("FlowsLost = %d, %v; want 0", lost, err)
		}
		ct, err := n.dp.CTCount()
		if err != nil || ct == 0 {
			t.Errorf("CTCount = %d, %v; want entries", ct, err)
		}
	})
}

// TestRestart checks that connections survive an agent restart, in both
// attachment modes: the datapath's fds closed, then a new LoadDatapath and
// Attach on the same pins, which swap the programs in the pinned links
// (tcx) or the filters (tc). Conntrack lives in a pinned map: the
// connection stays established although policy no longer allows new ones.
func TestRestart(t *testing.T) {
	for _, mode := range []bpf.AttachMode{bpf.AttachTC, bpf.AttachTCX} {
		t.Run(string(mode), func(t *testing.T) { testRestart(t, mode) })
	}
}

func testRestart(t *testing.T, mode bpf.AttachMode) {
	n := newNodeMode(t, mode)
	a := n.addPod("a", "10.200.0.1", 70001)
	b := n.addPod("b", "10.200.0.2", 70002)
	b.serveTCP(8080)
	b.setFlags(bpf.EndpointPolicyIngress)
	b.policy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080, bpf.Allow)

	c, err := a.dialTCP(b.ip.String()+":8080", netip.Addr{}, allowedTimeout)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	exchange := func(when string) {
		t.Helper()
		if name, err := c.exchange(allowedTimeout); err != nil || name != "b" {
			t.Fatalf("%s: exchange on the established connection: %q, %v", when, name, err)
		}
	}
	exchange("before")
	b.deletePolicy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080)
	exchange("after the allow went")
	if _, err := a.tcp(b.ip.String()+":8080", deniedTimeout); err == nil {
		t.Fatal("a new connection got through without an allow")
	}

	// What holds the to-pod program: its link (tcx), its filter (tc).
	type holder struct{ id, prog uint32 }
	holds := func() holder {
		if mode == bpf.AttachTCX {
			info := linkInfo(t, filepath.Join(n.cfg.PinDir(), "links", strconv.Itoa(b.host.Index)+"-to-pod"))
			return holder{uint32(info.ID), uint32(info.Program)}
		}
		fs := n.tcFilters(b.host.Index, "to-pod")
		if len(fs) != 1 {
			t.Fatalf("%d tc filters of ours on the to-pod hook, want 1", len(fs))
		}
		return holder{fs[0].Handle, uint32(fs[0].Id)}
	}
	before := holds()
	if err := n.dp.Close(); err != nil {
		t.Fatal(err)
	}
	exchange("with the datapath closed")

	n.load()
	n.attach(a.host.Index)
	n.attach(b.host.Index)
	after := holds()
	if after.id != before.id {
		t.Errorf("%s attachment is %d after the restart, was %d: want the same one, updated", mode, after.id, before.id)
	}
	if after.prog == before.prog {
		t.Errorf("the %s attachment still runs program %d after the restart", mode, before.prog)
	}
	exchange("after the restart")
	if _, err := a.tcp(b.ip.String()+":8080", deniedTimeout); err == nil {
		t.Error("a new connection got through without an allow after the restart")
	}
	b.policy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080, bpf.Allow)
	if _, err := a.tcp(b.ip.String()+":8080", allowedTimeout); err != nil {
		t.Errorf("new connection after the restart, allowed again: %v", err)
	}
}

func linkInfo(t *testing.T, pin string) *link.Info {
	t.Helper()
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		t.Fatalf("load pinned link: %v", err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// TestEndpointIdentity checks the drops that protect endpoints' identity:
// a pod sending from an address that is not its own, and traffic to an
// address the Endpoints map does not have.
func TestEndpointIdentity(t *testing.T) {
	n := newNode(t)
	a := n.addPod("a", "10.200.0.1", 70001)
	b := n.addPod("b", "10.200.0.2", 70002)
	c := n.addPod("c", "10.200.0.3", 70003)
	b.serveTCP(8080)

	for _, tc := range []struct {
		name string
		src  netip.Addr
	}{
		{"address of no endpoint", netip.MustParseAddr("10.200.0.99")},
		{"address of an endpoint behind another veth", c.ip},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.ns.AddAddr(t, "eth0", netip.PrefixFrom(tc.src, 32))
			if _, err := a.dialTCP(b.ip.String()+":8080", tc.src, deniedTimeout); err == nil {
				t.Fatalf("a connected from %s", tc.src)
			}
			n.flows.wait(t, "of the spoofed source", func(f bpf.Flow) bool {
				return f.Verdict == bpf.Dropped && f.Reason == bpf.DropSpoofedSource && f.Direction == bpf.Egress &&
					f.Src.Addr() == tc.src && f.IfIndex == uint32(a.host.Index)
			})
		})
	}
	t.Run("own address still works", func(t *testing.T) {
		if _, err := a.tcp(b.ip.String()+":8080", allowedTimeout); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unknown endpoint", func(t *testing.T) {
		if ok, err := n.maps.Endpoints.Delete(bpf.EndpointKeyFor(b.ip)); !ok || err != nil {
			t.Fatalf("delete endpoint: %v, %v", ok, err)
		}
		if _, err := a.tcp(b.ip.String()+":8080", deniedTimeout); err == nil {
			t.Fatal("a reached b without b's endpoint")
		}
		n.flows.wait(t, "of the unknown endpoint", func(f bpf.Flow) bool {
			return f.Verdict == bpf.Dropped && f.Reason == bpf.DropUnknownEndpoint && f.Direction == bpf.Ingress &&
				f.Dst.Addr() == b.ip && f.IfIndex == uint32(b.host.Index)
		})
	})
	t.Run("ipv6", func(t *testing.T) {
		// With a permanent neighbor the UDP packet itself leaves the pod.
		src, dst := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
		a.ns.AddAddr(t, "eth0", netip.PrefixFrom(src, 128))
		a.ns.AddRoute(t, netip.PrefixFrom(dst, 128), "eth0", netip.Addr{})
		a.ns.AddNeigh(t, "eth0", dst, b.eth0.MAC)
		_, _ = a.udp("[fd00::2]:5353", deniedTimeout)
		n.flows.wait(t, "of the IPv6 packet", func(f bpf.Flow) bool {
			return f.Verdict == bpf.Dropped && f.Reason == bpf.DropUnsupportedL3 && f.Direction == bpf.Egress &&
				f.Proto == bpf.ProtoUDP && f.Src.Addr() == src && f.Dst.Addr() == dst
		})
	})
}

// TestAttachDetach checks the attachment API on a live pod, in both
// modes: idempotent Attach, Attached, and Detach, after which the pod's
// traffic is no longer policed; then what becomes of the attachment of a
// veth that is deleted and whose index is reused.
func TestAttachDetach(t *testing.T) {
	for _, mode := range []bpf.AttachMode{bpf.AttachTC, bpf.AttachTCX} {
		t.Run(string(mode), func(t *testing.T) { testAttachDetach(t, mode) })
	}
}

func testAttachDetach(t *testing.T, mode bpf.AttachMode) {
	n := newNodeMode(t, mode)
	a := n.addPod("a", "10.200.0.1", 70001)
	b := n.addPod("b", "10.200.0.2", 70002)
	b.serveTCP(8080)
	b.setFlags(bpf.EndpointPolicyIngress)

	attached := func(want ...int) {
		t.Helper()
		got, err := n.attached()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) || (len(want) > 0 && !equalInts(got, want)) {
			t.Fatalf("Attached() = %v; want %v", got, want)
		}
	}
	reaches := func(want bool) {
		t.Helper()
		timeout := deniedTimeout
		if want {
			timeout = allowedTimeout
		}
		if _, err := a.tcp(b.ip.String()+":8080", timeout); (err == nil) != want {
			t.Fatalf("a -> b: %v; want through: %v", err, want)
		}
	}
	ids := []int{a.host.Index, b.host.Index}
	if ids[0] > ids[1] {
		ids[0], ids[1] = ids[1], ids[0]
	}
	attached(ids...)
	reaches(false)

	n.attach(b.host.Index) // again: idempotent
	attached(ids...)
	reaches(false)

	if err := n.ns.Do(func() error { return n.dp.Detach(b.host.Index) }); err != nil {
		t.Fatal(err)
	}
	attached(a.host.Index)
	reaches(true)
	if err := n.ns.Do(func() error { return n.dp.Detach(b.host.Index) }); err != nil {
		t.Errorf("Detach of a detached ifindex: %v", err)
	}

	n.attach(b.host.Index)
	reaches(false)

	err := n.ns.Do(func() error { return n.dp.Attach(1 << 20) })
	if err == nil {
		t.Error("Attach to a missing interface succeeded")
	}
	if err := n.dp.Attach(0); err == nil {
		t.Error("Attach(0) succeeded")
	}
	attached(ids...)

	if mode == bpf.AttachTC {
		t.Run("deleted veth", func(t *testing.T) {
			// The filters go with the veth: Attached no longer lists it,
			// nor an interface that gets the same index later.
			nl := n.ns.Netlink()
			if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "stale0"}, PeerName: "stale0p"}); err != nil {
				t.Fatal(err)
			}
			old := n.ns.Link(t, "stale0")
			n.attach(old.Index)
			attached(append(slices.Clone(ids), old.Index)...)
			if err := nl.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: old.Index}}); err != nil {
				t.Fatal(err)
			}
			attached(ids...)
			if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "stale1", Index: old.Index}, PeerName: "stale1p"}); err != nil {
				t.Fatal(err)
			}
			attached(ids...)
			if err := n.ns.Do(func() error { return n.dp.Detach(old.Index) }); err != nil {
				t.Errorf("Detach of an interface without our filters: %v", err)
			}
		})
		return
	}
	t.Run("stale pin", func(t *testing.T) {
		// A link pinned for an interface that is gone stays pinned,
		// inert; an interface that gets the same index later gets fresh
		// links.
		nl := n.ns.Netlink()
		if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "stale0"}, PeerName: "stale0p"}); err != nil {
			t.Fatal(err)
		}
		old := n.ns.Link(t, "stale0")
		n.attach(old.Index)
		pin := filepath.Join(n.cfg.PinDir(), "links", strconv.Itoa(old.Index)+"-from-pod")
		before := linkInfo(t, pin)
		if err := nl.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: old.Index}}); err != nil {
			t.Fatal(err)
		}
		if tcx := linkInfo(t, pin).TCX(); tcx == nil || tcx.Ifindex != 0 {
			t.Fatalf("link of a deleted interface: %+v; want ifindex 0", tcx)
		}
		if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "stale1", Index: old.Index}, PeerName: "stale1p"}); err != nil {
			t.Fatal(err)
		}
		n.attach(old.Index)
		after := linkInfo(t, pin)
		if tcx := after.TCX(); after.ID == before.ID || tcx == nil || tcx.Ifindex != uint32(old.Index) {
			t.Errorf("link after re-attach: id %d (was %d), %+v; want a new link on ifindex %d", after.ID, before.ID, tcx, old.Index)
		}
		if err := n.ns.Do(func() error { return n.dp.Detach(old.Index) }); err != nil {
			t.Fatal(err)
		}
	})
}

func equalInts(a, b []int) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}

// TestLoadDatapathIncompatible checks that the datapath's pinned maps
// follow OpenMaps' rules: a size that differs from the pin fails with
// ErrIncompatible.
func TestLoadDatapathIncompatible(t *testing.T) {
	n := newNode(t)
	for _, tc := range []struct {
		name string
		edit func(*bpf.Config)
	}{
		{"CTMax", func(c *bpf.Config) { c.CTMax *= 2 }},
		{"FlowRingBytes", func(c *bpf.Config) { c.FlowRingBytes *= 2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := n.cfg
			tc.edit(&cfg)
			dp, err := bpf.LoadDatapath(cfg, n.maps)
			if !errors.Is(err, bpf.ErrIncompatible) {
				if dp != nil {
					_ = dp.Close()
				}
				t.Fatalf("LoadDatapath with another %s = %v; want ErrIncompatible", tc.name, err)
			}
		})
	}
	if _, err := bpf.LoadDatapath(n.cfg, nil); err == nil {
		t.Error("LoadDatapath without maps succeeded")
	}
	if _, err := os.Stat(filepath.Join(n.cfg.PinDir(), bpf.CTMapName)); err != nil {
		t.Errorf("conntrack pin: %v", err)
	}
}

// TestConntrackExpiry checks conntrack entries with real packets: a
// connection stays established after policy stops allowing new ones, its
// entries hold what the datapath saw, and once they are older than their
// lifetime the next packet is a new connection again, which policy drops.
func TestConntrackExpiry(t *testing.T) {
	n := newNode(t)
	a := n.addPod("a", "10.200.0.1", 70001)
	b := n.addPod("b", "10.200.0.2", 70002)
	b.serveUDP(5353)
	b.setFlags(bpf.EndpointPolicyIngress)
	b.policy(bpf.Ingress, a.identity, bpf.ProtoUDP, 5353, bpf.Allow)

	c, err := a.ns.Dial(context.Background(), net.Dialer{}, "udp4", b.ip.String()+":5353")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchange := func(timeout time.Duration) error {
		if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
		if _, err := c.Write([]byte("hello")); err != nil {
			return err
		}
		_, err := c.Read(make([]byte, 100))
		return err
	}
	if err := exchange(allowedTimeout); err != nil {
		t.Fatal(err)
	}
	b.deletePolicy(bpf.Ingress, a.identity, bpf.ProtoUDP, 5353)
	if err := exchange(allowedTimeout); err != nil {
		t.Fatalf("established flow after the allow went: %v", err)
	}

	local := netip.MustParseAddrPort(c.LocalAddr().String())
	server := netip.AddrPortFrom(b.ip, 5353)
	ct := n.dp.Conntrack()
	for _, k := range []bpf.CTKey{
		bpf.CTKeyFor(bpf.CTOut, bpf.ProtoUDP, local, server),
		bpf.CTKeyFor(bpf.CTIn, bpf.ProtoUDP, local, server),
	} {
		v, ok, err := ct.Lookup(k)
		if err != nil || !ok {
			t.Fatalf("conntrack %v: %v, %v", k, ok, err)
		}
		// Two exchanges: two packets each way.
		if v.Flags&bpf.CTSeenReply == 0 || v.Packets != 4 || v.Bytes < 4*47 || v.Created == 0 || v.LastSeen < v.Created || v.NAT().IsValid() {
			t.Errorf("conntrack %v = %v (created %d, last seen %d)", k, v, v.Created, v.LastSeen)
		}
		// Age it past its lifetime.
		var now unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil {
			t.Fatal(err)
		}
		v.LastSeen = uint64(now.Nano()) - uint64(bpf.CTLifetimeOther) - uint64(time.Second)
		if !v.Expired(bpf.ProtoUDP, uint64(now.Nano())) {
			t.Fatal("aged entry is not expired")
		}
		if err := ct.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := exchange(deniedTimeout); err == nil {
		t.Fatal("a flow whose entries expired got through without an allow")
	}
	n.flows.wait(t, "of the expired flow", func(f bpf.Flow) bool {
		return f.Reason == bpf.DropPolicyDenied && f.Direction == bpf.Ingress && f.Src == local && f.Dst == server
	})
	if got, err := n.dp.CTCount(); err != nil || got < 2 {
		t.Errorf("CTCount = %d, %v", got, err)
	}

	t.Run("tcp close", func(t *testing.T) {
		b.serveTCP(8080)
		b.policy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080, bpf.Allow)
		c, err := a.dialTCP(b.ip.String()+":8080", netip.Addr{}, allowedTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.exchange(allowedTimeout); err != nil {
			t.Fatal(err)
		}
		local := netip.MustParseAddrPort(c.c.LocalAddr().String())
		k := bpf.CTKeyFor(bpf.CTOut, bpf.ProtoTCP, local, netip.AddrPortFrom(b.ip, 8080))
		v, _, _ := ct.Lookup(k)
		if v.Flags != bpf.CTSeenReply || bpf.CTLifetime(bpf.ProtoTCP, v.Flags) != bpf.CTLifetimeTCPEstablished {
			t.Errorf("established connection: %v", v)
		}
		_ = c.Close()
		// The server closes on EOF: FIN from both sides.
		want := bpf.CTSeenReply | bpf.CTFinOrig | bpf.CTFinReply
		eventually(t, func() bool {
			v, _, _ = ct.Lookup(k)
			return v.Flags&want == want
		})
		if bpf.CTLifetime(bpf.ProtoTCP, v.Flags) != bpf.CTLifetimeTCPClosed {
			t.Errorf("closed connection: %v", v)
		}
	})
}

// eventually polls cond until it holds, failing the test after a while.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(allowedTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", allowedTimeout)
		}
		<-tick.C
	}
}

// BenchmarkConnect measures a TCP connection through the datapath on one
// node, policy enforced on both pods: connect, one exchange, close. Each
// is a new conntrack entry on both sides and two flow events.
func BenchmarkConnect(b *testing.B) {
	n := newNode(b)
	client := n.addPod("client", "10.200.0.1", 70001)
	server := n.addPod("server", "10.200.0.2", 70002)
	server.serveTCP(8080)
	client.setFlags(bpf.EndpointPolicyIngress | bpf.EndpointPolicyEgress)
	server.setFlags(bpf.EndpointPolicyIngress | bpf.EndpointPolicyEgress)
	client.policy(bpf.Egress, server.identity, bpf.ProtoTCP, 8080, bpf.Allow)
	server.policy(bpf.Ingress, client.identity, bpf.ProtoTCP, 8080, bpf.Allow)
	svc := &testService{n: n, id: 1, fe: netip.MustParseAddrPort("10.96.0.10:80"), proto: bpf.ProtoTCP}
	svc.set(netip.AddrPortFrom(server.ip, 8080))

	for _, bc := range []struct{ name, addr string }{
		{"direct", server.ip.String() + ":8080"},
		{"service", svc.fe.String()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := client.tcp(bc.addr, allowedTimeout); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
