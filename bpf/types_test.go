package bpf

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestIPCacheKeyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want: the prefix read back
		len      uint32
		fam      Family
	}{
		{"10.1.2.0/24", "10.1.2.0/24", 56, FamilyIPv4},
		{"10.1.2.3/24", "10.1.2.0/24", 56, FamilyIPv4}, // masked
		{"0.0.0.0/0", "0.0.0.0/0", 32, FamilyIPv4},
		{"255.255.255.255/32", "255.255.255.255/32", 64, FamilyIPv4},
		{"::/0", "::/0", 32, FamilyIPv6},
		{"fd00::1/128", "fd00::1/128", 160, FamilyIPv6},
		{"fd00:1:2::/48", "fd00:1:2::/48", 80, FamilyIPv6},
		{"::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104", 136, FamilyIPv6}, // v4-mapped stays IPv6
	} {
		k := IPCacheKeyFor(netip.MustParsePrefix(tc.in))
		if k.PrefixLen != tc.len || k.Family != tc.fam {
			t.Errorf("IPCacheKeyFor(%s) = prefixlen %d family %s; want %d %s", tc.in, k.PrefixLen, k.Family, tc.len, tc.fam)
		}
		if err := k.Validate(); err != nil {
			t.Errorf("IPCacheKeyFor(%s).Validate() = %v", tc.in, err)
		}
		if got := k.Prefix().String(); got != tc.want || k.String() != tc.want {
			t.Errorf("IPCacheKeyFor(%s).Prefix() = %s (String %s); want %s", tc.in, got, k, tc.want)
		}
	}
	// IPv4 sits in the first 4 bytes, not v4-mapped.
	k := IPCacheKeyFor(netip.MustParsePrefix("10.1.2.3/32"))
	if k.Addr != [16]byte{10, 1, 2, 3} {
		t.Errorf("IPv4 key address bytes = %v; want 10.1.2.3 then zeros", k.Addr)
	}
	if got := IPCacheLookupKey(netip.MustParseAddr("fd00::1")); got.PrefixLen != 160 {
		t.Errorf("IPCacheLookupKey(fd00::1).PrefixLen = %d; want 160", got.PrefixLen)
	}
	// Invalid input gives keys that Validate refuses and that read back as
	// the zero Prefix.
	for _, k := range []IPCacheKey{
		IPCacheKeyFor(netip.Prefix{}),
		IPCacheLookupKey(netip.Addr{}),
		{PrefixLen: 65, Family: FamilyIPv4},
		{PrefixLen: 31, Family: FamilyIPv4},
		{PrefixLen: 40, Family: FamilyIPv4, Addr: [16]byte{10, 0, 0, 1}},
		{PrefixLen: 64, Family: FamilyIPv4, Addr: [16]byte{4: 1}},
		{PrefixLen: 64, Family: 5},
	} {
		if k.Validate() == nil || k.Prefix().IsValid() || !strings.HasPrefix(k.String(), "invalid(") {
			t.Errorf("key %+v: Validate %v, Prefix %v, String %s; want refused", k, k.Validate(), k.Prefix(), k)
		}
	}
}

