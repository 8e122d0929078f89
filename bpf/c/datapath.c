// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * meshplane's datapath: two tcx programs on the host side of each pod's
 * veth, and two on the node's VXLAN device in tunnel mode.
 *
 *   from_pod     tcx ingress of the host veth: what the pod sends, the
 *                endpoint's egress. Anti-spoofing, service translation
 *                (DNAT), conntrack, egress policy.
 *   to_pod       tcx egress of the host veth: what goes into the pod, the
 *                endpoint's ingress. Reverse translation of replies
 *                (SNAT), conntrack, ingress policy.
 *   to_tunnel    tcx egress of the VXLAN device: the tunnel key (the
 *                remote node, from the ipcache).
 *   from_tunnel  tcx ingress of the VXLAN device: the pod's MACs, and a
 *                redirect to its host veth (where to_pod runs).
 *
 * The pod programs never redirect: they rewrite, pass or drop, and the
 * kernel routes (pod IPs /32 via their veths, other nodes' pod CIDRs as
 * the agent's routing mode says).
 * docs/datapath.md is the reference for what follows; the Go side of every
 * map and event is in package bpf.
 */
#include "base.h"
#include "meshplane.h"
#include "maps.h"
#include "parse.h"
#include "conntrack.h"
#include "nat.h"

/* Pending flow bytes that wake the agent's reader (about 300 events); below
 * that, FlowReader drains the ring on its flush timer. */
#define MP_FLOW_WAKEUP_BYTES (32 * 1024)

char _license[] SEC("license") = "Dual BSD/GPL";

static __always_inline void count(__u32 idx, __u32 len)
{
	struct mp_counter_value *c = bpf_map_lookup_elem(&mp_counters, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void emit(struct __sk_buff *skb, struct ctx *c, __u8 verdict, __u8 reason, __u8 is_reply)
{
	struct mp_flow ev = {};

	ev.ktime = bpf_ktime_get_ns();
	ev.verdict = verdict;
	ev.reason = reason;
	ev.direction = c->dir;
	ev.family = c->p.family;
	ev.protocol = c->p.proto;
	ev.tcp_flags = c->p.tcp_flags;
	ev.is_reply = is_reply;
	if (c->p.family == MP_FAMILY_IPV4) {
		*(__be32 *)ev.saddr = c->p.saddr;
		*(__be32 *)ev.daddr = c->p.daddr;
	} else if (c->p.family == MP_FAMILY_IPV6) {
		/* saddr and daddr follow each other in the header and here. */
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 8, ev.saddr, 32) < 0)
			ev.family = 0;
	}
	if (c->p.has_ports) {
		ev.sport = c->p.sport;
		ev.dport = c->p.dport;
	}
	if (c->dir == MP_DIR_EGRESS) {
		ev.src_identity = c->ep_identity;
		ev.dst_identity = c->remote;
	} else {
		ev.src_identity = c->remote;
		ev.dst_identity = c->ep_identity;
	}
	ev.endpoint_id = c->ep_id;
	ev.ifindex = skb->ifindex;
	if (c->svc_addr) {
		ev.svc_family = MP_FAMILY_IPV4;
		*(__be32 *)ev.svc_addr = c->svc_addr;
		ev.svc_port = c->svc_port;
	}
	/* The reader is woken only once MP_FLOW_WAKEUP_BYTES are waiting
	 * (it also drains the ring on a short timer, FlowReader's flush
	 * interval): a wake-up per event costs the agent more CPU than the
	 * event itself. A full ring loses the event, never the packet. */
	__u64 wake = bpf_ringbuf_query(&mp_flows, BPF_RB_AVAIL_DATA) >= MP_FLOW_WAKEUP_BYTES ?
		BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&mp_flows, &ev, sizeof(ev), wake) < 0)
		count(MP_COUNTER_LOST_FLOWS, 1);
}

static __always_inline int pass(struct ctx *c)
{
	count(MP_COUNTER(c->dir, 0), c->p.len);
	return TCX_PASS;
}

static __always_inline int drop(struct __sk_buff *skb, struct ctx *c, __u8 reason, __u8 is_reply)
{
	count(MP_COUNTER(c->dir, reason), c->p.len);
	emit(skb, c, MP_FLOW_DROPPED, reason, is_reply);
	return TCX_DROP;
}

/* prefix_key4 sets k to the full-length key of an IPv4 address, for the
 * ipcache and mp_cidr: the longest stored prefix containing it matches. */
