package ipam

import (
	"errors"
	"net/netip"
	"strings"
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

// TestPoolUnusableRanges: ranges that cannot hold pod addresses are
// refused, naming the range and why; unusual but unicast ones are not.
func TestPoolUnusableRanges(t *testing.T) {
	tests := []struct {
		cidr string
		mask int
		want string // "" for allowed
	}{
		{"0.0.0.0/0", 24, "0.0.0.0/0 contains 0.0.0.0/8, the \"this network\" range"},
		{"0.0.0.0/8", 24, "0.0.0.0/8 is the \"this network\" range"},
		{"127.0.0.0/8", 24, "127.0.0.0/8 is the loopback range"},
		{"127.1.0.0/16", 24, "127.1.0.0/16 is inside 127.0.0.0/8, the loopback range"},
		{"96.0.0.0/3", 24, "96.0.0.0/3 contains 127.0.0.0/8, the loopback range"},
		{"169.254.0.0/16", 24, "link-local"},
		{"224.0.0.0/4", 24, "multicast"},
		{"239.1.0.0/16", 24, "multicast"},
		{"240.0.0.0/4", 24, "255.255.255.255/32, the limited broadcast address"},
		{"::/0", 112, "::/0 contains ::/128, the unspecified address"},
		{"::/64", 112, "unspecified"},
		{"::1/128", 125, "loopback"},
		{"64:ff9b::/96", 120, "NAT64"},
		{"fe80::/10", 112, "link-local"},
		{"fe80::/64", 112, "link-local"},
		{"ff00::/8", 112, "multicast"},
		{"ff02::/16", 112, "multicast"},
		// Private, shared, documentation and class E ranges are unicast.
		{"10.0.0.0/8", 24, ""},
		{"100.64.0.0/10", 24, ""},
		{"192.0.2.0/24", 26, ""},
		{"198.18.0.0/15", 24, ""},
		{"240.0.0.0/5", 24, ""},
		{"2001:db8::/32", 112, ""},
		{"fd00::/8", 112, ""},
		{"2600::/12", 112, ""},
	}
	for _, tt := range tests {
		t.Run(tt.cidr, func(t *testing.T) {
			c := netip.MustParsePrefix(tt.cidr)
			p := Pool{Name: "p", IPv4: []netip.Prefix{c}, IPv4MaskSize: tt.mask}
			if c.Addr().Is6() {
				p = Pool{Name: "p", IPv6: []netip.Prefix{c}, IPv6MaskSize: tt.mask}
			}
			err := p.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want it allowed", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidPool) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want ErrInvalidPool saying %q", err, tt.want)
			}
		})
	}
}
