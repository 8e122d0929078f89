/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service translation: backend selection, packet rewrites with their
 * checksums, and ICMP errors about tracked (and translated) connections. */
#ifndef MESHPLANE_NAT_H
#define MESHPLANE_NAT_H

#include "conntrack.h"

/* How many backend slots a new connection tries past a missing or
 * terminating backend before the service counts as without backends. */
#define SERVICE_PROBES 8

/*
 * rewrite replaces the packet's destination (dst) or source address and
 * port, fixing the IPv4 and L4 checksums. SCTP's CRC32c covers the ports
 * but not the addresses, so SCTP can change address only. Returns 0, or a
 * drop reason.
 */
static __always_inline int rewrite(struct __sk_buff *skb, struct pkt *p, int dst, __be32 addr, __be16 port)
{
	__be32 old_addr = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;
	__u32 addr_off = dst ? IP_DADDR_OFF : IP_SADDR_OFF;
	__u32 port_off = p->l4_off + (dst ? 2 : 0);
	__u64 mangled0 = p->udp ? BPF_F_MARK_MANGLED_0 : 0;

	if (port != old_port && p->proto == IPPROTO_SCTP)
		return MP_DROP_UNSUPPORTED_NAT;
	if (addr != old_addr) {
		if (p->csum_off &&
		    bpf_l4_csum_replace(skb, p->csum_off, old_addr, addr, BPF_F_PSEUDO_HDR | mangled0 | sizeof(addr)) < 0)
			return MP_DROP_NAT_FAILED;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, addr, sizeof(addr)) < 0)
			return MP_DROP_NAT_FAILED;
		if (bpf_skb_store_bytes(skb, addr_off, &addr, sizeof(addr), 0) < 0)
			return MP_DROP_NAT_FAILED;
	}
	if (port != old_port) {
		if (p->csum_off && bpf_l4_csum_replace(skb, p->csum_off, old_port, port, mangled0 | sizeof(port)) < 0)
			return MP_DROP_NAT_FAILED;
		if (bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0) < 0)
			return MP_DROP_NAT_FAILED;
	}
	if (dst) {
		p->daddr = addr;
		p->dport = port;
		p->policy_port = port;
	} else {
		p->saddr = addr;
		p->sport = port;
	}
	return 0;
}

/* The packet inside an ICMP error: its header's offsets and tuple. */
struct inner {
	__u32 ip_off;
	__u32 l4_off;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
};

static __always_inline int parse_inner(struct __sk_buff *skb, struct pkt *p, struct inner *in)
{
	struct ip4 ip;
	__u32 hlen;

	in->ip_off = p->l4_off + sizeof(struct icmp_head);
	if (bpf_skb_load_bytes(skb, in->ip_off, &ip, sizeof(ip)) < 0)
		return -1;
	hlen = (ip.ver_ihl & 0xf) * 4;
	if ((ip.ver_ihl >> 4) != 4 || hlen < sizeof(ip))
		return -1;
	in->l4_off = in->ip_off + hlen;
	in->saddr = ip.saddr;
	in->daddr = ip.daddr;
	in->proto = ip.protocol;
	in->sport = 0;
	in->dport = 0;
	if (ip.frag_off & bpf_htons(0x1fff))
		return 0;
	switch (ip.protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, in->l4_off, ports, sizeof(ports)) < 0)
			return -1;
		in->sport = ports[0];
		in->dport = ports[1];
		break;
	}
	case IPPROTO_ICMP: {
		struct icmp_head ic;

		if (bpf_skb_load_bytes(skb, in->l4_off, &ic, sizeof(ic)) < 0)
			return -1;
		if (ic.type == ICMP_ECHO)
			in->sport = ic.id;
		else if (ic.type == ICMP_ECHOREPLY)
			in->dport = ic.id;
		break;
	}
	}
	return 0;
}

/*
 * icmp_rev_nat translates an ICMP error about a translated connection
 * back to the frontend the pod knows: the quoted packet's destination
 * (its IPv4 checksum along) and, if the backend itself sent the error, the
 * outer source. The quoted L4 checksum is left alone (the kernel does not
 * check it), so the ICMP checksum changes by the port only: the quoted
 * address and IPv4 checksum change by amounts that cancel in it.
 */
static __always_inline int icmp_rev_nat(struct __sk_buff *skb, struct ctx *c, struct inner *in,
					struct mp_ct_value *v)
{
	__be32 fe_addr = *(__be32 *)v->nat_addr;
	__be16 fe_port = v->nat_port;

	if (in->daddr != fe_addr) {
		if (bpf_l3_csum_replace(skb, in->ip_off + 10, in->daddr, fe_addr, sizeof(fe_addr)) < 0 ||
		    bpf_skb_store_bytes(skb, in->ip_off + 16, &fe_addr, sizeof(fe_addr), 0) < 0)
			return MP_DROP_NAT_FAILED;
	}
	if (in->dport != fe_port) {
		if (bpf_l4_csum_replace(skb, c->p.l4_off + 2, in->dport, fe_port, sizeof(fe_port)) < 0 ||
		    bpf_skb_store_bytes(skb, in->l4_off + 2, &fe_port, sizeof(fe_port), 0) < 0)
			return MP_DROP_NAT_FAILED;
	}
	if (c->p.saddr == in->daddr) {
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, c->p.saddr, fe_addr, sizeof(fe_addr)) < 0 ||
		    bpf_skb_store_bytes(skb, IP_SADDR_OFF, &fe_addr, sizeof(fe_addr), 0) < 0)
			return MP_DROP_NAT_FAILED;
		c->p.saddr = fe_addr;
	}
	return 0;
}

