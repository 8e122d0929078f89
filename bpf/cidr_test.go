package bpf_test

import (
	"net/netip"
	"testing"

	"github.com/meshplane/meshplane/bpf"
)

// putCIDR gives prefix p the CIDR identity id in the node's CIDR map.
func (n *testNode) putCIDR(p string, id uint32) {
	n.t.Helper()
	if err := n.maps.CIDR.Put(bpf.IPCacheKeyFor(netip.MustParsePrefix(p)), bpf.CIDRValue{Identity: id}); err != nil {
		n.t.Fatalf("put cidr %s: %v", p, err)
	}
}

func (n *testNode) deleteCIDR(p string) {
	n.t.Helper()
	if ok, err := n.maps.CIDR.Delete(bpf.IPCacheKeyFor(netip.MustParsePrefix(p))); !ok || err != nil {
		n.t.Fatalf("delete cidr %s: %v, %v", p, ok, err)
	}
}

// TestPolicyCIDR checks the third policy lookup with real packets: where
// an endpoint enforces a direction and no entry allows the remote's own
// identity (from the ipcache: a pod's), the remote address's CIDR identity
// (the longest prefix of the CIDR map that contains it) is looked up too.
// So an entry for a CIDR identity allows the pods inside its prefix, a
// longer prefix with no entry (an ipBlock's except) excludes them, and a
// Deny of the remote's identity still wins.
func TestPolicyCIDR(t *testing.T) {
	n := newNode(t)
	a := n.addPod("a", "10.200.0.1", 70001)
	b := n.addPod("b", "10.200.0.2", 70002)
	b.serveTCP(8080)
	b.serveTCP(9090)
	b.serveUDP(5353)
	const (
		block  = 1<<24 + 1 // 10.200.0.0/24: an ipBlock's cidr
		except = 1<<24 + 2 // 10.200.0.1/32: its except, a's address
	)
	all := reach{true, true, true, true}

	for _, step := range []struct {
		name  string
		setup func()
		want  reach
		flow  func(bpf.Flow) bool
	}{
		{
			name: "ingress enforced, an allow for a CIDR identity the map does not hold",
			setup: func() {
				b.setFlags(bpf.EndpointPolicyIngress)
				b.policy(bpf.Ingress, block, bpf.ProtoAny, 0, bpf.Allow)
			},
		},
		{
			name:  "the client's address is inside the prefix of the allowed CIDR identity",
			setup: func() { n.putCIDR("10.200.0.0/24", block) },
			want:  all,
			// The flow names the client's own identity, not the CIDR's.
			flow: func(f bpf.Flow) bool {
				return f.Verdict == bpf.Forwarded && f.Direction == bpf.Ingress && f.EndpointID == b.epID &&
					f.Src.Addr() == a.ip && f.SrcIdentity == a.identity && f.Dst == netip.AddrPortFrom(b.ip, 8080)
			},
		},
		{
			name:  "a longer prefix without entries (an except) excludes it",
			setup: func() { n.putCIDR("10.200.0.1/32", except) },
			flow: func(f bpf.Flow) bool {
				return f.Verdict == bpf.Dropped && f.Reason == bpf.DropPolicyDenied && f.Direction == bpf.Ingress &&
					f.EndpointID == b.epID && f.SrcIdentity == a.identity
			},
		},
		{
			name:  "an allow of the client's own identity applies whatever its prefix",
			setup: func() { b.policy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080, bpf.Allow) },
			want:  reach{tcp8080: true},
		},
		{
			name: "the except gone, a deny of the client's identity still wins over the CIDR's allow",
			setup: func() {
				n.deleteCIDR("10.200.0.1/32")
				b.deletePolicy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080)
				b.policy(bpf.Ingress, a.identity, bpf.ProtoTCP, 0, bpf.Deny)
			},
			want: reach{udp5353: true, icmp: true},
		},
		{
			name: "egress: an allow for the CIDR identity of the server's prefix",
			setup: func() {
				b.deletePolicy(bpf.Ingress, a.identity, bpf.ProtoTCP, 0)
				a.setFlags(bpf.EndpointPolicyEgress)
				a.policy(bpf.Egress, block, bpf.ProtoTCP, 9090, bpf.Allow)
			},
			want: reach{tcp9090: true},
			flow: func(f bpf.Flow) bool {
				return f.Verdict == bpf.Forwarded && f.Direction == bpf.Egress && f.EndpointID == a.epID &&
					f.Dst == netip.AddrPortFrom(b.ip, 9090) && f.DstIdentity == b.identity
			},
		},
		{
			name: "egress: the server's prefix excepted",
			setup: func() {
				n.putCIDR("10.200.0.2/32", except)
			},
		},
		{
			// An address whose CIDR identity is its ipcache identity (an
			// address outside the cluster) needs no second lookup, and
			// gets none: the result is the same.
			name: "egress: a CIDR identity equal to the ipcache identity",
			setup: func() {
				n.deleteCIDR("10.200.0.2/32")
				n.putCIDR("10.200.0.2/32", b.identity)
			},
		},
		{
			name: "without the CIDR map's entries, ipBlocks match no pod (the Cilium behaviour)",
			setup: func() {
				n.deleteCIDR("10.200.0.2/32")
				n.deleteCIDR("10.200.0.0/24")
				a.setFlags(0)
			},
		},
	} {
		t.Run(step.name, func(t *testing.T) {
			step.setup()
			check(t, a, b, step.want)
			if step.flow != nil {
				n.flows.wait(t, "of the step", step.flow)
			}
		})
	}
}
