/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Conntrack: entries of mp_ct, their lifetimes and updates. See the
 * Conntrack section of docs/datapath.md. */
#ifndef MESHPLANE_CONNTRACK_H
#define MESHPLANE_CONNTRACK_H

#include "maps.h"
#include "parse.h"

/* Conntrack lifetimes, in nanoseconds: an entry not seen for longer counts
 * as absent. */
#define NSEC_PER_SEC 1000000000ULL
#define CT_TCP_ESTABLISHED (MP_CT_LIFETIME_TCP_ESTABLISHED * NSEC_PER_SEC)
#define CT_TCP_OPENING (MP_CT_LIFETIME_TCP_OPENING * NSEC_PER_SEC)
#define CT_TCP_CLOSED (MP_CT_LIFETIME_TCP_CLOSED * NSEC_PER_SEC)
#define CT_OTHER (MP_CT_LIFETIME_OTHER * NSEC_PER_SEC)

static __always_inline void ct_key4(struct mp_ct_key *k, __u8 dir, __u8 proto, __be32 saddr, __be32 daddr,
				    __be16 sport, __be16 dport)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->family = MP_FAMILY_IPV4;
	k->protocol = proto;
	k->dir = dir;
	*(__be32 *)k->saddr = saddr;
	*(__be32 *)k->daddr = daddr;
	k->sport = sport;
	k->dport = dport;
}

static __always_inline __u64 ct_lifetime(__u8 proto, __u8 flags)
{
	if (proto != IPPROTO_TCP)
		return CT_OTHER;
	if ((flags & MP_CT_RST) || (flags & (MP_CT_FIN_ORIG | MP_CT_FIN_REPLY)) == (MP_CT_FIN_ORIG | MP_CT_FIN_REPLY))
		return CT_TCP_CLOSED;
	if (flags & (MP_CT_FIN_ORIG | MP_CT_FIN_REPLY))
		return CT_TCP_OPENING;
	if (flags & MP_CT_SEEN_REPLY)
		return CT_TCP_ESTABLISHED;
	return CT_TCP_OPENING;
}

/* ct_lookup returns k's entry if it has not expired. */
static __always_inline struct mp_ct_value *ct_lookup(struct mp_ct_key *k, __u64 now)
{
	struct mp_ct_value *v = bpf_map_lookup_elem(&mp_ct, k);

	/* Signed: another CPU may have stored a last_seen after our now. */
	if (!v || (__s64)(now - v->last_seen) > (__s64)ct_lifetime(k->protocol, v->flags))
		return 0;
	return v;
}

/* reopens reports whether p, a TCP SYN, opens a new connection on the tuple
 * of entry v, which is closing: the entry is then treated as absent. */
static __always_inline int reopens(struct mp_ct_value *v, struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN &&
	       (v->flags & (MP_CT_FIN_ORIG | MP_CT_FIN_REPLY | MP_CT_RST));
}

static __always_inline __u8 tcp_ct_flags(struct pkt *p, int reply)
{
	__u8 f = 0;

	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & TCP_FIN)
			f |= reply ? MP_CT_FIN_REPLY : MP_CT_FIN_ORIG;
		if (p->tcp_flags & TCP_RST)
			f |= MP_CT_RST;
	}
	return f;
}

/*
 * ct_touch records a packet of v's connection. The flags are a plain
 * read-modify-write: two CPUs setting different flags at once can lose
 * one, which at worst keeps a closed connection's entry for the longer
 * lifetime until its next packet sets it again.
 */
static __always_inline void ct_touch(struct mp_ct_value *v, struct pkt *p, __u64 now, int reply)
{
	__u8 set = tcp_ct_flags(p, reply);

	if (reply)
		set |= MP_CT_SEEN_REPLY;
	if ((v->flags & set) != set)
		v->flags |= set;
	v->last_seen = now;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, p->len);
}

static __always_inline int ct_create(struct mp_ct_key *k, struct pkt *p, __u64 now, __u32 backend_id,
				     __be32 nat_addr, __be16 nat_port)
{
	struct mp_ct_value v = {};

	v.created = now;
	v.last_seen = now;
	v.packets = 1;
	v.bytes = p->len;
	v.backend_id = backend_id;
	v.flags = tcp_ct_flags(p, 0);
	if (nat_addr) {
		v.nat_family = MP_FAMILY_IPV4;
		*(__be32 *)v.nat_addr = nat_addr;
		v.nat_port = nat_port;
	}
	return bpf_map_update_elem(&mp_ct, k, &v, BPF_ANY);
}

#endif /* MESHPLANE_CONNTRACK_H */
