package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Family is the address family of an address stored in a map. The datapath
// defines the same numbers (MP_FAMILY_IPV4, MP_FAMILY_IPV6).
//
// Every address in a key or value is 16 bytes plus a Family byte. An IPv4
// address sits in the first 4 bytes and the other 12 are zero; it is NOT
// stored v4-mapped, so an IPv4 prefix of n bits is n bits of the address
// field. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) stays IPv6, as netip
// sees it: the datapath meets it only in IPv6 packets. Call Unmap first to
// mean IPv4.
type Family uint8

const (
	// FamilyNone marks an absent address (for example an IPCacheValue
	// without a node address). It is never valid in a key.
	FamilyNone Family = 0
	// FamilyIPv4 marks an IPv4 address in the first 4 address bytes.
	FamilyIPv4 Family = 4
	// FamilyIPv6 marks an IPv6 address in all 16 address bytes.
	FamilyIPv6 Family = 6
)

// String returns "ipv4", "ipv6", "none" or the number.
func (f Family) String() string {
	switch f {
	case FamilyNone:
		return "none"
	case FamilyIPv4:
		return "ipv4"
	case FamilyIPv6:
		return "ipv6"
	}
	return fmt.Sprintf("family(%d)", uint8(f))
}

// addrBits is the width in bits of an address of family f, 0 if f is not an
// address family.
func (f Family) addrBits() int {
	switch f {
	case FamilyIPv4:
		return 32
	case FamilyIPv6:
		return 128
	}
	return 0
}

// encodeAddr returns a's family and its 16 stored bytes; the zero Addr gives
// FamilyNone and zeros.
func encodeAddr(a netip.Addr) (Family, [16]byte) {
	var b [16]byte
	switch {
	case a.Is4():
		v4 := a.As4()
		copy(b[:], v4[:])
		return FamilyIPv4, b
	case a.Is6():
		return FamilyIPv6, a.As16()
	}
	return FamilyNone, b
}

// decodeAddr is the inverse of encodeAddr: the zero Addr when f is not an
// address family.
func decodeAddr(f Family, b [16]byte) netip.Addr {
	switch f {
	case FamilyIPv4:
		return netip.AddrFrom4([4]byte(b[:4]))
	case FamilyIPv6:
		return netip.AddrFrom16(b)
	}
	return netip.Addr{}
}

// checkAddr reports whether f and b are an address the datapath can use:
// a known family, and for IPv4 zero in bytes 4-15.
func checkAddr(f Family, b [16]byte) error {
	switch f {
	case FamilyIPv4:
		if [12]byte(b[4:]) != [12]byte{} {
			return fmt.Errorf("ipv4 address %v has non-zero bytes 4-15", b)
		}
		return nil
	case FamilyIPv6:
		return nil
	}
	return fmt.Errorf("address family %s: want ipv4 or ipv6", f)
}

// Port numbers in keys and values are big-endian (network byte order, __be16
// in C), as the datapath reads them from packets. Go holds them as [2]byte so
// that the byte order is the same on every host.

func portBytes(p uint16) [2]byte {
	return [2]byte(binary.BigEndian.AppendUint16(nil, p))
}

func portFrom(b [2]byte) uint16 {
	return binary.BigEndian.Uint16(b[:])
}

// Protocols, as IP protocol numbers (the IPv4 protocol / IPv6 next header).
const (
	// ProtoAny matches every protocol in a policy key. It is never a
	// service's or backend's protocol.
	ProtoAny uint8 = 0
	// ProtoTCP is TCP.
	ProtoTCP uint8 = 6
	// ProtoUDP is UDP.
	ProtoUDP uint8 = 17
	// ProtoSCTP is SCTP.
	ProtoSCTP uint8 = 132
)

// protoName returns "tcp", "udp", "sctp", "any" or the number.
func protoName(p uint8) string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoSCTP:
		return "sctp"
	}
	return fmt.Sprintf("proto(%d)", p)
}

// checkL4Proto reports whether p is a protocol with ports that a service or
// backend can use.
func checkL4Proto(p uint8) error {
	switch p {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
		return nil
	}
	return fmt.Errorf("protocol %s: want tcp (6), udp (17) or sctp (132)", protoName(p))
}
