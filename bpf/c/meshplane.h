/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The ABI between the datapath and package bpf: map keys and values, flow
 * events and the numbers in them. Each struct is the one in the doc comment
 * of its Go type (package bpf); TestHeaderLayouts compiles this header with
 * the Go types' sizes and offsets as static assertions, so the two cannot
 * drift. Multi-byte fields are in host byte order except ports (__be16) and
 * IPv4 addresses, which stay as on the wire; an address is a family byte
 * plus 16 bytes, IPv4 in the first 4.
 */
#ifndef MESHPLANE_H
#define MESHPLANE_H

#include "base.h"

#define MP_FAMILY_IPV4 4
#define MP_FAMILY_IPV6 6

/* Directions relative to a local endpoint (bpf.Direction). */
#define MP_DIR_INGRESS 1
#define MP_DIR_EGRESS 2

#define MP_VERDICT_ALLOW 1
#define MP_VERDICT_DENY 2

#define MP_IPCACHE_LOCAL (1 << 0)
#define MP_EP_POLICY_INGRESS (1 << 0)
#define MP_EP_POLICY_EGRESS (1 << 1)
#define MP_BACKEND_TERMINATING (1 << 0)

/* Reserved identities (package identity). */
#define MP_IDENTITY_WORLD 2
#define MP_IDENTITY_REMOTE_NODE 6

struct mp_ipcache_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct mp_ipcache_value {
	__u32 identity;
	__u8 node_family;
	__u8 flags;
	__u8 pad[2];
	__u8 node_addr[16];
};

struct mp_endpoint_key {
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct mp_endpoint_value {
	__u32 endpoint_id;
	__u32 ifindex;
	__u32 identity;
	__u8 flags;
	__u8 pad;
	__u8 pod_mac[6];
	__u8 node_mac[6];
	__u8 pad2[2];
};

/* mp_cidr: keyed by struct mp_ipcache_key; holds only the prefixes that
 * policies' ipBlocks name (bpf.CIDRValue). */
struct mp_cidr_value {
	__u32 identity;
};

/* prefixlen of a full-length policy lookup: every bit of the key. */
#define MP_POLICY_FULL_PREFIXLEN 96

struct mp_policy_key {
	__u32 prefixlen;
	__u32 endpoint_id;
	__u32 identity;
	__u8 direction;
	__u8 protocol;
	__be16 dport;
};

struct mp_policy_value {
	__u32 cookie;
	__u8 verdict;
	__u8 pad[3];
};

struct mp_service_key {
	__u8 family;
	__u8 protocol;
	__be16 dport;
	__u8 addr[16];
	__u16 slot;
	__u8 pad[2];
};

struct mp_service_value {
	__u32 backend_id;
	__u32 service_id;
	__u16 count;
	__u8 pad[2];
};

struct mp_backend_key {
	__u32 backend_id;
};

struct mp_backend_value {
	__u8 family;
	__u8 protocol;
	__be16 port;
	__u8 addr[16];
	__u8 flags;
	__u8 pad[3];
};

/* Conntrack entry kinds (bpf.CTDir). */
#define MP_CT_OUT 1	/* made by from_pod: a connection the endpoint opened */
#define MP_CT_IN 2	/* made by to_pod: a connection into the endpoint */
#define MP_CT_SERVICE 3 /* from_pod, pre-translation tuple -> the backend picked */

/* Conntrack flags (bpf.CTFlags). */
#define MP_CT_SEEN_REPLY (1 << 0)
#define MP_CT_FIN_ORIG (1 << 1)	 /* FIN from the side that opened the connection */
#define MP_CT_FIN_REPLY (1 << 2) /* FIN from the other side */
#define MP_CT_RST (1 << 3)

/* Conntrack lifetimes in seconds (bpf.CTLifetime*). */
#define MP_CT_LIFETIME_TCP_ESTABLISHED 21600 /* seen reply, no FIN or RST */
#define MP_CT_LIFETIME_TCP_OPENING 60	     /* no reply yet, or a FIN from one side */
#define MP_CT_LIFETIME_TCP_CLOSED 10	     /* FIN from both sides, or RST */
#define MP_CT_LIFETIME_OTHER 60		     /* UDP, ICMP and other protocols */

struct mp_ct_key {
	__u8 family;
	__u8 protocol;
	__u8 dir;
	__u8 pad;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
};

struct mp_ct_value {
	__u64 created;
	__u64 last_seen;
	__u64 packets;
	__u64 bytes;
	__u32 backend_id;
	__u8 flags;
	__u8 nat_family;
	__be16 nat_port;
	__u8 nat_addr[16];
};

/* Flow verdicts (bpf.FlowVerdict). */
#define MP_FLOW_FORWARDED 1
#define MP_FLOW_DROPPED 2

/* Drop reasons (bpf.DropReason); the numbers are stable. */
#define MP_DROP_POLICY 1
#define MP_DROP_SPOOFED 2
#define MP_DROP_UNKNOWN_ENDPOINT 3
#define MP_DROP_NO_BACKENDS 4
#define MP_DROP_CT_FULL 5
#define MP_DROP_MALFORMED 6
#define MP_DROP_UNSUPPORTED_L3 7
#define MP_DROP_UNSUPPORTED_NAT 8 /* SCTP service with a port change: its CRC32c covers the ports */
#define MP_DROP_NAT_FAILED 9	    /* a rewrite helper failed (e.g. no memory to unclone the packet) */
#define MP_DROP_NO_TUNNEL_ENDPOINT 10 /* to_tunnel: the ipcache names no remote node for the destination */
#define MP_DROP_TUNNEL_FAILED 11      /* to_tunnel: bpf_skb_set_tunnel_key failed */
#define MP_DROP_TUNNEL_SOURCE 12      /* from_tunnel: the outer source is no other node's address */

struct mp_flow {
	__u64 ktime;
	__u8 verdict;
	__u8 reason;
	__u8 direction;
	__u8 family;
	__u8 protocol;
	__u8 tcp_flags;
	__u8 is_reply;
	__u8 svc_family;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 endpoint_id;
	__u32 ifindex;
	__u8 svc_addr[16];
	__be16 svc_port;
	__u8 pad[2];
};

/*
 * mp_counters is a per-CPU array indexed by MP_COUNTER(direction, reason):
 * reason 0 counts forwarded packets. Index 0 (no direction) counts flow
 * events lost to a full ring buffer, in packets.
 */
#define MP_REASON_SLOTS 32
#define MP_COUNTER(dir, reason) ((dir) * MP_REASON_SLOTS + (reason))
#define MP_COUNTER_LOST_FLOWS 0
#define MP_COUNTERS_MAX (3 * MP_REASON_SLOTS)

struct mp_counter_value {
	__u64 packets;
	__u64 bytes;
};

#endif /* MESHPLANE_H */
