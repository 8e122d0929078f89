package bpf

import (
	"errors"
	"fmt"
)

// Direction is the direction of traffic relative to a local endpoint
// (MP_DIR_* in C). The zero value is invalid, so that a forgotten field
// never turns into a rule.
type Direction uint8

const (
	// Ingress is traffic into the endpoint; the remote identity is the
	// source's.
	Ingress Direction = 1
	// Egress is traffic out of the endpoint; the remote identity is the
	// destination's.
	Egress Direction = 2
)

// String returns "ingress", "egress" or the number.
func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// Verdict is what a policy entry decides (MP_VERDICT_* in C). The zero value
// is invalid; the datapath treats an entry it does not understand as Deny.
type Verdict uint8

const (
	// Allow lets the traffic pass.
	Allow Verdict = 1
	// Deny drops the traffic, whatever else allows it.
	Deny Verdict = 2
)

// String returns "allow", "deny" or the number.
func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// The prefix lengths of a PolicyKey, in bits of its LPM data.
const (
	// policyStaticBits covers endpoint ID, identity and direction: matched
	// by every entry. A key of this length matches any protocol and port.
	policyStaticBits = 32 + 32 + 8
	// policyProtoBits adds the protocol: any port of one protocol.
	policyProtoBits = policyStaticBits + 8
	// policyFullBits adds all 16 port bits: one port; the datapath's
	// lookups use this length.
	policyFullBits = policyProtoBits + 16
)

// PolicyKey is the Policy map's key, in an LPM trie: one local endpoint, one
// direction, one remote identity (0: any), and a protocol and destination
// port prefix, each of which may be left out.
//
// The matching C struct (16 bytes):
//
//	struct mp_policy_key {
//		__u32  prefixlen;   /* 72: any protocol; 80: any port of protocol; 80+n: port prefix of n bits */
//		__u32  endpoint_id; /* the local endpoint (EndpointValue.endpoint_id) */
//		__u32  identity;    /* the remote security identity; 0: any identity */
//		__u8   direction;   /* MP_DIR_INGRESS (1) or MP_DIR_EGRESS (2) */
//		__u8   protocol;    /* IP protocol; 0 when prefixlen is 72 */
//		__be16 dport;       /* destination port, or the first port of a range; bits past the prefix zero */
//	};
//
// The field order is what makes wildcards prefixes: the always-matched
// fields come first, then the protocol, then the port, most significant bit
// first (big-endian). A port range is written as the few port prefixes that
// PortPrefixes returns. Endpoint ID and identity are in host byte order:
// they are always matched whole, so their byte order does not matter to the
// trie.
//
// # Lookup rule
//
// For a packet of local endpoint E in direction D, remote address A (the
// destination for egress, after service translation; the source for
// ingress) with identity R (the ipcache's longest-prefix match of A,
// world if none), protocol P and destination port T (0 for protocols
// without ports), the datapath does two lookups with full-length keys
// (prefixlen 96, see PolicyLookupKey):
//
//  1. {E, R, D, P, T}: entries for the remote's own identity;
//  2. {E, 0, D, P, T}: entries for any identity.
//
// Each lookup finds the most specific entry: the exact port, else the
// narrowest port range, else any port of P, else any protocol. Then:
//
//   - if either lookup found Deny, the packet is dropped;
//   - else if either found Allow, it passes;
//   - else if E does not enforce policy in D (EndpointPolicyIngress,
//     EndpointPolicyEgress), it passes;
//   - else if the CIDR map (see CIDRValue) has a prefix that contains A,
//     and the longest one's identity C is not R, a third lookup
//     3. {E, C, D, P, T} decides: Allow passes, anything else drops;
//   - else it is dropped.
//
// The third lookup is how an ipBlock selects the addresses inside it
// whatever their own identity, pods' included, while selectors keep
// matching identities: it costs one CIDR map lookup, and at most one more
// Policy map lookup, for a new connection that the first two did not
// allow, and nothing for one they allowed. A Deny for a CIDR identity
// therefore drops only what nothing else allowed (NetworkPolicy has no
// deny rules; the agent writes none). For an address outside the cluster
// C is usually R already (the ipcache holds the same prefixes), and the
// third lookup is skipped.
//
// Because a lookup returns only the most specific entry, an Allow that is
// more specific than a Deny for the same identity hides the Deny; whoever
// writes the map must write such a Deny over the Allow's prefix too.
type PolicyKey struct {
	PrefixLen  uint32
	EndpointID uint32
	Identity   uint32
	Direction  Direction
	Proto      uint8
	DPort      [2]byte
}

