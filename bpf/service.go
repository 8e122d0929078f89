package bpf

import (
	"errors"
	"fmt"
	"net/netip"
)

// ServiceKey is the Services map's key: one slot of a service frontend
// (address, port, protocol). Slot 0 holds the service itself (backend count
// and service ID); slots 1 to count hold its backends, so the datapath picks
// a backend with one lookup of {frontend, 1 + hash % count}.
//
// The matching C struct (24 bytes):
//
//	struct mp_service_key {
//		__u8   family;   /* MP_FAMILY_IPV4 (4) or MP_FAMILY_IPV6 (6) */
//		__u8   protocol; /* IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP */
//		__be16 dport;    /* frontend port */
//		__u8   addr[16]; /* frontend address; IPv4 in addr[0..3], the rest zero */
//		__u16  slot;     /* 0: the service; 1..count: its backends */
//		__u8   pad[2];
//	};
type ServiceKey struct {
	Family Family
	Proto  uint8
	DPort  [2]byte
	Addr   [16]byte
	Slot   uint16
	_      [2]uint8
}

// ServiceKeyFor returns the key of slot slot of the frontend fe with
// protocol proto. The zero AddrPort gives a key that Validate and so Put
// reject.
func ServiceKeyFor(fe netip.AddrPort, proto uint8, slot uint16) ServiceKey {
	fam, addr := encodeAddr(fe.Addr())
	return ServiceKey{Family: fam, Proto: proto, DPort: portBytes(fe.Port()), Addr: addr, Slot: slot}
}

// AddrPort returns the frontend, or the zero AddrPort if the family is
// unknown.
func (k ServiceKey) AddrPort() netip.AddrPort {
	a := decodeAddr(k.Family, k.Addr)
	if !a.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, portFrom(k.DPort))
}

// Validate reports whether k is a key the datapath can match: an address,
// a port and a protocol with ports.
func (k ServiceKey) Validate() error {
	if err := checkAddr(k.Family, k.Addr); err != nil {
		return fmt.Errorf("service key: %w", err)
	}
	if err := checkL4Proto(k.Proto); err != nil {
		return fmt.Errorf("service key: %w", err)
	}
	if portFrom(k.DPort) == 0 {
		return errors.New("service key: port 0")
	}
	return nil
}

// String returns e.g. "10.96.0.10:53/udp slot=0".
func (k ServiceKey) String() string {
	return fmt.Sprintf("%s/%s slot=%d", k.AddrPort(), protoName(k.Proto), k.Slot)
}

// ServiceValue is one slot of a service. In slot 0, Count is the number of
// backend slots and BackendID is 0; in slots 1 to Count, BackendID names a
// backend (the Backends map's key) and Count is 0. ServiceID is the same in
// every slot, so that the datapath can record it for reverse NAT from the
// slot it picked.
//
// The matching C struct (12 bytes):
//
//	struct mp_service_value {
//		__u32 backend_id; /* slots 1..count: the backend; slot 0: 0 */
//		__u32 service_id; /* the service's ID (reverse NAT); every slot */
//		__u16 count;      /* slot 0: number of backend slots; other slots: 0 */
//		__u8  pad[2];
//	};
type ServiceValue struct {
	BackendID uint32
	ServiceID uint32
	Count     uint16
	_         [2]uint8
}

// ServiceEntry returns the value of slot 0: the service serviceID with count
// backend slots.
func ServiceEntry(serviceID uint32, count uint16) ServiceValue {
	return ServiceValue{ServiceID: serviceID, Count: count}
}

// BackendSlot returns the value of a backend slot (1..count) of service
// serviceID.
func BackendSlot(serviceID, backendID uint32) ServiceValue {
	return ServiceValue{ServiceID: serviceID, BackendID: backendID}
}