/*
 * icmp_related reports whether the ICMP error in c is about a connection
 * conntrack knows (1), with a drop reason if translating it failed (< 0:
 * -reason), or 0 if it is about none. The quoted packet is one the
 * endpoint sent (to_pod: the error goes back to the sender) or received
 * (from_pod: the endpoint reports on a packet it got).
 */
static __always_inline int icmp_related(struct __sk_buff *skb, struct ctx *c, __u64 now)
{
	struct mp_ct_key k;
	struct mp_ct_value *v;
	struct inner in;
	int err;

	if (parse_inner(skb, &c->p, &in) < 0)
		return 0;
	if (c->dir == MP_DIR_INGRESS) {
		ct_key4(&k, MP_CT_OUT, in.proto, in.saddr, in.daddr, in.sport, in.dport);
		v = ct_lookup(&k, now);
		if (v) {
			if (v->nat_family == MP_FAMILY_IPV4) {
				err = icmp_rev_nat(skb, c, &in, v);
				if (err)
					return -err;
			}
			return 1;
		}
		ct_key4(&k, MP_CT_IN, in.proto, in.daddr, in.saddr, in.dport, in.sport);
		return ct_lookup(&k, now) != 0;
	}
	ct_key4(&k, MP_CT_IN, in.proto, in.saddr, in.daddr, in.sport, in.dport);
	if (ct_lookup(&k, now))
		return 1;
	ct_key4(&k, MP_CT_OUT, in.proto, in.daddr, in.saddr, in.dport, in.sport);
	return ct_lookup(&k, now) != 0;
}

/*
 * service_translate looks the packet's destination up as a service
 * frontend and, if it is one, picks a backend and rewrites the destination
 * to it. Returns 0 (translated or not a service) or a drop reason; on
 * return *backend_id is the backend, 0 if not a service.
 */
static __always_inline int service_translate(struct __sk_buff *skb, struct ctx *c, __u64 now, __u32 *backend_id)
{
	struct mp_service_key sk = {.family = MP_FAMILY_IPV4, .protocol = c->p.proto, .dport = c->p.dport};
	struct mp_backend_value *be = 0;
	struct mp_service_value *sv;
	struct mp_backend_key bk;
	struct mp_ct_value *v;
	struct mp_ct_key k;
	__u32 start, count;
	__be32 addr;
	__be16 port;
	int i;

	*backend_id = 0;
	*(__be32 *)sk.addr = c->p.daddr;
	sv = bpf_map_lookup_elem(&mp_services, &sk);
	if (!sv)
		return 0;
	count = sv->count;
	c->svc_addr = c->p.daddr;
	c->svc_port = c->p.dport;
	if (count == 0)
		return MP_DROP_NO_BACKENDS;

	/*
	 * A packet of a live connection stays on its backend while that
	 * backend exists: the SERVICE entry of the frontend tuple names it,
	 * and the connection lives as long as the OUT entry of the
	 * translated tuple does.
	 */
	ct_key4(&k, MP_CT_SERVICE, c->p.proto, c->p.saddr, c->p.daddr, c->p.sport, c->p.dport);
	v = bpf_map_lookup_elem(&mp_ct, &k);
	if (v) {
		bk.backend_id = v->backend_id;
		be = bpf_map_lookup_elem(&mp_backends, &bk);
		if (be && be->family == MP_FAMILY_IPV4) {
			ct_key4(&k, MP_CT_OUT, c->p.proto, c->p.saddr, *(__be32 *)be->addr, c->p.sport, be->port);
			v = ct_lookup(&k, now);
			if (!v || reopens(v, &c->p))
				be = 0;
		} else {
			be = 0;
		}
	}

	/* A new connection: a random slot, for an even spread. */
	if (!be) {
		start = bpf_get_prandom_u32() % count;
		for (i = 0; i < SERVICE_PROBES; i++) {
			__u32 slot = start + i;

			if (i >= count)
				break;
			if (slot >= count)
				slot -= count;
			sk.slot = slot + 1;
			sv = bpf_map_lookup_elem(&mp_services, &sk);
			if (!sv)
				continue;
			bk.backend_id = sv->backend_id;
			be = bpf_map_lookup_elem(&mp_backends, &bk);
			if (be && be->family == MP_FAMILY_IPV4 && !(be->flags & MP_BACKEND_TERMINATING))
				break;
			be = 0;
		}
		if (!be)
			return MP_DROP_NO_BACKENDS;
	}
	*backend_id = bk.backend_id;
	addr = *(__be32 *)be->addr;
	port = be->port;
	return rewrite(skb, &c->p, 1, addr, port);
}

#endif /* MESHPLANE_NAT_H */