static __always_inline void prefix_key4(struct mp_ipcache_key *k, __be32 addr)
{
	/* Field by field: an initializer would become a .rodata copy. */
	__builtin_memset(k, 0, sizeof(*k));
	k->prefixlen = 64;
	k->family = MP_FAMILY_IPV4;
	*(__be32 *)k->addr = addr;
}

static __always_inline __u32 ipcache_identity(__be32 addr)
{
	struct mp_ipcache_key k;
	struct mp_ipcache_value *v;

	prefix_key4(&k, addr);
	v = bpf_map_lookup_elem(&mp_ipcache, &k);
	return v ? v->identity : MP_IDENTITY_WORLD;
}

/* cidr_identity returns the CIDR identity of the most specific ipBlock
 * prefix that contains addr, 0 if none does. */
static __always_inline __u32 cidr_identity(__be32 addr)
{
	struct mp_ipcache_key k;
	struct mp_cidr_value *v;

	prefix_key4(&k, addr);
	v = bpf_map_lookup_elem(&mp_cidr, &k);
	return v ? v->identity : 0;
}

static __always_inline struct mp_endpoint_value *endpoint(struct mp_endpoint_key *k, __be32 addr)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->family = MP_FAMILY_IPV4;
	*(__be32 *)k->addr = addr;
	return bpf_map_lookup_elem(&mp_endpoints, k);
}

/* policy_allows applies the lookup rule documented on bpf.PolicyKey to a
 * new packet whose remote has address remote_addr and identity c->remote. */
static __always_inline int policy_allows(struct ctx *c, __be32 remote_addr)
{
	struct mp_policy_key k = {
		.prefixlen = MP_POLICY_FULL_PREFIXLEN,
		.endpoint_id = c->ep_id,
		.identity = c->remote,
		.direction = c->dir,
		.protocol = c->p.proto,
		.dport = c->p.policy_port,
	};
	struct mp_policy_value *v;
	int allow = 0;

	/* Deny wins; a verdict this datapath does not know counts as Deny. */
	v = bpf_map_lookup_elem(&mp_policy, &k);
	if (v) {
		if (v->verdict != MP_VERDICT_ALLOW)
			return 0;
		allow = 1;
	}
	k.identity = 0;
	v = bpf_map_lookup_elem(&mp_policy, &k);
	if (v) {
		if (v->verdict != MP_VERDICT_ALLOW)
			return 0;
		allow = 1;
	}
	if (allow)
		return 1;
	if (!(c->ep_flags & (c->dir == MP_DIR_INGRESS ? MP_EP_POLICY_INGRESS : MP_EP_POLICY_EGRESS)))
		return 1;
	/* Enforced, and nothing allowed the remote's identity: ipBlocks
	 * match addresses, a pod's too, so the remote address's CIDR
	 * identity gets a lookup of its own. Outside the cluster it is
	 * usually the ipcache's identity already: no second lookup. */
	k.identity = cidr_identity(remote_addr);
	if (!k.identity || k.identity == c->remote)
		return 0;
	v = bpf_map_lookup_elem(&mp_policy, &k);
	return v && v->verdict == MP_VERDICT_ALLOW;
}

/* MP_NEW is what police returns for a new packet to track. */
#define MP_NEW (-1)

/*
 * police handles what from_pod and to_pod share once they have let the
 * replies of the other direction's connections through: a packet of a
 * connection of the program's own direction (the endpoint's OUT entries
 * in from_pod, its IN entries in to_pod) passes, as does an ICMP error
 * about a tracked connection; anything else is new, and policy decides on
 * the remote (the destination in from_pod, after translation, and the
 * source in to_pod). It returns MP_NEW for an allowed new packet that
 * conntrack follows (k is then its entry's key), else the verdict. dir is
 * c->dir, passed as a constant so that the choices fold away at compile
 * time (read from c they did not all fold, and cost the verifier about
 * 550 instructions more in from_pod).
 */
static __always_inline int police(struct __sk_buff *skb, struct ctx *c, struct mp_ct_key *k, __u64 now, const __u8 dir)
{
	int egress = dir == MP_DIR_EGRESS;
	__be32 remote = egress ? c->p.daddr : c->p.saddr;
	struct mp_ct_value *v;
	int r;

	ct_key4(k, egress ? MP_CT_OUT : MP_CT_IN, c->p.proto, c->p.saddr, c->p.daddr, c->p.sport, c->p.dport);
	v = ct_lookup(k, now);
	if (v && c->p.kind == PKT_TRACKED && !reopens(v, &c->p)) {
		ct_touch(v, &c->p, now, 0);
		return pass(c);
	}
	if (c->p.kind == PKT_ICMP_ERROR) {
		r = icmp_related(skb, c, now);
		if (r > 0)
			return pass(c);
		if (r < 0)
			return drop(skb, c, -r, 1);
	}

	c->remote = ipcache_identity(remote);
	if (!policy_allows(c, remote))
		return drop(skb, c, MP_DROP_POLICY, 0);
	if (c->p.kind != PKT_TRACKED)
		return pass(c);
	return MP_NEW;
}

