package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// FlowVerdict is what the datapath did with a flow's packet (MP_FLOW_* in
// C).
type FlowVerdict uint8

const (
	// Forwarded means the packet passed (and opened a connection).
	Forwarded FlowVerdict = 1
	// Dropped means the packet was dropped; Flow.Reason says why.
	Dropped FlowVerdict = 2
)

// String returns "forwarded", "dropped" or the number.
func (v FlowVerdict) String() string {
	switch v {
	case Forwarded:
		return "forwarded"
	case Dropped:
		return "dropped"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// DropReason says why the datapath dropped a packet (MP_DROP_* in C). The
// numbers are stable: flow logs and metrics of older agents use them.
type DropReason uint8

const (
	// NotDropped is the reason of a forwarded packet (Counter.Reason 0).
	NotDropped DropReason = 0
	// DropPolicyDenied is a new connection that policy does not allow.
	DropPolicyDenied DropReason = 1
	// DropSpoofedSource is a packet a pod sent from an address that is
	// not its own (not a local endpoint's, or one behind another veth).
	DropSpoofedSource DropReason = 2
	// DropUnknownEndpoint is a packet for an address that is not an
	// endpoint behind the veth it leaves through.
	DropUnknownEndpoint DropReason = 3
	// DropNoBackends is a connection to a service frontend with no
	// usable backend.
	DropNoBackends DropReason = 4
	// DropCTFull is a new connection the conntrack map refused.
	DropCTFull DropReason = 5
	// DropMalformed is a packet with a truncated or invalid IPv4 or L4
	// header.
	DropMalformed DropReason = 6
	// DropUnsupportedL3 is an IPv6 packet, which the datapath cannot
	// police yet.
	DropUnsupportedL3 DropReason = 7
	// DropUnsupportedNAT is a translation the datapath cannot do: an SCTP
	// service whose backend port differs from the frontend's (SCTP's
	// CRC32c covers the ports).
	DropUnsupportedNAT DropReason = 8
	// DropNATFailed is a packet the datapath could not rewrite (the kernel
	// could not make it writable).
	DropNATFailed DropReason = 9
	// DropNoTunnelEndpoint is a packet routed into the tunnel whose
	// destination has no remote node in the ipcache (tunnel mode).
	DropNoTunnelEndpoint DropReason = 10
	// DropTunnelFailed is a packet the kernel would not give tunnel
	// metadata (bpf_skb_set_tunnel_key failed).
	DropTunnelFailed DropReason = 11
	// DropTunnelSource is a packet out of the tunnel whose outer source
	// is not another node's address in the ipcache (identity
	// remote-node): not from a node of the cluster.
	DropTunnelSource DropReason = 12
)

// maxDropReason is the number of counter slots per direction
// (MP_REASON_SLOTS in C): every reason must stay below it.
const maxDropReason = 32

// String returns the reason's words, e.g. "policy denied", "none" for
// NotDropped, or the number.
func (r DropReason) String() string {
	switch r {
	case NotDropped:
		return "none"
	case DropPolicyDenied:
		return "policy denied"
	case DropSpoofedSource:
		return "source not of this endpoint"
	case DropUnknownEndpoint:
		return "unknown endpoint"
	case DropNoBackends:
		return "service has no backends"
	case DropCTFull:
		return "conntrack full"
	case DropMalformed:
		return "malformed"
	case DropUnsupportedL3:
		return "unsupported L3"
	case DropUnsupportedNAT:
		return "unsupported translation"
	case DropNATFailed:
		return "translation failed"
	case DropNoTunnelEndpoint:
		return "no tunnel endpoint"
	case DropTunnelFailed:
		return "tunnel encapsulation failed"
	case DropTunnelSource:
		return "tunnel source not a node"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Flow is one flow event: a dropped packet, or the first packet of a
// connection that the datapath forwarded (and began to track). Packets of
// known connections make no events, as in Cilium's monitor aggregation;
// Counters counts every packet.
type Flow struct {
	// Time is bpf_ktime_get_ns() when the event was made: CLOCK_MONOTONIC
	// nanoseconds, which stop while the machine is suspended.
	Time      uint64
	Verdict   FlowVerdict
	Reason    DropReason // NotDropped when forwarded
	Direction Direction  // relative to the endpoint
	Proto     uint8
	// Src and Dst are the packet's addresses and ports after service
	// translation (Dst is the backend); ports are 0 for protocols without
	// them, ICMP included. Both are the zero AddrPort for a packet that
	// was too malformed to read them.
	Src, Dst netip.AddrPort
	// SrcIdentity and DstIdentity are the security identities: the
	// endpoint's and the remote's (from the ipcache; world if it has
	// none). 0 where the datapath had not looked one up before it dropped
	// the packet (for example a spoofed source).
	SrcIdentity, DstIdentity uint32
	// EndpointID is the local endpoint's (0 if it was not found) and
	// IfIndex the host veth the packet crossed.
	EndpointID, IfIndex uint32
	// Service is the frontend the packet was sent to, when it was
	// translated to a backend (or dropped for want of one); the zero
	// AddrPort otherwise.
	Service  netip.AddrPort
	TCPFlags uint8
	// Reply marks a packet of the reply direction of a connection (drops
	// while translating a reply).
	Reply bool
}

// flowRecord is the flow event the datapath writes to the mp_flows ring
// buffer.
//
// The matching C struct (88 bytes):
//
//	struct mp_flow {
//		__u64  ktime;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
//		__u8   verdict;      /* MP_FLOW_FORWARDED (1) or MP_FLOW_DROPPED (2) */
//		__u8   reason;       /* MP_DROP_*; 0 when forwarded */
//		__u8   direction;    /* MP_DIR_INGRESS (1) or MP_DIR_EGRESS (2), relative to the endpoint */
//		__u8   family;       /* of saddr and daddr; 0: not read */
//		__u8   protocol;
//		__u8   tcp_flags;
//		__u8   is_reply;
//		__u8   svc_family;   /* family of svc_addr; 0: not a service */
//		__u8   saddr[16];
//		__u8   daddr[16];
//		__be16 sport;        /* 0 for protocols without ports */
//		__be16 dport;
//		__u32  src_identity;
//		__u32  dst_identity;
//		__u32  endpoint_id;
//		__u32  ifindex;
//		__u8   svc_addr[16]; /* the service frontend */
//		__be16 svc_port;
//		__u8   pad[2];
//	};
type flowRecord struct {
	KTime       uint64
	Verdict     FlowVerdict
	Reason      DropReason
	Direction   Direction
	Family      Family
	Proto       uint8
	TCPFlags    uint8
	IsReply     uint8
	SvcFamily   Family
	SAddr       [16]byte
	DAddr       [16]byte
	SPort       [2]byte
	DPort       [2]byte
	SrcIdentity uint32
	DstIdentity uint32
	EndpointID  uint32
	IfIndex     uint32
	SvcAddr     [16]byte
	SvcPort     [2]byte
	_           [2]uint8
}

// flowRecordSize is the size of a flow event: TestABISizes pins it.
const flowRecordSize = 88

func (r *flowRecord) flow() Flow {
	return Flow{
		Time:        r.KTime,
		Verdict:     r.Verdict,
		Reason:      r.Reason,
		Direction:   r.Direction,
		Proto:       r.Proto,
		Src:         addrPort(r.Family, r.SAddr, r.SPort),
		Dst:         addrPort(r.Family, r.DAddr, r.DPort),
		SrcIdentity: r.SrcIdentity,
		DstIdentity: r.DstIdentity,
		EndpointID:  r.EndpointID,
		IfIndex:     r.IfIndex,
		Service:     addrPort(r.SvcFamily, r.SvcAddr, r.SvcPort),
		TCPFlags:    r.TCPFlags,
		Reply:       r.IsReply != 0,
	}
}

// FlowFlushInterval is how often a FlowReader drains the ring when the
// datapath has not woken it: the longest an event waits to be read.
const FlowFlushInterval = 50 * time.Millisecond

// FlowReader reads flow events from the datapath's ring buffer. Read may
// be called from one goroutine while Close is called from another.
//
// The ring buffer has one read position, kept in the pinned map: two
// readers at once (two agents by mistake) would each see part of the
// events, and a new agent's reader starts where the old one stopped.
//
// The datapath wakes the reader only once 32 KiB of events wait (a
// wake-up per event would cost the agent more CPU than the event), so
// Read also drains the ring every FlowFlushInterval: an event waits at
// most that long.
type FlowReader struct {
	m   *ebpf.Map // a clone of the ring buffer's fd, owned by the reader
	rd  *ringbuf.Reader
	rec ringbuf.Record // Read's buffer, reused: Read is not concurrent

	closeOnce sync.Once
	closeErr  error
}

func newFlowReader(ring *ebpf.Map) (*FlowReader, error) {
	// The reader's own fd: the ring's epoll registration must outlive the
	// Datapath's fd, which Close may close first.
	m, err := ring.Clone()
	if err != nil {
		return nil, fmt.Errorf("flows: %w", err)
	}
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		_ = m.Close()
		return nil, fmt.Errorf("flows: %w", classify(err))
	}
	return &FlowReader{m: m, rd: rd}, nil
}

// Read blocks until the next flow event and returns it. After Close it
// returns an error wrapping os.ErrClosed.
func (r *FlowReader) Read() (Flow, error) {
	for {
		r.rd.SetDeadline(time.Now().Add(FlowFlushInterval))
		err := r.rd.ReadInto(&r.rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue // nothing waiting: poll again
		}
		if errors.Is(err, os.ErrClosed) {
			return Flow{}, fmt.Errorf("read flow: %w", os.ErrClosed)
		}
		if err != nil {
			return Flow{}, fmt.Errorf("read flow: %w", err)
		}
		break
	}
	f, err := decodeFlow(r.rec.RawSample)
	if err != nil {
		return Flow{}, fmt.Errorf("read flow: %w", err)
	}
	return f, nil
}

// decodeFlow decodes a flow event as the datapath writes it.
func decodeFlow(b []byte) (Flow, error) {
	if len(b) < flowRecordSize {
		return Flow{}, fmt.Errorf("event of %d bytes, want %d", len(b), flowRecordSize)
	}
	var fr flowRecord
	if _, err := binary.Decode(b[:flowRecordSize], binary.NativeEndian, &fr); err != nil {
		return Flow{}, err
	}
	return fr.flow(), nil
}

// Close makes Read return os.ErrClosed, now and later. It may be called
// more than once.
func (r *FlowReader) Close() error {
	r.closeOnce.Do(func() {
		// The reader first: its Close interrupts Read and waits for it,
		// and only then may the fd that Read polls go.
		err := r.rd.Close()
		if errors.Is(err, os.ErrClosed) {
			err = nil
		}
		r.closeErr = errors.Join(err, r.m.Close())
	})
	if r.closeErr != nil {
		return fmt.Errorf("close flow reader: %w", r.closeErr)
	}
	return nil
}

// Counter is the number of packets and bytes the datapath handled in one
// direction with one outcome: Reason NotDropped (0) for forwarded packets,
// else the drop reason. A GSO packet counts once, with all its bytes.
type Counter struct {
	Direction Direction
	Reason    DropReason
	Packets   uint64
	Bytes     uint64
}

// counterValue is one CPU's slot of the mp_counters per-CPU array, which
// is indexed by direction*32 + reason (MP_COUNTER in C); index 0 counts
// flow events lost to a full ring buffer.
//
// The matching C struct (16 bytes):
//
//	struct mp_counter_value {
//		__u64 packets;
//		__u64 bytes;
//	};
type counterValue struct {
	Packets uint64
	Bytes   uint64
}
