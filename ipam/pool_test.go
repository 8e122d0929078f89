package ipam

import (
	"errors"
	"net/netip"
	"testing"
)

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func TestPoolValidate(t *testing.T) {
	tests := []struct {
		name string
		pool Pool
		ok   bool
	}{
		{"default v4", DefaultPool(false), true},
		{"default dual", DefaultPool(true), true},
		{"no cidrs", Pool{Name: "p"}, false},
		{"bad name", Pool{Name: "P_1", IPv4: pfx("10.0.0.0/16"), IPv4MaskSize: 24}, false},
		{"host bits", Pool{Name: "p", IPv4: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/16")}, IPv4MaskSize: 24}, false},
		{"mask not larger", Pool{Name: "p", IPv4: pfx("10.0.0.0/24"), IPv4MaskSize: 24}, false},
		{"mask too small for pods", Pool{Name: "p", IPv4: pfx("10.0.0.0/24"), IPv4MaskSize: 31}, false},
		{"v6 in v4 list", Pool{Name: "p", IPv4: pfx("fd00::/48"), IPv4MaskSize: 64}, false},
		{"overlap inside", Pool{Name: "p", IPv4: pfx("10.0.0.0/16", "10.0.128.0/17"), IPv4MaskSize: 24}, false},
		{"mask without cidrs", Pool{Name: "p", IPv4: pfx("10.0.0.0/16"), IPv4MaskSize: 24, IPv6MaskSize: 112}, false},
		{"two v4", Pool{Name: "p", IPv4: pfx("10.0.0.0/16", "10.1.0.0/16"), IPv4MaskSize: 24}, true},
		{"v6 only", Pool{Name: "p", IPv6: pfx("fd00::/104"), IPv6MaskSize: 120}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.pool.Validate()
			if tt.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidPool) {
				t.Fatalf("error %v does not wrap ErrInvalidPool", err)
			}
		})
	}
}

func TestValidatePools(t *testing.T) {
	a := Pool{Name: "a", IPv4: pfx("10.0.0.0/16"), IPv4MaskSize: 24}
	b := Pool{Name: "b", IPv4: pfx("10.0.128.0/17"), IPv4MaskSize: 24}
	c := Pool{Name: "c", IPv4: pfx("10.1.0.0/16"), IPv4MaskSize: 26}
	if err := ValidatePools([]Pool{a, c}); err != nil {
		t.Fatal(err)
	}
	if err := ValidatePools([]Pool{a, b}); !errors.Is(err, ErrInvalidPool) {
		t.Fatalf("overlapping pools: %v", err)
	}
	if err := ValidatePools([]Pool{a, a}); !errors.Is(err, ErrInvalidPool) {
		t.Fatalf("duplicate names: %v", err)
	}
}

func TestNodeCIDR(t *testing.T) {
	p := Pool{Name: "p", IPv4: pfx("10.0.0.0/23", "192.168.0.0/24"), IPv4MaskSize: 24,
		IPv6: pfx("fd00::/120"), IPv6MaskSize: 122}
	want := []string{"10.0.0.0/24", "10.0.1.0/24", "192.168.0.0/24"}
	for i, w := range want {
		got, ok := p.NodeCIDR(IPv4, uint64(i))
		if !ok || got.String() != w {
			t.Errorf("NodeCIDR(v4, %d) = %s, %v; want %s", i, got, ok, w)
		}
		if !p.Contains(got) {
			t.Errorf("pool does not contain its node CIDR %s", got)
		}
	}
	if _, ok := p.NodeCIDR(IPv4, 3); ok {
		t.Error("NodeCIDR past the end succeeded")
	}
	if got, _ := p.NodeCIDR(IPv6, 3); got.String() != "fd00::c0/122" {
		t.Errorf("NodeCIDR(v6, 3) = %s", got)
	}
	if p.Size(IPv4).Int64() != 3 || p.Size(IPv6).Int64() != 4 {
		t.Errorf("sizes %s, %s", p.Size(IPv4), p.Size(IPv6))
	}
	if p.Contains(netip.MustParsePrefix("10.0.0.0/25")) {
		t.Error("Contains accepts the wrong mask size")
	}
}

func TestParseCIDRs(t *testing.T) {
	got, err := ParseCIDRs("10.0.0.0/16, fd00::/48")
	if err != nil || len(got) != 2 {
		t.Fatalf("ParseCIDRs = %v, %v", got, err)
	}
	for _, bad := range []string{"10.0.0.1/16", "10.0.0.0", "x/8"} {
		if _, err := ParseCIDRs(bad); !errors.Is(err, ErrInvalidPool) {
			t.Errorf("ParseCIDRs(%q) = %v", bad, err)
		}
	}
}

// FuzzPool: pools built from arbitrary CIDR text either fail validation or
// carve into node CIDRs the pool contains.
func FuzzPool(f *testing.F) {
	f.Add("10.0.0.0/16", 24, "fd00::/48", 112)
	f.Add("10.0.0.1/16", 33, "", 0)
	f.Fuzz(func(t *testing.T, v4 string, m4 int, v6 string, m6 int) {
		c4, err := ParseCIDRs(v4)
		if err != nil {
			return
		}
		c6, err := ParseCIDRs(v6)
		if err != nil {
			return
		}
		p := Pool{Name: "f", IPv4: c4, IPv4MaskSize: m4, IPv6: c6, IPv6MaskSize: m6}
		if p.Validate() != nil {
			return
		}
		for _, fam := range p.Families() {
			for i := range uint64(3) {
				n, ok := p.NodeCIDR(fam, i)
				if ok && !p.Contains(n) {
					t.Fatalf("%+v: node CIDR %d = %s not contained", p, i, n)
				}
			}
		}
	})
}
