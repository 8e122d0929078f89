package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// EndpointKey is the Endpoints map's key: the IP of a pod on this node.
//
// The matching C struct (20 bytes):
//
//	struct mp_endpoint_key {
//		__u8 family;   /* MP_FAMILY_IPV4 (4) or MP_FAMILY_IPV6 (6) */
//		__u8 pad[3];   /* zero */
//		__u8 addr[16]; /* IPv4 in addr[0..3], the rest zero */
//	};
type EndpointKey struct {
	Family Family
	_      [3]uint8
	Addr   [16]byte
}

// EndpointKeyFor returns the key for a pod IP. The zero Addr gives the zero
// key, which Validate and so Put reject.
func EndpointKeyFor(a netip.Addr) EndpointKey {
	fam, addr := encodeAddr(a)
	return EndpointKey{Family: fam, Addr: addr}
}

// IP returns the key's address, or the zero Addr if the family is unknown.
func (k EndpointKey) IP() netip.Addr {
	return decodeAddr(k.Family, k.Addr)
}

// Validate reports whether k is a key the datapath can match.
func (k EndpointKey) Validate() error {
	if err := checkAddr(k.Family, k.Addr); err != nil {
		return fmt.Errorf("endpoint key: %w", err)
	}
	return nil
}

// String returns the IP, or the raw fields of an invalid key.
func (k EndpointKey) String() string {
	if k.Validate() != nil {
		return fmt.Sprintf("invalid(family=%s addr=%x)", k.Family, k.Addr)
	}
	return k.IP().String()
}

// EndpointFlags are the flags of a local endpoint (MP_EP_* in C).
type EndpointFlags uint8

const (
	// EndpointPolicyIngress means policy is enforced on traffic into the
	// endpoint: what the Policy map does not allow is dropped. Without it,
	// no policy selects the endpoint for ingress and everything passes.
	EndpointPolicyIngress EndpointFlags = 1 << 0
	// EndpointPolicyEgress is EndpointPolicyIngress for traffic out of the
	// endpoint.
	EndpointPolicyEgress EndpointFlags = 1 << 1

	endpointKnownFlags = EndpointPolicyIngress | EndpointPolicyEgress
)

// String returns the flag names joined by "|", or "-" for none.
func (f EndpointFlags) String() string {
	return flagString(uint8(f), []string{"policy-ingress", "policy-egress"})
}

// EndpointValue is what the datapath needs to deliver to and police a local
// pod.
//
// The matching C struct (28 bytes):
//
//	struct mp_endpoint_value {
//		__u32 endpoint_id; /* the endpoint's ID: the Policy map's endpoint_id */
//		__u32 ifindex;     /* the host side of the pod's veth */
//		__u32 identity;    /* the pod's security identity */
//		__u8  flags;       /* MP_EP_POLICY_INGRESS | MP_EP_POLICY_EGRESS */
//		__u8  pad;
//		__u8  pod_mac[6];  /* the pod side of the veth */
//		__u8  node_mac[6]; /* the host side of the veth */
//		__u8  pad2[2];
//	};
type EndpointValue struct {
	EndpointID uint32
	IfIndex    uint32
	Identity   uint32
	Flags      EndpointFlags
	_          uint8
	PodMAC     [6]byte
	NodeMAC    [6]byte
	_          [2]uint8
}

// MAC returns b as a 6-byte MAC, or an error if b is not one (an EUI-64 or
// an empty address).
func MAC(b net.HardwareAddr) ([6]byte, error) {
	if len(b) != 6 {
		return [6]byte{}, fmt.Errorf("mac %q: want 6 bytes, have %d", b, len(b))
	}
	return [6]byte(b), nil
}

// Validate reports whether v is a value the datapath can use: an endpoint
// ID, an ifindex and only known flags.
func (v EndpointValue) Validate() error {
	switch {
	case v.EndpointID == 0:
		return errors.New("endpoint value: endpoint ID 0")
	case v.IfIndex == 0:
		return errors.New("endpoint value: ifindex 0")
	case v.Flags&^endpointKnownFlags != 0:
		return fmt.Errorf("endpoint value: unknown flags %#x", uint8(v.Flags&^endpointKnownFlags))
	}
	return nil
}

// String returns e.g. "id=12 ifindex=7 identity=65792 flags=policy-ingress
// pod-mac=02:00:00:00:00:01 node-mac=02:00:00:00:00:02".
func (v EndpointValue) String() string {
	return fmt.Sprintf("id=%d ifindex=%d identity=%d flags=%s pod-mac=%s node-mac=%s",
		v.EndpointID, v.IfIndex, v.Identity, v.Flags,
		net.HardwareAddr(v.PodMAC[:]), net.HardwareAddr(v.NodeMAC[:]))
}
