package health

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"unicode"
	"unicode/utf8"
)

// MaxMetaSize is the most an encoded Meta may take: memberlist's limit on
// node metadata (memberlist.MetaMaxSize).
const MaxMetaSize = 512

// Limits on Meta's fields, besides MaxMetaSize on the whole.
const (
	maxMetaString = 128 // bytes of Cluster and of Version
	maxMetaList   = 32  // entries of NodeIPs and of PodCIDRs
)

// metaVersion is the version of the encoding this package writes.
//
// Layout of versions 1 and 2 (all integers one byte):
//
//	version  flags
//	len(Cluster) Cluster
//	len(Version) Version
//	len(NodeIPs)  { family(4|6) address(4|16 bytes) }...
//	len(PodCIDRs) { family(4|6) address(4|16 bytes) bits }...
//
// A later version may only append fields and define flags: a decoder
// reads the fields it knows from a newer encoding and ignores the rest, so
// agents of different versions understand each other during an upgrade.
// In a version the decoder knows, unknown flags and trailing bytes are
// errors. Version 2 defines flagRestarting; a decoder of version 1 ignores
// it (and so treats a restarting member as it did before: dead).
const metaVersion = 2

// Flags of the meta.
const (
	// flagLeaving marks the meta a member sends just before it leaves, so
	// that the others report Left, not Dead (memberlist does not tell them
	// which). Version 1.
	flagLeaving = 1 << 0
	// flagRestarting marks the meta a member sends just before it stops to
	// restart (AnnounceRestart): the others report Restarting. Version 2.
	flagRestarting = 1 << 1
)

// knownFlags are the flags each version defines.
func knownFlags(version byte) byte {
	if version == 1 {
		return flagLeaving
	}
	return flagLeaving | flagRestarting
}

// ErrMeta is wrapped by every error about an undecodable or invalid Meta.
var ErrMeta = errors.New("invalid gossip meta")

// Meta is what a member tells the others about itself. It travels in every
// alive message, so it is small: it must encode to at most MaxMetaSize bytes.
// Meta values from Members, Member and Notify are copies the caller may keep
// and modify.
type Meta struct {
	// Cluster is the cluster's name. When set, it also labels every packet
	// (memberlist's Label), so members of another cluster cannot join even
	// with the same key; it cannot change after New.
	Cluster string
	// NodeIPs are the node's addresses, to which routes to its pods point.
	NodeIPs []netip.Addr
	// PodCIDRs are the node's pod CIDRs.
	PodCIDRs []netip.Prefix
	// Version is the agent's version, for operators.
	Version string
}

// Validate checks m against the encoding's limits.
func (m Meta) Validate() error {
	_, err := m.encode(0)
	return err
}

// Clone returns a deep copy of m.
func (m Meta) Clone() Meta {
	m.NodeIPs = slices.Clone(m.NodeIPs)
	m.PodCIDRs = slices.Clone(m.PodCIDRs)
	return m
}

// Equal reports whether m and o hold the same values.
func (m Meta) Equal(o Meta) bool {
	return m.Cluster == o.Cluster && m.Version == o.Version &&
		slices.Equal(m.NodeIPs, o.NodeIPs) && slices.Equal(m.PodCIDRs, o.PodCIDRs)
}

// encode returns m in the current encoding with flags set.
func (m Meta) encode(flags byte) ([]byte, error) {
	if err := checkMetaString("cluster", m.Cluster); err != nil {
		return nil, err
	}
	if err := checkMetaString("version", m.Version); err != nil {
		return nil, err
	}
	if len(m.NodeIPs) > maxMetaList || len(m.PodCIDRs) > maxMetaList {
		return nil, fmt.Errorf("%w: %d node IPs and %d pod CIDRs: at most %d of each", ErrMeta, len(m.NodeIPs), len(m.PodCIDRs), maxMetaList)
	}
	b := make([]byte, 0, 64)
	b = append(b, metaVersion, flags, byte(len(m.Cluster)))
	b = append(b, m.Cluster...)
	b = append(b, byte(len(m.Version)))
	b = append(b, m.Version...)
	b = append(b, byte(len(m.NodeIPs)))
	for _, ip := range m.NodeIPs {
		if !ip.IsValid() || ip.Zone() != "" || ip.Is4In6() {
			return nil, fmt.Errorf("%w: node IP %q: use a plain IPv4 or IPv6 address", ErrMeta, ip)
		}
		b = appendAddr(b, ip)
	}
	b = append(b, byte(len(m.PodCIDRs)))
	for _, p := range m.PodCIDRs {
		if !p.IsValid() || p.Addr().Is4In6() || p != p.Masked() {
			return nil, fmt.Errorf("%w: pod CIDR %q: use a valid prefix with no host bits set", ErrMeta, p)
		}
		b = appendAddr(b, p.Addr())
		b = append(b, byte(p.Bits()))
	}
	if len(b) > MaxMetaSize {
		return nil, fmt.Errorf("%w: encodes to %d bytes, more than memberlist's %d: advertise fewer node IPs or pod CIDRs", ErrMeta, len(b), MaxMetaSize)
	}
	return b, nil
}

