package ipam

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// Family is an IP address family.
type Family int

// The families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Of returns the family of p.
func Of(p netip.Prefix) Family {
	if p.Addr().Is4() {
		return IPv4
	}
	return IPv6
}

// ErrInvalidPool is wrapped by every pool validation error.
var ErrInvalidPool = errors.New("invalid IPAM pool")

// Pool is a cluster pool: CIDRs per family, carved into node CIDRs of a
// fixed mask size per family (like Cilium's clusterPoolIPv4PodCIDRList and
// clusterPoolIPv4MaskSize).
type Pool struct {
	Name         string         `json:"name"`
	IPv4         []netip.Prefix `json:"ipv4,omitempty"`
	IPv4MaskSize int            `json:"ipv4MaskSize,omitempty"`
	IPv6         []netip.Prefix `json:"ipv6,omitempty"`
	IPv6MaskSize int            `json:"ipv6MaskSize,omitempty"`
}

// The default pool. Cilium's default, 10.0.0.0/8, swallows every 10.x
// network (cloud VPCs default to 10.0.0.0/16, kubeadm's service range is
// 10.96.0.0/12, flannel's pods 10.244.0.0/16), so meshplane defaults to
// 10.192.0.0/12, which none of those use: 4,096 node CIDRs of /24 (254
// pods each). IPv6 uses a fixed unique-local /48 with /112 per node.
var (
	DefaultIPv4         = netip.MustParsePrefix("10.192.0.0/12")
	DefaultIPv4MaskSize = 24
	DefaultIPv6         = netip.MustParsePrefix("fd6d:7368::/48")
	DefaultIPv6MaskSize = 112
)

// DefaultPool returns the pool "default" with the default ranges: IPv4
// only, or dual stack.
func DefaultPool(dualStack bool) Pool {
	p := Pool{Name: "default", IPv4: []netip.Prefix{DefaultIPv4}, IPv4MaskSize: DefaultIPv4MaskSize}
	if dualStack {
		p.IPv6, p.IPv6MaskSize = []netip.Prefix{DefaultIPv6}, DefaultIPv6MaskSize
	}
	return p
}

// Limits on node CIDR sizes: a node CIDR needs room for the network,
// gateway and (IPv4) broadcast addresses and some pods.
const (
	MaxIPv4MaskSize = 29
	MaxIPv6MaskSize = 125
)

// unusable are the ranges that cannot hold pod addresses: a pod there
// could not be reached, or would not be unicast. Private (RFC 1918,
// unique-local), shared (100.64.0.0/10), documentation, benchmarking and
// class E (240.0.0.0/4 but its broadcast address) ranges are unicast and
// allowed; GKE, for one, lets pods use class E.
var unusable = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `the "this network" range (0.0.0.0 is the unspecified address)`},
	{netip.MustParsePrefix("127.0.0.0/8"), "the loopback range"},
	{netip.MustParsePrefix("169.254.0.0/16"), "the link-local range"},
	{netip.MustParsePrefix("224.0.0.0/4"), "the multicast range"},
	{netip.MustParsePrefix("255.255.255.255/32"), "the limited broadcast address"},
	{netip.MustParsePrefix("::/128"), "the unspecified address"},
	{netip.MustParsePrefix("::1/128"), "the loopback address"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "the IPv4-mapped range"},
	{netip.MustParsePrefix("64:ff9b::/96"), "the NAT64 range (translated to IPv4 by NAT64 gateways)"},
	{netip.MustParsePrefix("fe80::/10"), "the link-local range"},
	{netip.MustParsePrefix("ff00::/8"), "the multicast range"},
}

// checkUsable reports a pool CIDR that overlaps a range pods cannot use.
func checkUsable(pool string, c netip.Prefix) error {
	for _, u := range unusable {
		if !c.Overlaps(u.prefix) {
			continue
		}
		var rel string
		switch {
		case c == u.prefix:
			rel = "is"
		case c.Bits() < u.prefix.Bits():
			rel = "contains " + u.prefix.String() + ","
		default:
			rel = "is inside " + u.prefix.String() + ","
		}
		return fmt.Errorf("%w: pool %s: %s %s %s, which cannot hold pod addresses; use a private range such as %s or, for IPv6, a unique-local one in fd00::/8",
			ErrInvalidPool, pool, c, rel, u.what, DefaultIPv4)
	}
	return nil
}

var poolNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// CIDRs returns the pool's CIDRs of family f and their node mask size.
func (p Pool) CIDRs(f Family) ([]netip.Prefix, int) {
	if f == IPv6 {
		return p.IPv6, p.IPv6MaskSize
	}
	return p.IPv4, p.IPv4MaskSize
}

// Families returns the families the pool serves.
func (p Pool) Families() []Family {
	var fs []Family
	if len(p.IPv4) > 0 {
		fs = append(fs, IPv4)
	}
	if len(p.IPv6) > 0 {
		fs = append(fs, IPv6)
	}
	return fs
}

