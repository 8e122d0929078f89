package podip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"

	"github.com/meshplane/meshplane/ipam"
)

// ErrInvalidCIDR is wrapped by every error about a pod CIDR given to Open
// or AddCIDR.
var ErrInvalidCIDR = errors.New("invalid pod CIDR")

// MaxRange is the number of addresses of a CIDR that the allocator hands
// out from: of a larger CIDR (an IPv6 /64, say) only the first MaxRange
// addresses are used, so the bitmap stays at 8 KiB per CIDR. That is far
// more pods than a node runs; a node that fills it claims another CIDR.
const MaxRange = 1 << 16

// Gateway returns the node's gateway address in pod CIDR p: its first
// usable address (10.1.2.1 in 10.1.2.0/24, fd00::1 in fd00::/120). The
// allocator never hands it out.
func Gateway(p netip.Prefix) netip.Addr {
	return p.Masked().Addr().Next()
}

// familyIndex maps a family to the index of per-family arrays.
func familyIndex(f ipam.Family) (int, error) {
	switch f {
	case ipam.IPv4:
		return 0, nil
	case ipam.IPv6:
		return 1, nil
	}
	return 0, fmt.Errorf("unknown address family %d: use ipam.IPv4 or ipam.IPv6", int(f))
}

// families is indexed like the per-family arrays.
var families = [2]ipam.Family{ipam.IPv4, ipam.IPv6}

// addrIndex returns the family index of a valid address.
func addrIndex(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// checkCIDR validates one pod CIDR on its own.
func checkCIDR(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("%w: %v is not a CIDR", ErrInvalidCIDR, p)
	}
	if p.Addr().Is4In6() {
		return fmt.Errorf("%w: %s is an IPv4-mapped IPv6 CIDR: give IPv4 CIDRs in IPv4 form", ErrInvalidCIDR, p)
	}
	if p.Masked() != p {
		return fmt.Errorf("%w: %s has host bits set; did you mean %s?", ErrInvalidCIDR, p, p.Masked())
	}
	maxBits := ipam.MaxIPv4MaskSize
	if p.Addr().Is6() {
		maxBits = ipam.MaxIPv6MaskSize
	}
	if p.Bits() > maxBits {
		return fmt.Errorf("%w: %s is too small for pods (network, gateway and broadcast addresses are reserved): use /%d or larger",
			ErrInvalidCIDR, p, maxBits)
	}
	return nil
}

// cidr is the allocation state of one pod CIDR: a bitmap over its first
// n addresses (n = min(size, MaxRange)) in which a set bit means "not
// available": reserved, allocated or quarantined. The counters tell the
// three apart; bits past n in the last word are set and counted nowhere.
type cidr struct {
	prefix netip.Prefix
	fam    int // family index
	n      uint32
	bits   []uint64
	// cursor is the offset allocated last; the next allocation takes the
	// first free bit after it, wrapping around (round robin), so a freed
	// address is the last one to be reused.
	cursor uint32

	reserved, used, quarantined int
}

func newCIDR(p netip.Prefix) *cidr {
	hostBits := p.Addr().BitLen() - p.Bits()
	n := uint32(MaxRange)
	if hostBits < 16 {
		n = 1 << hostBits
	}
	c := &cidr{prefix: p, fam: addrIndex(p.Addr()), n: n, bits: make([]uint64, (n+63)/64)}
	for off := n; off < uint32(len(c.bits))*64; off++ {
		c.set(off)
	}
	// The network address (for IPv6 the subnet-router anycast address) and
	// the gateway.
	c.reserve(0)
	c.reserve(1)
	// The IPv4 broadcast address, when it lies inside the range.
	if c.fam == 0 && hostBits <= 16 {
		c.reserve(n - 1)
	}
	c.cursor = 1
	return c
}

func (c *cidr) reserve(off uint32) {
	c.set(off)
	c.reserved++
}

func (c *cidr) set(off uint32)        { c.bits[off/64] |= 1 << (off % 64) }
func (c *cidr) clear(off uint32)      { c.bits[off/64] &^= 1 << (off % 64) }
func (c *cidr) isSet(off uint32) bool { return c.bits[off/64]&(1<<(off%64)) != 0 }

// free returns the number of addresses that can be handed out now.
func (c *cidr) free() int { return int(c.n) - c.reserved - c.used - c.quarantined }

// isReserved reports whether off is the network, gateway or broadcast
// address.
func (c *cidr) isReserved(off uint32) bool {
	return off <= 1 || (c.fam == 0 && c.prefix.Bits() >= 16 && off == c.n-1)
}

// offset returns the offset of a in the allocatable range, and false when
// a lies outside it (outside the CIDR, or past MaxRange).
func (c *cidr) offset(a netip.Addr) (uint32, bool) {
	if !c.prefix.Contains(a) {
		return 0, false
	}
	var d uint64
	if c.fam == 0 {
		x, b := a.As4(), c.prefix.Addr().As4()
		d = uint64(binary.BigEndian.Uint32(x[:]) - binary.BigEndian.Uint32(b[:]))
	} else {
		// The range never crosses the low 64 bits: a CIDR of /64 or
		// longer has its host part there, and a shorter one starts at
		// zero in them.
		x, b := a.As16(), c.prefix.Addr().As16()
		if hostBits := 128 - c.prefix.Bits(); hostBits > 64 && binary.BigEndian.Uint64(x[:8]) != binary.BigEndian.Uint64(b[:8]) {
			return 0, false
		}
		d = binary.BigEndian.Uint64(x[8:]) - binary.BigEndian.Uint64(b[8:])
	}
	if d >= uint64(c.n) {
		return 0, false
	}
	return uint32(d), true
}

// allocatable returns the offset of a when a can be an allocation in this
// CIDR: inside the range and not reserved.
func (c *cidr) allocatable(a netip.Addr) (uint32, bool) {
	off, ok := c.offset(a)
	if !ok || c.isReserved(off) {
		return 0, false
	}
	return off, true
}

// addr returns the address at offset off.
func (c *cidr) addr(off uint32) netip.Addr {
	if c.fam == 0 {
		b := c.prefix.Addr().As4()
		binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+off)
		return netip.AddrFrom4(b)
	}
	b := c.prefix.Addr().As16()
	binary.BigEndian.PutUint64(b[8:], binary.BigEndian.Uint64(b[8:])+uint64(off))
	return netip.AddrFrom16(b)
}

// next returns the first free offset after the cursor, wrapping around,
// and false when none is free.
func (c *cidr) next() (uint32, bool) {
	if c.free() <= 0 {
		return 0, false
	}
	start := c.cursor + 1
	if start >= c.n {
		start = 0
	}
	w := int(start / 64)
	word := c.bits[w] | (uint64(1)<<(start%64) - 1) // bits before start count as taken
	// One pass over every word, plus the first word again unmasked.
	for range len(c.bits) + 1 {
		if word != ^uint64(0) {
			return uint32(w*64 + bits.TrailingZeros64(^word)), true
		}
		w++
		if w == len(c.bits) {
			w = 0
		}
		word = c.bits[w]
	}
	return 0, false
}
