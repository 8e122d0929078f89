/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing: what the programs read from a packet, and the per-packet
 * state they carry. */
#ifndef MESHPLANE_PARSE_H
#define MESHPLANE_PARSE_H

#include "meshplane.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

/* Offsets in the IPv4 header. */
#define IP_CSUM_OFF (ETH_HLEN + 10)
#define IP_SADDR_OFF (ETH_HLEN + 12)
#define IP_DADDR_OFF (ETH_HLEN + 16)

struct ip4 {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__be32 saddr;
	__be32 daddr;
};

struct tcp_head {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack;
	__u8 doff;
	__u8 flags;
	__be16 window;
	__be16 check;
	__be16 urg;
};

struct icmp_head {
	__u8 type;
	__u8 code;
	__be16 check;
	__be16 id;
	__be16 seq;
};

/* What parse makes of a packet. */
enum {
	PARSE_OK,
	PARSE_NOT_IP,	 /* ARP and other non-IP: passed */
	PARSE_IPV6,	 /* dropped: the datapath cannot police it yet */
	PARSE_MALFORMED, /* dropped */
};

/* How conntrack treats a parsed IPv4 packet. */
enum {
	PKT_TRACKED,	/* a connection of its tuple (ports 0 for protocols without) */
	PKT_ICMP_ERROR, /* destination unreachable, time exceeded, parameter problem */
	PKT_UNTRACKED,	/* other ICMP messages: policed, never tracked */
};

struct pkt {
	__u32 len;	/* skb->len: what the counters add */
	__u32 l4_off;	/* offset of the L4 header */
	__u32 csum_off; /* offset of the L4 checksum a rewrite must fix; 0: none (ICMP, SCTP's CRC) */
	__be32 saddr;
	__be32 daddr;
	/*
	 * The conntrack tuple's ports. TCP, UDP, SCTP: the ports. ICMP echo:
	 * the identifier as the request's source port and the reply's
	 * destination port, so that a reply's reversed tuple is its
	 * request's. Others, and fragments after the first: 0.
	 */
	__be16 sport;
	__be16 dport;
	__be16 policy_port; /* the destination port policy matches: 0 without ports */
	__u8 proto;
	__u8 tcp_flags;
	__u8 family; /* of the addresses in flow events: 4, 6 (only dropped), 0 */
	__u8 kind;   /* PKT_* */
	__u8 udp;    /* UDP: a zero checksum means none */
	__u8 has_ports;
};

/* Per-packet state of a program. */
struct ctx {
	struct pkt p;
	__u32 ep_id;
	__u32 ep_identity;
	__u32 remote;	 /* the remote identity; 0: not looked up */
	__be32 svc_addr; /* the frontend of a translated packet; 0: none */
	__be16 svc_port;
	__u8 dir;
	__u8 ep_flags;
};

static __always_inline int parse_l4(struct __sk_buff *skb, struct pkt *p)
{
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcp_head t;

		if (bpf_skb_load_bytes(skb, p->l4_off, &t, sizeof(t)) < 0 || (t.doff >> 4) < 5)
			return PARSE_MALFORMED;
		p->sport = t.sport;
		p->dport = t.dport;
		p->tcp_flags = t.flags;
		p->csum_off = p->l4_off + 16;
		p->has_ports = 1;
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];
		/* The UDP header, or SCTP's common header up to its CRC. */
		__u8 head[8];

		if (bpf_skb_load_bytes(skb, p->l4_off, head, sizeof(head)) < 0)
			return PARSE_MALFORMED;
		__builtin_memcpy(ports, head, sizeof(ports));
		p->sport = ports[0];
		p->dport = ports[1];
		p->has_ports = 1;
		if (p->proto == IPPROTO_UDP) {
			p->csum_off = p->l4_off + 6;
			p->udp = 1;
		}
		break;
	}
	case IPPROTO_ICMP: {
		struct icmp_head ic;

		if (bpf_skb_load_bytes(skb, p->l4_off, &ic, sizeof(ic)) < 0)
			return PARSE_MALFORMED;
		switch (ic.type) {
		case ICMP_ECHO:
			p->sport = ic.id;
			break;
		case ICMP_ECHOREPLY:
			p->dport = ic.id;
			break;
		case ICMP_DEST_UNREACH:
		case ICMP_TIME_EXCEEDED:
		case ICMP_PARAMETERPROB:
			p->kind = PKT_ICMP_ERROR;
			break;
		default:
			p->kind = PKT_UNTRACKED;
		}
		break;
	}
	}
	p->policy_port = p->dport;
	if (!p->has_ports)
		p->policy_port = 0;
	return PARSE_OK;
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct ip4 ip;
	__be16 proto;
	__u32 hlen, tot;

	p->len = skb->len;
	if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0)
		return PARSE_MALFORMED;
	if (proto == bpf_htons(ETH_P_IPV6)) {
		p->family = MP_FAMILY_IPV6;
		/* The next header, for the flow event. */
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &p->proto, 1) < 0)
			return PARSE_MALFORMED;
		return PARSE_IPV6;
	}
	if (proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IP;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return PARSE_MALFORMED;
	hlen = (ip.ver_ihl & 0xf) * 4;
	tot = bpf_ntohs(ip.tot_len);
	if ((ip.ver_ihl >> 4) != 4 || hlen < sizeof(ip))
		return PARSE_MALFORMED;
	p->family = MP_FAMILY_IPV4;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	/* tot_len 0 is how BIG TCP marks IPv4 GSO packets over 64 KiB. */
	if (tot != 0 && (tot < hlen || ETH_HLEN + tot > skb->len))
		return PARSE_MALFORMED;
	p->l4_off = ETH_HLEN + hlen;
	/* Fragments after the first carry no L4 header: ports 0. */
	if (ip.frag_off & bpf_htons(0x1fff))
		return PARSE_OK;
	return parse_l4(skb, p);
}

#endif /* MESHPLANE_PARSE_H */
