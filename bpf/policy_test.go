package bpf

import (
	"fmt"
	"strings"
	"testing"
)

func TestPortPrefixes(t *testing.T) {
	for _, tc := range []struct {
		from, to uint16
		want     string
	}{
		{80, 80, "80/16"},
		{0, 65535, "0/0"},
		{8080, 8087, "8080/13"},
		{8080, 8088, "8080/13 8088/16"},
		{1, 65535, "1/16 2/15 4/14 8/13 16/12 32/11 64/10 128/9 256/8 512/7 1024/6 2048/5 4096/4 8192/3 16384/2 32768/1"},
		{0, 65534, "0/1 32768/2 49152/3 57344/4 61440/5 63488/6 64512/7 65024/8 65280/9 65408/10 65472/11 65504/12 65520/13 65528/14 65532/15 65534/16"},
		{1024, 65535, "1024/6 2048/5 4096/4 8192/3 16384/2 32768/1"},
		{65535, 65535, "65535/16"},
		{30000, 30003, "30000/14"},
		{1, 2, "1/16 2/16"},
	} {
		got, err := PortPrefixes(tc.from, tc.to)
		if err != nil {
			t.Errorf("PortPrefixes(%d, %d): %v", tc.from, tc.to, err)
			continue
		}
		var s []string
		for _, p := range got {
			s = append(s, fmt.Sprintf("%d/%d", p.Port, p.Bits))
		}
		if strings.Join(s, " ") != tc.want {
			t.Errorf("PortPrefixes(%d, %d) = %s; want %s", tc.from, tc.to, strings.Join(s, " "), tc.want)
		}
	}
	if _, err := PortPrefixes(81, 80); err == nil {
		t.Error("PortPrefixes(81, 80) succeeded")
	}
}

// FuzzPortRange checks that PortPrefixes covers every port of [from, to]
// exactly once and nothing outside, with aligned prefixes, in at most 30.
func FuzzPortRange(f *testing.F) {
	f.Add(uint16(80), uint16(80))
	f.Add(uint16(0), uint16(65535))
	f.Add(uint16(1), uint16(65534))
	f.Add(uint16(1000), uint16(999))
	f.Fuzz(func(t *testing.T, from, to uint16) {
		got, err := PortPrefixes(from, to)
		if from > to {
			if err == nil {
				t.Fatalf("PortPrefixes(%d, %d) succeeded", from, to)
			}
			return
		}
		if err != nil {
			t.Fatalf("PortPrefixes(%d, %d): %v", from, to, err)
		}
		if len(got) > 30 {
			t.Fatalf("PortPrefixes(%d, %d) gave %d prefixes", from, to, len(got))
		}
		var covered [65536]uint8
		for _, p := range got {
			if p.Bits < 0 || p.Bits > 16 {
				t.Fatalf("prefix %+v: bits out of range", p)
			}
			size := 1 << (16 - p.Bits)
			if int(p.Port)%size != 0 {
				t.Fatalf("prefix %+v is not aligned", p)
			}
			if int(p.Last())-int(p.First())+1 != size {
				t.Fatalf("prefix %+v: First %d Last %d", p, p.First(), p.Last())
			}
			for port := int(p.Port); port < int(p.Port)+size; port++ {
				covered[port]++
			}
		}
		for port, n := range covered {
			in := port >= int(from) && port <= int(to)
			if in && n != 1 || !in && n != 0 {
				t.Fatalf("PortPrefixes(%d, %d): port %d covered %d times", from, to, port, n)
			}
		}
	})
}

func TestPolicyKeyFor(t *testing.T) {
	for _, tc := range []struct {
		proto uint8
		port  uint16
		bits  int
		want  string // String of the key, or the error's text
		len   uint32
	}{
		{ProtoTCP, 80, 16, "ep=7 ingress identity=any tcp/80", 96},
		{ProtoTCP, 8080, 13, "ep=7 ingress identity=any tcp/8080-8087", 93},
		{ProtoUDP, 0, 0, "ep=7 ingress identity=any udp", 80},
		{ProtoAny, 0, 0, "ep=7 ingress identity=any any", 72},
		{1, 0, 0, "ep=7 ingress identity=any proto(1)", 80}, // ICMP: no ports
		{ProtoTCP, 81, 15, "bits set past its /15 prefix", 0},
		{ProtoTCP, 80, 17, "0-16", 0},
		{ProtoTCP, 80, -1, "0-16", 0},
		{ProtoAny, 80, 16, "both must be 0", 0},
		{ProtoAny, 0, 16, "both must be 0", 0},
		{1, 8, 16, "has no ports", 0},
	} {
		k, err := PolicyKeyFor(7, Ingress, 0, tc.proto, tc.port, tc.bits)
		got := fmt.Sprint(err)
		if err == nil {
			got = k.String()
			if k.PrefixLen != tc.len {
				t.Errorf("PolicyKeyFor(%d, %d/%d).PrefixLen = %d; want %d", tc.proto, tc.port, tc.bits, k.PrefixLen, tc.len)
			}
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("PolicyKeyFor(%d, %d/%d) = %s; want %q", tc.proto, tc.port, tc.bits, got, tc.want)
		}
	}
	if _, err := PolicyKeyFor(7, 0, 0, ProtoTCP, 80, 16); err == nil {
		t.Error("PolicyKeyFor without a direction succeeded")
	}
	k, _ := PolicyKeyFor(7, Egress, 1234, ProtoTCP, 8080, 13)
	if port, bits := k.PortPrefix(); port != 8080 || bits != 13 || k.AnyProto() || k.String() != "ep=7 egress identity=1234 tcp/8080-8087" {
		t.Errorf("accessors: PortPrefix %d/%d AnyProto %v String %s", port, bits, k.AnyProto(), k)
	}
}

