package bpf

import (
	"fmt"
	"net/netip"
	"time"
)

// CTDir is the kind of a conntrack entry (MP_CT_* in C): the direction of
// the connection relative to the local endpoint whose program made it.
type CTDir uint8

const (
	// CTOut is a connection the endpoint opened, made by from_pod for the
	// tuple as it leaves the pod, after service translation.
	CTOut CTDir = 1
	// CTIn is a connection into the endpoint, made by to_pod for the tuple
	// as it enters the pod.
	CTIn CTDir = 2
	// CTService remembers the backend picked for a connection to a service:
	// its key is the tuple before translation (destination: the frontend),
	// its BackendID the backend. It holds while the CTOut entry of the
	// translated tuple lives.
	CTService CTDir = 3
)

// String returns "out", "in", "service" or the number.
func (d CTDir) String() string {
	switch d {
	case CTOut:
		return "out"
	case CTIn:
		return "in"
	case CTService:
		return "service"
	}
	return fmt.Sprintf("ctdir(%d)", uint8(d))
}

// CTKey is the conntrack map's key: a connection's tuple as the packet that
// opened it carried it, and the entry's kind.
//
// The matching C struct (40 bytes):
//
//	struct mp_ct_key {
//		__u8   family;    /* MP_FAMILY_IPV4 (the datapath tracks IPv4 only, for now) */
//		__u8   protocol;  /* IP protocol */
//		__u8   dir;       /* MP_CT_OUT (1), MP_CT_IN (2) or MP_CT_SERVICE (3) */
//		__u8   pad;
//		__u8   saddr[16]; /* IPv4 in saddr[0..3], the rest zero */
//		__u8   daddr[16];
//		__be16 sport;     /* TCP, UDP, SCTP ports; ICMP echo: the identifier as a request's sport, a reply's dport; else 0 */
//		__be16 dport;
//	};
//
// Addresses take 16 bytes so that IPv6 needs no new map.
type CTKey struct {
	Family Family
	Proto  uint8
	Dir    CTDir
	_      uint8
	SAddr  [16]byte
	DAddr  [16]byte
	SPort  [2]byte
	DPort  [2]byte
}

// CTKeyFor returns the key of kind dir for a connection from src to dst
// with protocol proto.
func CTKeyFor(dir CTDir, proto uint8, src, dst netip.AddrPort) CTKey {
	fam, s := encodeAddr(src.Addr())
	_, d := encodeAddr(dst.Addr())
	return CTKey{Family: fam, Proto: proto, Dir: dir, SAddr: s, DAddr: d, SPort: portBytes(src.Port()), DPort: portBytes(dst.Port())}
}

// Src returns the tuple's source, the zero AddrPort if the family is
// unknown.
func (k CTKey) Src() netip.AddrPort { return addrPort(k.Family, k.SAddr, k.SPort) }

// Dst returns the tuple's destination, the zero AddrPort if the family is
// unknown.
func (k CTKey) Dst() netip.AddrPort { return addrPort(k.Family, k.DAddr, k.DPort) }

// String returns e.g. "out tcp 10.0.1.5:41234 -> 10.0.2.7:8080".
func (k CTKey) String() string {
	return fmt.Sprintf("%s %s %s -> %s", k.Dir, protoName(k.Proto), k.Src(), k.Dst())
}

func addrPort(f Family, a [16]byte, p [2]byte) netip.AddrPort {
	addr := decodeAddr(f, a)
	if !addr.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(addr, portFrom(p))
}

// CTFlags are the state flags of a conntrack entry (MP_CT_* in C).
type CTFlags uint8

const (
	// CTSeenReply means a packet went the other way; a TCP connection with it
	// and neither FIN nor RST is established.
	CTSeenReply CTFlags = 1 << 0
	// CTFinOrig means the side that opened the connection sent a FIN.
	CTFinOrig CTFlags = 1 << 1
	// CTFinReply means the other side sent a FIN.
	CTFinReply CTFlags = 1 << 2
	// CTRST means either side sent a RST.
	CTRST CTFlags = 1 << 3
)