// PolicyKeyFor returns the key of a policy entry: for local endpoint
// endpointID in direction dir, remote identity remote (0: any), protocol
// proto (ProtoAny: any protocol, then port and portPrefixBits must be 0) and
// the port prefix of portPrefixBits bits (0: any port, 16: exactly port)
// starting at port. For protocols without ports (neither TCP, UDP nor SCTP)
// port and portPrefixBits must be 0. Use PortPrefixes for a port range.
func PolicyKeyFor(endpointID uint32, dir Direction, remote uint32, proto uint8, port uint16, portPrefixBits int) (PolicyKey, error) {
	k := PolicyKey{EndpointID: endpointID, Identity: remote, Direction: dir, Proto: proto, DPort: portBytes(port)}
	switch {
	case portPrefixBits < 0 || portPrefixBits > 16:
		return PolicyKey{}, fmt.Errorf("policy key: port prefix of %d bits: want 0-16", portPrefixBits)
	case proto == ProtoAny && portPrefixBits != 0:
		return PolicyKey{}, fmt.Errorf("policy key: any protocol with a /%d port prefix: both must be 0 (a port needs a protocol)", portPrefixBits)
	case proto == ProtoAny:
		k.PrefixLen = policyStaticBits
	default:
		k.PrefixLen = uint32(policyProtoBits + portPrefixBits)
	}
	if err := k.Validate(); err != nil {
		return PolicyKey{}, err
	}
	return k, nil
}

// PolicyLookupKey returns the full-length key the datapath looks up for a
// packet: see the lookup rule on PolicyKey.
func PolicyLookupKey(endpointID uint32, dir Direction, remote uint32, proto uint8, port uint16) PolicyKey {
	return PolicyKey{
		PrefixLen:  policyFullBits,
		EndpointID: endpointID,
		Identity:   remote,
		Direction:  dir,
		Proto:      proto,
		DPort:      portBytes(port),
	}
}

// AnyProto reports whether k matches every protocol (and so every port).
func (k PolicyKey) AnyProto() bool {
	return k.PrefixLen <= policyStaticBits
}

// PortPrefix returns the key's port prefix: the first port and the number
// of prefix bits (0: any port). It is 0, 0 for a key that matches any
// protocol.
func (k PolicyKey) PortPrefix() (port uint16, bits int) {
	if k.PrefixLen <= policyProtoBits {
		return 0, 0
	}
	return portFrom(k.DPort), int(k.PrefixLen) - policyProtoBits
}

// Validate reports whether k is a key the datapath can match: a direction,
// a prefix length that ends at a field boundary or inside the port, and no
// bits set past the prefix.
func (k PolicyKey) Validate() error {
	if k.Direction != Ingress && k.Direction != Egress {
		return fmt.Errorf("policy key: %s: want ingress or egress", k.Direction)
	}
	port := portFrom(k.DPort)
	switch {
	case k.PrefixLen == policyStaticBits:
		if k.Proto != ProtoAny || port != 0 {
			return fmt.Errorf("policy key: any-protocol key (prefixlen %d) with protocol %s port %d: both must be 0",
				k.PrefixLen, protoName(k.Proto), port)
		}
	case k.PrefixLen >= policyProtoBits && k.PrefixLen <= policyFullBits:
		bits := int(k.PrefixLen) - policyProtoBits
		if k.Proto == ProtoAny {
			return errors.New("policy key: protocol 0 with a port: use ProtoAny without a port to match any protocol")
		}
		if checkL4Proto(k.Proto) != nil && (bits != 0 || port != 0) {
			return fmt.Errorf("policy key: protocol %s has no ports: want port 0 with 0 prefix bits", protoName(k.Proto))
		}
		if hostBitsSet(k.DPort[:], bits) {
			return fmt.Errorf("policy key: port %d has bits set past its /%d prefix: use PortPrefixes", port, bits)
		}
	default:
		return fmt.Errorf("policy key: prefixlen %d: want %d (any protocol) or %d-%d (protocol and port prefix)",
			k.PrefixLen, policyStaticBits, policyProtoBits, policyFullBits)
	}
	return nil
}