// verdict applies the lookup rule documented on PolicyKey, as the datapath
// does: a lookup for the remote's identity and one for any identity; Deny
// from either wins, then Allow from either, then the endpoint's default.
func verdict(t *testing.T, m *Map[PolicyKey, PolicyValue], ep uint32, dir Direction, remote uint32, proto uint8, port uint16, enforced bool) (Verdict, uint32) {
	t.Helper()
	var hits []PolicyValue
	for _, id := range []uint32{remote, 0} {
		v, ok, err := m.Lookup(PolicyLookupKey(ep, dir, id, proto, port))
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			hits = append(hits, v)
		}
	}
	for _, want := range []Verdict{Deny, Allow} {
		for _, v := range hits {
			if v.Verdict == want {
				return v.Verdict, v.Cookie
			}
		}
	}
	if enforced {
		return Deny, 0
	}
	return Allow, 0
}

func TestPolicyLookup(t *testing.T) {
	m := openMaps(t, testConfig(t)).Policy
	const ep = 7
	put := func(dir Direction, remote uint32, proto uint8, from, to uint16, v Verdict, cookie uint32) {
		t.Helper()
		prefixes := []PortPrefix{{}}
		if proto != ProtoAny {
			var err error
			if prefixes, err = PortPrefixes(from, to); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range prefixes {
			k, err := PolicyKeyFor(ep, dir, remote, proto, p.Port, p.Bits)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Put(k, PolicyValue{Verdict: v, Cookie: cookie}); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(Ingress, 100, ProtoTCP, 80, 80, Allow, 1)     // one port
	put(Ingress, 100, ProtoTCP, 8080, 8090, Allow, 2) // a port range
	put(Ingress, 0, ProtoUDP, 0, 65535, Allow, 3)     // any identity, any UDP port
	put(Ingress, 200, ProtoAny, 0, 0, Deny, 4)        // deny everything from 200
	put(Ingress, 0, ProtoTCP, 443, 443, Allow, 5)     // anyone to 443
	put(Ingress, 300, ProtoTCP, 443, 443, Deny, 6)    // but not 300
	put(Egress, 100, ProtoTCP, 0, 65535, Allow, 7)    // egress to 100, any TCP port
	put(Ingress, 400, ProtoAny, 0, 0, Allow, 8)       // everything from 400 ...
	put(Ingress, 400, ProtoTCP, 1000, 1999, Deny, 9)  // ... except TCP 1000-1999
	put(Ingress, 0, ProtoSCTP, 5000, 5000, Allow, 10) // anyone to SCTP 5000

	for _, tc := range []struct {
		dir    Direction
		remote uint32
		proto  uint8
		port   uint16
		want   Verdict
		cookie uint32 // 0: the default
	}{
		{Ingress, 100, ProtoTCP, 80, Allow, 1},
		{Ingress, 100, ProtoTCP, 81, Deny, 0},      // no entry: enforced default
		{Ingress, 100, ProtoTCP, 8080, Allow, 2},   // range start
		{Ingress, 100, ProtoTCP, 8085, Allow, 2},   // inside
		{Ingress, 100, ProtoTCP, 8090, Allow, 2},   // range end
		{Ingress, 100, ProtoTCP, 8091, Deny, 0},    // past it
		{Ingress, 100, ProtoTCP, 8079, Deny, 0},    // before it
		{Ingress, 100, ProtoUDP, 53, Allow, 3},     // the identity-0 lookup
		{Ingress, 999, ProtoUDP, 1, Allow, 3},      // any identity
		{Ingress, 200, ProtoTCP, 22, Deny, 4},      // any protocol
		{Ingress, 200, ProtoUDP, 53, Deny, 4},      // Deny beats the identity-0 Allow
		{Ingress, 200, 1, 0, Deny, 4},              // ICMP too
		{Ingress, 999, ProtoTCP, 443, Allow, 5},    // identity 0
		{Ingress, 300, ProtoTCP, 443, Deny, 6},     // the remote's Deny beats identity 0's Allow
		{Ingress, 999, ProtoTCP, 444, Deny, 0},     // nothing
		{Egress, 100, ProtoTCP, 80, Allow, 7},      // direction is part of the key
		{Egress, 100, ProtoUDP, 80, Deny, 0},       // any TCP port is not any protocol
		{Egress, 999, ProtoTCP, 443, Deny, 0},      // ingress entries do not leak into egress
		{Ingress, 400, ProtoUDP, 9, Allow, 8},      // any protocol ...
		{Ingress, 400, ProtoTCP, 999, Allow, 8},    // ... and TCP outside the denied range
		{Ingress, 400, ProtoTCP, 1500, Deny, 9},    // the more specific Deny
		{Ingress, 100, ProtoSCTP, 5000, Allow, 10}, // SCTP
		{Ingress, 100, ProtoSCTP, 5001, Deny, 0},   //
	} {
		got, cookie := verdict(t, m, ep, tc.dir, tc.remote, tc.proto, tc.port, true)
		if got != tc.want || cookie != tc.cookie {
			t.Errorf("%s from %d %s/%d: %s (cookie %d); want %s (cookie %d)",
				tc.dir, tc.remote, protoName(tc.proto), tc.port, got, cookie, tc.want, tc.cookie)
		}
	}
	// Another endpoint sees none of it.
	if got, cookie := verdict(t, m, ep+1, Ingress, 100, ProtoTCP, 80, false); got != Allow || cookie != 0 {
		t.Errorf("endpoint %d: %s (cookie %d); want the unenforced default", ep+1, got, cookie)
	}
}