// String returns the flag names joined by "|", or "-" for none.
func (f CTFlags) String() string {
	return flagString(uint8(f), []string{"seen-reply", "fin-orig", "fin-reply", "rst"})
}

// The lifetimes of conntrack entries: an entry whose last packet is older
// counts as absent, and the datapath treats the next packet of its tuple
// as a new connection (policy again). LRU eviction, not a sweep, removes
// expired entries.
const (
	CTLifetimeTCPEstablished = 6 * time.Hour    // seen reply, no FIN or RST
	CTLifetimeTCPOpening     = 60 * time.Second // no reply yet, or a FIN from one side
	CTLifetimeTCPClosed      = 10 * time.Second // FIN from both sides, or RST
	CTLifetimeOther          = 60 * time.Second // UDP, ICMP and other protocols
)

// CTLifetime returns how long an entry with flags of protocol proto lives
// after its last packet, as the datapath computes it.
func CTLifetime(proto uint8, flags CTFlags) time.Duration {
	switch {
	case proto != ProtoTCP:
		return CTLifetimeOther
	case flags&CTRST != 0 || flags&(CTFinOrig|CTFinReply) == CTFinOrig|CTFinReply:
		return CTLifetimeTCPClosed
	case flags&(CTFinOrig|CTFinReply) != 0:
		return CTLifetimeTCPOpening
	case flags&CTSeenReply != 0:
		return CTLifetimeTCPEstablished
	}
	return CTLifetimeTCPOpening
}

// CTValue is the state of a tracked connection.
//
// The matching C struct (56 bytes):
//
//	struct mp_ct_value {
//		__u64  created;      /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the entry was made */
//		__u64  last_seen;    /* bpf_ktime_get_ns() of the last packet */
//		__u64  packets;      /* packets of both directions */
//		__u64  bytes;        /* bytes of both directions, Ethernet header included */
//		__u32  backend_id;   /* MP_CT_SERVICE, and MP_CT_OUT of a translated connection: the backend; else 0 */
//		__u8   flags;        /* MP_CT_SEEN_REPLY | MP_CT_FIN_ORIG | MP_CT_FIN_REPLY | MP_CT_RST */
//		__u8   nat_family;   /* family of nat_addr; 0: replies are not translated */
//		__be16 nat_port;     /* MP_CT_OUT of a translated connection: the frontend's port */
//		__u8   nat_addr[16]; /* and its address, the source replies get back */
//	};
//
// SERVICE entries fill only created, last_seen (both at creation) and
// backend_id.
type CTValue struct {
	Created   uint64
	LastSeen  uint64
	Packets   uint64
	Bytes     uint64
	BackendID uint32
	Flags     CTFlags
	NATFamily Family
	NATPort   [2]byte
	NATAddr   [16]byte
}

// NAT returns the frontend that replies are translated back to, or the
// zero AddrPort if none.
func (v CTValue) NAT() netip.AddrPort { return addrPort(v.NATFamily, v.NATAddr, v.NATPort) }

// Expired reports whether the entry, of protocol proto, has expired at
// now, a CLOCK_MONOTONIC time in nanoseconds (as the datapath's
// bpf_ktime_get_ns).
func (v CTValue) Expired(proto uint8, now uint64) bool {
	return int64(now-v.LastSeen) > int64(CTLifetime(proto, v.Flags))
}

// String returns e.g. "flags=seen-reply packets=12 bytes=3400 nat=10.96.0.10:80 backend=7".
func (v CTValue) String() string {
	s := fmt.Sprintf("flags=%s packets=%d bytes=%d", v.Flags, v.Packets, v.Bytes)
	if nat := v.NAT(); nat.IsValid() {
		s += " nat=" + nat.String()
	}
	if v.BackendID != 0 {
		s += fmt.Sprintf(" backend=%d", v.BackendID)
	}
	return s
}