// String returns e.g. "ep=12 ingress identity=any tcp/8080-8087".
func (k PolicyKey) String() string {
	remote := "any"
	if k.Identity != 0 {
		remote = fmt.Sprint(k.Identity)
	}
	l4 := "any"
	if !k.AnyProto() {
		l4 = protoName(k.Proto)
		if port, bits := k.PortPrefix(); bits > 0 {
			pp := PortPrefix{Port: port, Bits: bits}
			if bits == 16 {
				l4 += fmt.Sprintf("/%d", port)
			} else {
				l4 += fmt.Sprintf("/%d-%d", pp.First(), pp.Last())
			}
		}
	}
	if k.Validate() != nil {
		return fmt.Sprintf("invalid(prefixlen=%d ep=%d %s identity=%s proto=%d dport=%d)",
			k.PrefixLen, k.EndpointID, k.Direction, remote, k.Proto, portFrom(k.DPort))
	}
	return fmt.Sprintf("ep=%d %s identity=%s %s", k.EndpointID, k.Direction, remote, l4)
}

// PolicyValue is a policy entry's decision.
//
// The matching C struct (8 bytes):
//
//	struct mp_policy_value {
//		__u32 cookie;  /* names the rule that wrote the entry, for flow logs */
//		__u8  verdict; /* MP_VERDICT_ALLOW (1) or MP_VERDICT_DENY (2) */
//		__u8  pad[3];
//	};
type PolicyValue struct {
	Cookie  uint32
	Verdict Verdict
	_       [3]uint8
}

// Validate reports whether v has a verdict.
func (v PolicyValue) Validate() error {
	if v.Verdict != Allow && v.Verdict != Deny {
		return fmt.Errorf("policy value: %s: want allow or deny", v.Verdict)
	}
	return nil
}

// String returns e.g. "allow cookie=0x2a".
func (v PolicyValue) String() string {
	return fmt.Sprintf("%s cookie=%#x", v.Verdict, v.Cookie)
}

// PortPrefix is an aligned block of 2^(16-Bits) ports that starts at Port:
// Bits 16 is the single port Port, Bits 0 every port.
type PortPrefix struct {
	Port uint16
	Bits int
}

// First returns the block's first port.
func (p PortPrefix) First() uint16 { return p.Port }

// Last returns the block's last port.
func (p PortPrefix) Last() uint16 {
	return p.Port + uint16(1<<(16-p.Bits)-1)
}

// PortPrefixes decomposes the port range [from, to] into the fewest aligned
// port prefixes, in ascending order, that cover each port of the range
// exactly once and nothing else (at most 30). It fails if from > to.
func PortPrefixes(from, to uint16) ([]PortPrefix, error) {
	if from > to {
		return nil, fmt.Errorf("port range %d-%d: the first port is past the last", from, to)
	}
	var out []PortPrefix
	// uint32 so that stepping past 65535 ends the loop instead of wrapping.
	for start, end := uint32(from), uint32(to); start <= end; {
		// The largest block that starts at start (alignment) and ends by end.
		size := uint32(1) << 16
		for start%size != 0 || start+size-1 > end {
			size >>= 1
		}
		bits := 16
		for s := size; s > 1; s >>= 1 {
			bits--
		}
		out = append(out, PortPrefix{Port: uint16(start), Bits: bits})
		start += size
	}
	return out, nil
}