func appendAddr(b []byte, ip netip.Addr) []byte {
	if ip.Is4() {
		a := ip.As4()
		return append(append(b, 4), a[:]...)
	}
	a := ip.As16()
	return append(append(b, 6), a[:]...)
}

func checkMetaString(what, s string) error {
	if len(s) > maxMetaString {
		return fmt.Errorf("%w: %s is %d bytes, at most %d", ErrMeta, what, len(s), maxMetaString)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s %q is not UTF-8", ErrMeta, what, s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%w: %s %q holds a character that does not print", ErrMeta, what, s)
		}
	}
	return nil
}

// decodeMeta parses what a member sent as its meta: outside input. Every
// error wraps ErrMeta.
func decodeMeta(b []byte) (Meta, byte, error) {
	d := metaDecoder{b: b}
	version := d.byte()
	flags := d.byte()
	if d.err != nil {
		return Meta{}, 0, fmt.Errorf("%w: %d bytes, too short", ErrMeta, len(b))
	}
	if version == 0 {
		return Meta{}, 0, fmt.Errorf("%w: version 0", ErrMeta)
	}
	known := knownFlags(version)
	if version <= metaVersion && flags&^known != 0 {
		return Meta{}, 0, fmt.Errorf("%w: unknown flags %#x in version %d", ErrMeta, flags&^known, version)
	}
	var m Meta
	m.Cluster = d.string()
	m.Version = d.string()
	if n := int(d.byte()); d.err == nil && n > 0 {
		m.NodeIPs = make([]netip.Addr, 0, min(n, maxMetaList))
		for range n {
			m.NodeIPs = append(m.NodeIPs, d.addr())
		}
	}
	if n := int(d.byte()); d.err == nil && n > 0 {
		m.PodCIDRs = make([]netip.Prefix, 0, min(n, maxMetaList))
		for range n {
			ip := d.addr()
			bits := int(d.byte())
			if d.err == nil && bits > ip.BitLen() {
				d.err = fmt.Errorf("%w: prefix length /%d for %s", ErrMeta, bits, ip)
			}
			m.PodCIDRs = append(m.PodCIDRs, netip.PrefixFrom(ip, bits))
		}
	}
	if d.err != nil {
		return Meta{}, 0, d.err
	}
	if version <= metaVersion && len(d.b) > 0 {
		return Meta{}, 0, fmt.Errorf("%w: %d trailing bytes", ErrMeta, len(d.b))
	}
	// The same rules as for what we send, so that what we accept we could
	// also have sent.
	if err := m.Validate(); err != nil {
		return Meta{}, 0, err
	}
	return m, flags & known, nil
}

// metaDecoder reads fields off b; after the first error every read returns
// a zero value and err keeps that first error.
type metaDecoder struct {
	b   []byte
	err error
}

func (d *metaDecoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = fmt.Errorf("%w: truncated", ErrMeta)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *metaDecoder) byte() byte {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *metaDecoder) string() string {
	return string(d.take(int(d.byte())))
}

func (d *metaDecoder) addr() netip.Addr {
	switch family := d.byte(); {
	case d.err != nil:
		return netip.Addr{}
	case family == 4:
		if v := d.take(4); v != nil {
			return netip.AddrFrom4([4]byte(v))
		}
	case family == 6:
		if v := d.take(16); v != nil {
			return netip.AddrFrom16([16]byte(v))
		}
	default:
		d.err = fmt.Errorf("%w: address family %d", ErrMeta, family)
	}
	return netip.Addr{}
}