// Validate checks one pool on its own.
func (p Pool) Validate() error {
	if !poolNameRE.MatchString(p.Name) {
		return fmt.Errorf("%w: name %q: use 1-63 lowercase letters, digits and '-'", ErrInvalidPool, p.Name)
	}
	if len(p.IPv4) == 0 && len(p.IPv6) == 0 {
		return fmt.Errorf("%w: pool %s has no CIDRs: give at least one IPv4 or IPv6 CIDR", ErrInvalidPool, p.Name)
	}
	for _, f := range []Family{IPv4, IPv6} {
		cidrs, mask := p.CIDRs(f)
		if len(cidrs) == 0 {
			if mask != 0 {
				return fmt.Errorf("%w: pool %s has an %s mask size but no %s CIDRs", ErrInvalidPool, p.Name, f, f)
			}
			continue
		}
		maxMask, bits := MaxIPv4MaskSize, 32
		if f == IPv6 {
			maxMask, bits = MaxIPv6MaskSize, 128
		}
		for i, c := range cidrs {
			if !c.IsValid() {
				return fmt.Errorf("%w: pool %s: %s CIDR #%d is not valid", ErrInvalidPool, p.Name, f, i+1)
			}
			if Of(c) != f || c.Addr().Is4In6() {
				return fmt.Errorf("%w: pool %s: %s is not an %s CIDR", ErrInvalidPool, p.Name, c, f)
			}
			if c.Masked() != c {
				return fmt.Errorf("%w: pool %s: %s has host bits set; did you mean %s?", ErrInvalidPool, p.Name, c, c.Masked())
			}
			if err := checkUsable(p.Name, c); err != nil {
				return err
			}
			if mask <= c.Bits() || mask > maxMask || mask > bits {
				return fmt.Errorf("%w: pool %s: %s mask size /%d does not fit %s: use a size between /%d and /%d",
					ErrInvalidPool, p.Name, f, mask, c, c.Bits()+1, maxMask)
			}
			for _, d := range cidrs[:i] {
				if c.Overlaps(d) {
					return fmt.Errorf("%w: pool %s: CIDRs %s and %s overlap", ErrInvalidPool, p.Name, d, c)
				}
			}
		}
	}
	return nil
}

// ValidatePools checks pools together: each valid, unique names, and no
// CIDR of one overlapping a CIDR of another.
func ValidatePools(pools []Pool) error {
	for i, p := range pools {
		if err := p.Validate(); err != nil {
			return err
		}
		for _, q := range pools[:i] {
			if q.Name == p.Name {
				return fmt.Errorf("%w: two pools are named %s", ErrInvalidPool, p.Name)
			}
			for _, a := range slices.Concat(p.IPv4, p.IPv6) {
				for _, b := range slices.Concat(q.IPv4, q.IPv6) {
					if a.Overlaps(b) {
						return fmt.Errorf("%w: %s of pool %s overlaps %s of pool %s", ErrInvalidPool, a, p.Name, b, q.Name)
					}
				}
			}
		}
	}
	return nil
}

// Size returns how many node CIDRs the pool's family f holds.
func (p Pool) Size(f Family) *big.Int {
	cidrs, mask := p.CIDRs(f)
	n := new(big.Int)
	for _, c := range cidrs {
		n.Add(n, new(big.Int).Lsh(big.NewInt(1), uint(mask-c.Bits())))
	}
	return n
}

// NodeCIDR returns the i-th node CIDR of family f, counting through the
// pool's CIDRs in order, and false when i is past the end.
func (p Pool) NodeCIDR(f Family, i uint64) (netip.Prefix, bool) {
	cidrs, mask := p.CIDRs(f)
	for _, c := range cidrs {
		shift := mask - c.Bits()
		if shift < 64 && i >= 1<<shift {
			i -= 1 << shift
			continue
		}
		return nthSubnet(c, mask, i), true
	}
	return netip.Prefix{}, false
}

// Contains reports whether node CIDR n is one of the pool's: inside one of
// its CIDRs of n's family, with the pool's mask size.
func (p Pool) Contains(n netip.Prefix) bool {
	cidrs, mask := p.CIDRs(Of(n))
	if n.Bits() != mask {
		return false
	}
	for _, c := range cidrs {
		if c.Contains(n.Addr()) {
			return true
		}
	}
	return false
}

// nthSubnet returns subnet i of size mask inside c.
func nthSubnet(c netip.Prefix, mask int, i uint64) netip.Prefix {
	b := c.Addr().AsSlice()
	v := new(big.Int).SetBytes(b)
	v.Add(v, new(big.Int).Lsh(new(big.Int).SetUint64(i), uint(len(b)*8-mask)))
	v.FillBytes(b)
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, mask)
}

// ParseCIDRs parses a comma-separated list of CIDRs; each must be masked
// (no host bits), so a typo like 10.1.2.3/16 is an error, not a guess.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return nil, fmt.Errorf("%w: %q is not a CIDR like 10.192.0.0/12 or fd6d:7368::/48", ErrInvalidPool, item)
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("%w: %s has host bits set; did you mean %s?", ErrInvalidPool, p, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

// MarshalText writes "IPv4" or "IPv6".
func (f Family) MarshalText() ([]byte, error) { return []byte(f.String()), nil }