// FuzzIPCacheKey checks that every valid prefix survives the trip through
// the key (masked), and that every key that Validate accepts reads back
// as a prefix that makes the same key.
func FuzzIPCacheKey(f *testing.F) {
	f.Add([]byte{10, 1, 2, 3}, 24)
	f.Add([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128)
	f.Add([]byte{}, 0)
	f.Add([]byte{1, 2, 3}, -1)
	f.Fuzz(func(t *testing.T, addr []byte, bits int) {
		a, ok := netip.AddrFromSlice(addr)
		if ok {
			p := netip.PrefixFrom(a, bits)
			k := IPCacheKeyFor(p)
			if !p.IsValid() {
				if k.Validate() == nil {
					t.Fatalf("IPCacheKeyFor(invalid %v) = %+v passes Validate", p, k)
				}
				return
			}
			if err := k.Validate(); err != nil {
				t.Fatalf("IPCacheKeyFor(%v).Validate() = %v", p, err)
			}
			if got := k.Prefix(); got != p.Masked() {
				t.Fatalf("IPCacheKeyFor(%v).Prefix() = %v; want %v", p, got, p.Masked())
			}
		}
		// The raw bytes as a key, as the kernel could hand one back.
		var k IPCacheKey
		k.PrefixLen = uint32(bits)
		if len(addr) > 0 {
			k.Family = Family(addr[0])
			copy(k.Addr[:], addr[1:])
		}
		if k.Validate() != nil {
			if k.Prefix().IsValid() {
				t.Fatalf("invalid key %+v has Prefix %v", k, k.Prefix())
			}
			return
		}
		if back := IPCacheKeyFor(k.Prefix()); back != k {
			t.Fatalf("key %+v -> %v -> %+v", k, k.Prefix(), back)
		}
	})
}

func TestEndpointTypes(t *testing.T) {
	for _, s := range []string{"10.0.0.1", "fd00::1", "::ffff:10.0.0.1"} {
		a := netip.MustParseAddr(s)
		k := EndpointKeyFor(a)
		if k.IP() != a || k.Validate() != nil || k.String() != s {
			t.Errorf("EndpointKeyFor(%s): IP %v, Validate %v, String %s", s, k.IP(), k.Validate(), k)
		}
	}
	if k := EndpointKeyFor(netip.Addr{}); k.Validate() == nil || k.IP().IsValid() {
		t.Errorf("EndpointKeyFor(zero Addr) = %+v is valid", k)
	}

	mac, err := MAC(net.HardwareAddr{2, 0, 0, 0, 0, 1})
	if err != nil || mac != [6]byte{2, 0, 0, 0, 0, 1} {
		t.Errorf("MAC = %v, %v", mac, err)
	}
	if _, err := MAC(net.HardwareAddr{1, 2, 3, 4, 5, 6, 7, 8}); err == nil {
		t.Error("MAC of an EUI-64 succeeded")
	}
	v := EndpointValue{EndpointID: 12, IfIndex: 7, Identity: 65792, Flags: EndpointPolicyIngress | EndpointPolicyEgress,
		PodMAC: mac, NodeMAC: [6]byte{2, 0, 0, 0, 0, 2}}
	want := "id=12 ifindex=7 identity=65792 flags=policy-ingress|policy-egress pod-mac=02:00:00:00:00:01 node-mac=02:00:00:00:00:02"
	if v.String() != want || v.Validate() != nil {
		t.Errorf("String = %q (Validate %v); want %q", v, v.Validate(), want)
	}
	for _, bad := range []EndpointValue{{IfIndex: 1}, {EndpointID: 1}, {EndpointID: 1, IfIndex: 1, Flags: 4}} {
		if bad.Validate() == nil {
			t.Errorf("%+v passes Validate", bad)
		}
	}
}

func TestIPCacheValue(t *testing.T) {
	v := IPCacheValueFor(65792, netip.MustParseAddr("192.168.0.2"), IPCacheLocal)
	if v.NodeIP() != netip.MustParseAddr("192.168.0.2") || v.Validate() != nil || v.String() != "identity=65792 node=192.168.0.2 flags=local" {
		t.Errorf("IPCacheValueFor: %s (Validate %v)", v, v.Validate())
	}
	v = IPCacheValueFor(2, netip.Addr{}, 0)
	if v.NodeIP().IsValid() || v.NodeFamily != FamilyNone || v.String() != "identity=2 node=- flags=-" || v.Validate() != nil {
		t.Errorf("IPCacheValueFor without a node: %s", v)
	}
	for _, bad := range []IPCacheValue{{NodeAddr: [16]byte{1}}, {NodeFamily: 9}, {Flags: 0x80}} {
		if bad.Validate() == nil {
			t.Errorf("%+v passes Validate", bad)
		}
	}
}

func TestServiceTypes(t *testing.T) {
	for _, s := range []string{"10.96.0.10:53", "[fd00::10]:443"} {
		fe := netip.MustParseAddrPort(s)
		k := ServiceKeyFor(fe, ProtoTCP, 3)
		if k.AddrPort() != fe || k.Slot != 3 || k.Validate() != nil || k.String() != s+"/tcp slot=3" {
			t.Errorf("ServiceKeyFor(%s): %v slot %d, Validate %v, String %s", s, k.AddrPort(), k.Slot, k.Validate(), k)
		}
		b := BackendValueFor(fe, ProtoSCTP, BackendTerminating)
		if b.AddrPort() != fe || b.Validate() != nil || b.String() != s+"/sctp flags=terminating" {
			t.Errorf("BackendValueFor(%s): %v, Validate %v, String %s", s, b.AddrPort(), b.Validate(), b)
		}
	}
	// The port is big-endian in memory.
	if k := ServiceKeyFor(netip.MustParseAddrPort("10.0.0.1:8080"), ProtoTCP, 0); k.DPort != [2]byte{0x1f, 0x90} {
		t.Errorf("port 8080 is stored as %x; want 1f90", k.DPort)
	}
	for _, bad := range []ServiceKey{
		ServiceKeyFor(netip.AddrPort{}, ProtoTCP, 0),
		ServiceKeyFor(netip.MustParseAddrPort("10.0.0.1:0"), ProtoTCP, 0),
		ServiceKeyFor(netip.MustParseAddrPort("10.0.0.1:80"), 1, 0),
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v passes Validate", bad)
		}
	}
	if v := ServiceEntry(7, 3); v.Validate() != nil || v.String() != "service=7 count=3" {
		t.Errorf("ServiceEntry: %s, %v", v, v.Validate())
	}
	if v := BackendSlot(7, 42); v.Validate() != nil || v.String() != "service=7 backend=42" {
		t.Errorf("BackendSlot: %s, %v", v, v.Validate())
	}
	for _, bad := range []ServiceValue{{}, {ServiceID: 1, BackendID: 2, Count: 3}} {
		if bad.Validate() == nil {
			t.Errorf("%+v passes Validate", bad)
		}
	}
	if (BackendKey{}).Validate() == nil || (BackendKey{ID: 4}).String() != "4" {
		t.Error("BackendKey: ID 0 passes Validate, or String is not the ID")
	}
	for _, bad := range []BackendValue{
		BackendValueFor(netip.AddrPort{}, ProtoTCP, 0),
		BackendValueFor(netip.MustParseAddrPort("10.0.0.1:0"), ProtoTCP, 0),
		BackendValueFor(netip.MustParseAddrPort("10.0.0.1:80"), ProtoAny, 0),
		BackendValueFor(netip.MustParseAddrPort("10.0.0.1:80"), ProtoTCP, 0x10),
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v passes Validate", bad)
		}
	}
}

func TestEnumStrings(t *testing.T) {
	for got, want := range map[string]string{
		FamilyIPv4.String():            "ipv4",
		FamilyIPv6.String():            "ipv6",
		FamilyNone.String():            "none",
		Family(9).String():             "family(9)",
		Ingress.String():               "ingress",
		Egress.String():                "egress",
		Direction(0).String():          "direction(0)",
		Allow.String():                 "allow",
		Deny.String():                  "deny",
		Verdict(0).String():            "verdict(0)",
		protoName(ProtoUDP):            "udp",
		protoName(1):                   "proto(1)",
		(IPCacheLocal | 0x80).String(): "local|0x80",
		EndpointFlags(0).String():      "-",
		(PolicyValue{Verdict: Deny, Cookie: 42}).String(): "deny cookie=0x2a",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}
