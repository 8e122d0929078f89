package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ipcacheStaticBits is how many bits of an IPCacheKey's LPM data every entry
// matches before the address: the family byte and the 3 padding bytes.
const ipcacheStaticBits = 32

// IPCacheKey is the ipcache's key: an IPv4 or IPv6 prefix in an LPM trie.
//
// The matching C struct (24 bytes):
//
//	struct mp_ipcache_key {
//		__u32 prefixlen; /* 32 + the prefix length: the family and pad are always matched */
//		__u8  family;    /* MP_FAMILY_IPV4 (4) or MP_FAMILY_IPV6 (6) */
//		__u8  pad[3];    /* zero */
//		__u8  addr[16];  /* IPv4 in addr[0..3], the rest zero; bits past the prefix zero */
//	};
//
// Because the family is part of every prefix, an IPv4 /0 never matches an
// IPv6 address and the other way round. The datapath looks an address up
// with prefixlen 64 (IPv4) or 160 (IPv6); IPCacheLookupKey builds that key.
type IPCacheKey struct {
	PrefixLen uint32
	Family    Family
	_         [3]uint8
	Addr      [16]byte
}

// IPCacheKeyFor returns the key for p, masked: bits past the prefix length
// are zeroed (the trie ignores them; zeroing keeps a single spelling of each
// key). An invalid p (the zero Prefix) gives the zero key, which Validate and
// so Put reject.
func IPCacheKeyFor(p netip.Prefix) IPCacheKey {
	if !p.IsValid() {
		return IPCacheKey{}
	}
	p = p.Masked()
	fam, addr := encodeAddr(p.Addr())
	return IPCacheKey{PrefixLen: uint32(ipcacheStaticBits + p.Bits()), Family: fam, Addr: addr}
}

// IPCacheLookupKey returns the full-length key that looks up a single
// address, as the datapath does: the longest stored prefix containing a
// wins.
func IPCacheLookupKey(a netip.Addr) IPCacheKey {
	if !a.IsValid() {
		return IPCacheKey{}
	}
	return IPCacheKeyFor(netip.PrefixFrom(a, a.BitLen()))
}

// Prefix returns the key's prefix, or the zero Prefix if the key is not
// valid.
func (k IPCacheKey) Prefix() netip.Prefix {
	if k.Validate() != nil {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(decodeAddr(k.Family, k.Addr), int(k.PrefixLen)-ipcacheStaticBits)
}

// Validate reports whether k is a key the datapath can match: a known
// family, a prefix length within the family's width and no address bits
// past the prefix.
func (k IPCacheKey) Validate() error {
	if err := checkAddr(k.Family, k.Addr); err != nil {
		return fmt.Errorf("ipcache key: %w", err)
	}
	bits := int(k.PrefixLen) - ipcacheStaticBits
	if k.PrefixLen < ipcacheStaticBits || bits > k.Family.addrBits() {
		return fmt.Errorf("ipcache key: prefixlen %d: want %d plus 0-%d prefix bits for %s",
			k.PrefixLen, ipcacheStaticBits, k.Family.addrBits(), k.Family)
	}
	if hostBitsSet(k.Addr[:], bits) {
		return fmt.Errorf("ipcache key: address %v has bits set past its /%d prefix",
			decodeAddr(k.Family, k.Addr), bits)
	}
	return nil
}

// String returns the prefix, e.g. "10.0.1.0/24", or the raw fields of an
// invalid key.
func (k IPCacheKey) String() string {
	if p := k.Prefix(); p.IsValid() {
		return p.String()
	}
	return fmt.Sprintf("invalid(prefixlen=%d family=%s addr=%x)", k.PrefixLen, k.Family, k.Addr)
}

// hostBitsSet reports whether b has a set bit at or after bit index bits
// (bit 0 being the most significant bit of b[0]).
func hostBitsSet(b []byte, bits int) bool {
	for i := range b {
		var mask byte = 0xff // the bits of b[i] that lie past the prefix
		switch {
		case (i+1)*8 <= bits:
			mask = 0
		case i*8 < bits:
			mask = 0xff >> (bits - i*8)
		}
		if b[i]&mask != 0 {
			return true
		}
	}
	return false
}

// IPCacheFlags are the flags of an ipcache entry (MP_IPCACHE_* in C).
type IPCacheFlags uint8

const (
	// IPCacheLocal marks an IP of an endpoint on this node: the datapath
	// delivers to it through its veth (the Endpoints map has the details)
	// instead of sending it to NodeAddr.
	IPCacheLocal IPCacheFlags = 1 << 0

	ipcacheKnownFlags = IPCacheLocal
)

// String returns the flag names joined by "|", or "-" for none.
func (f IPCacheFlags) String() string {
	return flagString(uint8(f), []string{"local"})
}

// IPCacheValue is what the ipcache knows about a prefix: its security
// identity and the node that hosts it.
//
// The matching C struct (24 bytes):
//
//	struct mp_ipcache_value {
//		__u32 identity;      /* security identity of the prefix */
//		__u8  node_family;   /* family of node_addr; 0: no node (e.g. world CIDRs) */
//		__u8  flags;         /* MP_IPCACHE_LOCAL */
//		__u8  pad[2];
//		__u8  node_addr[16]; /* the hosting node's address; IPv4 in node_addr[0..3] */
//	};
type IPCacheValue struct {
	Identity   uint32
	NodeFamily Family
	Flags      IPCacheFlags
	_          [2]uint8
	NodeAddr   [16]byte
}

// IPCacheValueFor returns a value with identity, the node address (the zero
// Addr for none) and flags.
func IPCacheValueFor(identity uint32, node netip.Addr, flags IPCacheFlags) IPCacheValue {
	fam, addr := encodeAddr(node)
	return IPCacheValue{Identity: identity, NodeFamily: fam, Flags: flags, NodeAddr: addr}
}

// NodeIP returns the hosting node's address, or the zero Addr if there is
// none.
func (v IPCacheValue) NodeIP() netip.Addr {
	return decodeAddr(v.NodeFamily, v.NodeAddr)
}

// Validate reports whether v is a value the datapath can use.
func (v IPCacheValue) Validate() error {
	if v.NodeFamily != FamilyNone {
		if err := checkAddr(v.NodeFamily, v.NodeAddr); err != nil {
			return fmt.Errorf("ipcache value: node: %w", err)
		}
	} else if v.NodeAddr != [16]byte{} {
		return errors.New("ipcache value: node address without a family")
	}
	if v.Flags&^ipcacheKnownFlags != 0 {
		return fmt.Errorf("ipcache value: unknown flags %#x", uint8(v.Flags&^ipcacheKnownFlags))
	}
	return nil
}

// String returns e.g. "identity=65792 node=10.0.0.2 flags=local".
func (v IPCacheValue) String() string {
	node := "-"
	if a := v.NodeIP(); a.IsValid() {
		node = a.String()
	}
	return fmt.Sprintf("identity=%d node=%s flags=%s", v.Identity, node, v.Flags)
}

// flagString names the set bits of f from names (bit 0 first), and the
// number of any unnamed bit; "-" when none is set.
func flagString(f uint8, names []string) string {
	if f == 0 {
		return "-"
	}
	var parts []string
	for i := range 8 {
		if f&(1<<i) == 0 {
			continue
		}
		if i < len(names) {
			parts = append(parts, names[i])
		} else {
			parts = append(parts, fmt.Sprintf("%#x", 1<<i))
		}
	}
	return strings.Join(parts, "|")
}