SEC("tcx/ingress")
int from_pod(struct __sk_buff *skb)
{
	struct ctx c = {.dir = MP_DIR_EGRESS};
	struct mp_endpoint_key ek;
	struct mp_endpoint_value *ep;
	struct mp_ct_value *v;
	struct mp_ct_key k;
	__u32 backend_id = 0;
	__u64 now;
	int r;

	switch (parse(skb, &c.p)) {
	case PARSE_NOT_IP:
		return pass(&c);
	case PARSE_IPV6:
		return drop(skb, &c, MP_DROP_UNSUPPORTED_L3, 0);
	case PARSE_MALFORMED:
		return drop(skb, &c, MP_DROP_MALFORMED, 0);
	}

	/* Anti-spoofing: the source must be an endpoint behind this veth. */
	ep = endpoint(&ek, c.p.saddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return drop(skb, &c, MP_DROP_SPOOFED, 0);
	c.ep_id = ep->endpoint_id;
	c.ep_identity = ep->identity;
	c.ep_flags = ep->flags;

	now = bpf_ktime_get_ns();
	/* Services are TCP, UDP and SCTP: the protocols with ports. */
	if (c.p.has_ports) {
		r = service_translate(skb, &c, now, &backend_id);
		if (r)
			return drop(skb, &c, r, 0);
	}

	/* The pod answers a connection that came in. */
	ct_key4(&k, MP_CT_IN, c.p.proto, c.p.daddr, c.p.saddr, c.p.dport, c.p.sport);
	v = ct_lookup(&k, now);
	if (v && c.p.kind == PKT_TRACKED) {
		ct_touch(v, &c.p, now, 1);
		return pass(&c);
	}
	/* A packet of a connection the pod opened, or new: policy, then
	 * conntrack entries. */
	r = police(skb, &c, &k, now, MP_DIR_EGRESS);
	if (r != MP_NEW)
		return r;
	if (backend_id) {
		struct mp_ct_key sk;
		struct mp_ct_value sv = {.created = now, .last_seen = now, .backend_id = backend_id};

		ct_key4(&sk, MP_CT_SERVICE, c.p.proto, c.p.saddr, c.svc_addr, c.p.sport, c.svc_port);
		if (bpf_map_update_elem(&mp_ct, &sk, &sv, BPF_ANY) < 0)
			return drop(skb, &c, MP_DROP_CT_FULL, 0);
	}
	if (ct_create(&k, &c.p, now, backend_id, c.svc_addr, c.svc_port) < 0)
		return drop(skb, &c, MP_DROP_CT_FULL, 0);
	emit(skb, &c, MP_FLOW_FORWARDED, 0, 0);
	return pass(&c);
}

SEC("tcx/egress")
int to_pod(struct __sk_buff *skb)
{
	struct ctx c = {.dir = MP_DIR_INGRESS};
	struct mp_endpoint_key ek;
	struct mp_endpoint_value *ep;
	struct mp_ct_value *v;
	struct mp_ct_key k;
	__u64 now;
	int r;

	switch (parse(skb, &c.p)) {
	case PARSE_NOT_IP:
		return pass(&c);
	case PARSE_IPV6:
		return drop(skb, &c, MP_DROP_UNSUPPORTED_L3, 0);
	case PARSE_MALFORMED:
		return drop(skb, &c, MP_DROP_MALFORMED, 0);
	}

	ep = endpoint(&ek, c.p.daddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return drop(skb, &c, MP_DROP_UNKNOWN_ENDPOINT, 0);
	c.ep_id = ep->endpoint_id;
	c.ep_identity = ep->identity;
	c.ep_flags = ep->flags;

	now = bpf_ktime_get_ns();
	/* A reply to a connection the pod opened: translated back if it
	 * went to a service. */
	ct_key4(&k, MP_CT_OUT, c.p.proto, c.p.daddr, c.p.saddr, c.p.dport, c.p.sport);
	v = ct_lookup(&k, now);
	if (v && c.p.kind == PKT_TRACKED) {
		ct_touch(v, &c.p, now, 1);
		if (v->nat_family == MP_FAMILY_IPV4) {
			r = rewrite(skb, &c.p, 0, *(__be32 *)v->nat_addr, v->nat_port);
			if (r)
				return drop(skb, &c, r, 1);
		}
		return pass(&c);
	}
	/* A packet of a connection into the pod, or new: policy, then a
	 * conntrack entry. */
	r = police(skb, &c, &k, now, MP_DIR_INGRESS);
	if (r != MP_NEW)
		return r;
	if (ct_create(&k, &c.p, now, 0, 0, 0) < 0)
		return drop(skb, &c, MP_DROP_CT_FULL, 0);
	emit(skb, &c, MP_FLOW_FORWARDED, 0, 0);
	return pass(&c);
}


/*
 * Tunnel mode (docs/datapath.md, "Tunnel mode"): two programs on the
 * node's flow-based VXLAN device (mesh_vxlan). The node routes other
 * nodes' pod CIDRs through it; the device encapsulates with the key the
 * egress program sets, and decapsulates what comes in on its UDP port.
 */

/* The outer IPv4 TTL of encapsulated packets. */
#define MP_TUNNEL_TTL 64

/*
 * to_tunnel, tcx egress of the VXLAN device: a packet the node routed
 * into the tunnel. The ipcache's entry for the inner destination (a pod's
 * /32 or its node's pod CIDR) names the node that hosts it: the tunnel's
 * remote end. Policy was applied by from_pod on the way in (and is again
 * by to_pod on the other node).
 */
SEC("tcx/egress")
int to_tunnel(struct __sk_buff *skb)
{
	struct ctx c = {.dir = MP_DIR_EGRESS};
	struct bpf_tunnel_key key;
	struct mp_ipcache_key k;
	struct mp_ipcache_value *v;

	switch (parse(skb, &c.p)) {
	case PARSE_NOT_IP:
	case PARSE_IPV6:
		/* Nothing to route to: the tunnel carries IPv4 only. */
		return drop(skb, &c, MP_DROP_UNSUPPORTED_L3, 0);
	case PARSE_MALFORMED:
		return drop(skb, &c, MP_DROP_MALFORMED, 0);
	}
	prefix_key4(&k, c.p.daddr);
	v = bpf_map_lookup_elem(&mp_ipcache, &k);
	if (!v || v->node_family != MP_FAMILY_IPV4 || (v->flags & MP_IPCACHE_LOCAL))
		return drop(skb, &c, MP_DROP_NO_TUNNEL_ENDPOINT, 0);
	__builtin_memset(&key, 0, sizeof(key));
	key.remote_ipv4 = bpf_ntohl(*(__be32 *)v->node_addr);
	key.tunnel_ttl = MP_TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(skb, &c, MP_DROP_TUNNEL_FAILED, 0);
	return TCX_PASS;
}

/*
 * from_tunnel, tcx ingress of the VXLAN device: a decapsulated packet.
 * Its outer source must be another node's address (an ipcache entry of
 * identity remote-node): the VXLAN port is open to whoever reaches the
 * node, and a packet from anywhere else, whatever inner source it claims,
 * is dropped. Its Ethernet destination is the sending node's device's,
 * not a MAC of this node, so the kernel would not take it: the program
 * gives it the pod's MAC and the host veth's (both in the endpoint's
 * entry) and redirects it to the egress of the pod's host veth, where
 * to_pod runs as for any packet into the pod.
 */
SEC("tcx/ingress")
int from_tunnel(struct __sk_buff *skb)
{
	struct ctx c = {.dir = MP_DIR_INGRESS};
	struct bpf_tunnel_key key;
	struct mp_endpoint_key ek;
	struct mp_endpoint_value *ep;

	switch (parse(skb, &c.p)) {
	case PARSE_NOT_IP:
	case PARSE_IPV6:
		return drop(skb, &c, MP_DROP_UNSUPPORTED_L3, 0);
	case PARSE_MALFORMED:
		return drop(skb, &c, MP_DROP_MALFORMED, 0);
	}
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0 ||
	    ipcache_identity(bpf_htonl(key.remote_ipv4)) != MP_IDENTITY_REMOTE_NODE)
		return drop(skb, &c, MP_DROP_TUNNEL_SOURCE, 0);
	ep = endpoint(&ek, c.p.daddr);
	if (!ep)
		return drop(skb, &c, MP_DROP_UNKNOWN_ENDPOINT, 0);
	/* pod_mac and node_mac follow each other: the new destination and
	 * source. */
	if (bpf_skb_store_bytes(skb, 0, ep->pod_mac, 12, 0) < 0)
		return drop(skb, &c, MP_DROP_NAT_FAILED, 0);
	return bpf_redirect(ep->ifindex, 0);
}