// Validate reports whether v has a service ID and is either a service entry
// or a backend slot, not both.
func (v ServiceValue) Validate() error {
	switch {
	case v.ServiceID == 0:
		return errors.New("service value: service ID 0")
	case v.BackendID != 0 && v.Count != 0:
		return fmt.Errorf("service value: both a backend (%d) and a count (%d): slot 0 has the count, slots 1..count a backend",
			v.BackendID, v.Count)
	}
	return nil
}

// String returns "service=7 count=3" for slot 0 and "service=7 backend=42"
// for a backend slot.
func (v ServiceValue) String() string {
	if v.BackendID == 0 {
		return fmt.Sprintf("service=%d count=%d", v.ServiceID, v.Count)
	}
	return fmt.Sprintf("service=%d backend=%d", v.ServiceID, v.BackendID)
}

// BackendKey is the Backends map's key: a backend ID, unique on the node.
// The Services map's backend slots refer to it.
//
// The matching C struct (4 bytes):
//
//	struct mp_backend_key {
//		__u32 backend_id;
//	};
type BackendKey struct {
	ID uint32
}

// Validate reports whether k names a backend: ID 0 is "no backend".
func (k BackendKey) Validate() error {
	if k.ID == 0 {
		return errors.New("backend key: ID 0")
	}
	return nil
}

// String returns the ID.
func (k BackendKey) String() string {
	return fmt.Sprint(k.ID)
}

// BackendFlags are the flags of a backend (MP_BACKEND_* in C).
type BackendFlags uint8

const (
	// BackendTerminating marks a backend that is shutting down: the
	// datapath keeps its existing connections but sends it no new ones.
	BackendTerminating BackendFlags = 1 << 0

	backendKnownFlags = BackendTerminating
)

// String returns the flag names joined by "|", or "-" for none.
func (f BackendFlags) String() string {
	return flagString(uint8(f), []string{"terminating"})
}

// BackendValue is where a backend listens.
//
// The matching C struct (24 bytes):
//
//	struct mp_backend_value {
//		__u8   family;   /* MP_FAMILY_IPV4 (4) or MP_FAMILY_IPV6 (6) */
//		__u8   protocol; /* IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP */
//		__be16 port;     /* the backend's port */
//		__u8   addr[16]; /* the backend's address; IPv4 in addr[0..3], the rest zero */
//		__u8   flags;    /* MP_BACKEND_TERMINATING */
//		__u8   pad[3];
//	};
type BackendValue struct {
	Family Family
	Proto  uint8
	Port   [2]byte
	Addr   [16]byte
	Flags  BackendFlags
	_      [3]uint8
}

// BackendValueFor returns the value of a backend at ap with protocol proto
// and flags.
func BackendValueFor(ap netip.AddrPort, proto uint8, flags BackendFlags) BackendValue {
	fam, addr := encodeAddr(ap.Addr())
	return BackendValue{Family: fam, Proto: proto, Port: portBytes(ap.Port()), Addr: addr, Flags: flags}
}

// AddrPort returns the backend's address and port, or the zero AddrPort if
// the family is unknown.
func (v BackendValue) AddrPort() netip.AddrPort {
	a := decodeAddr(v.Family, v.Addr)
	if !a.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, portFrom(v.Port))
}

// Validate reports whether v is a backend the datapath can send to.
func (v BackendValue) Validate() error {
	if err := checkAddr(v.Family, v.Addr); err != nil {
		return fmt.Errorf("backend value: %w", err)
	}
	if err := checkL4Proto(v.Proto); err != nil {
		return fmt.Errorf("backend value: %w", err)
	}
	if portFrom(v.Port) == 0 {
		return errors.New("backend value: port 0")
	}
	if v.Flags&^backendKnownFlags != 0 {
		return fmt.Errorf("backend value: unknown flags %#x", uint8(v.Flags&^backendKnownFlags))
	}
	return nil
}

// String returns e.g. "10.0.1.5:8080/tcp flags=-".
func (v BackendValue) String() string {
	return fmt.Sprintf("%s/%s flags=%s", v.AddrPort(), protoName(v.Proto), v.Flags)
}
