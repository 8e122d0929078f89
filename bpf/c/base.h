/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The few kernel UAPI definitions the datapath needs, written out here
 * instead of included from linux/ and bpf/ headers: the object must be
 * byte-identical wherever it is generated, whatever kernel and libbpf
 * headers that machine has, and the multiarch include directories of
 * <asm/types.h> differ between amd64 and arm64 hosts. Every value below is
 * stable kernel ABI.
 */
#ifndef MESHPLANE_BASE_H
#define MESHPLANE_BASE_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))

/* BTF-defined maps, as libbpf and cilium/ebpf read them. */
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name

/* enum bpf_map_type */
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_MAP_TYPE_LPM_TRIE 11
#define BPF_MAP_TYPE_RINGBUF 27

/* Map flags and update flags. */
#define BPF_F_NO_PREALLOC (1U << 0)
#define BPF_ANY 0

/* Flags of bpf_l4_csum_replace. */
#define BPF_F_PSEUDO_HDR (1ULL << 4)
#define BPF_F_MARK_MANGLED_0 (1ULL << 5)

/* Return codes of tcx programs (enum tcx_action_base). */
#define TCX_PASS 0
#define TCX_DROP 2

/* The head of struct __sk_buff: the fields up to data_end, at their UAPI
 * offsets (the verifier rewrites accesses by offset). */
struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 vlan_proto;
	__u32 priority;
	__u32 ingress_ifindex;
	__u32 ifindex;
	__u32 tc_index;
	__u32 cb[5];
	__u32 hash;
	__u32 tc_classid;
	__u32 data;
	__u32 data_end;
};

/* The tunnel metadata bpf_skb_set_tunnel_key takes and bpf_skb_get_tunnel_key
 * fills (UAPI struct bpf_tunnel_key, 44 bytes): the remote IPv4 address in
 * host byte order. */
struct bpf_tunnel_key {
	__u32 tunnel_id;
	__u32 remote_ipv4;
	__u32 remote_ipv6_rest[3];
	__u8 tunnel_tos;
	__u8 tunnel_ttl;
	__be16 tunnel_flags;
	__u32 tunnel_label;
	__u32 local_ipv4;
	__u32 local_ipv6_rest[3];
};

/* Flags of bpf_skb_set_tunnel_key: no UDP checksum on the outer IPv4
 * header (as Cilium sends VXLAN). */
#define BPF_F_ZERO_CSUM_TX (1ULL << 1)

/* Helpers, by their stable numbers (enum bpf_func_id). */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u32 (*bpf_get_prandom_u32)(void) = (void *)7;
static long (*bpf_skb_store_bytes)(struct __sk_buff *skb, __u32 offset, const void *from, __u32 len,
				   __u64 flags) = (void *)9;
static long (*bpf_l3_csum_replace)(struct __sk_buff *skb, __u32 offset, __u64 from, __u64 to, __u64 size) = (void *)10;
static long (*bpf_l4_csum_replace)(struct __sk_buff *skb, __u32 offset, __u64 from, __u64 to, __u64 flags) = (void *)11;
static long (*bpf_skb_get_tunnel_key)(struct __sk_buff *skb, struct bpf_tunnel_key *key, __u32 size,
				      __u64 flags) = (void *)20;
static long (*bpf_skb_set_tunnel_key)(struct __sk_buff *skb, struct bpf_tunnel_key *key, __u32 size,
				      __u64 flags) = (void *)21;
static long (*bpf_redirect)(__u32 ifindex, __u64 flags) = (void *)23;
static long (*bpf_skb_load_bytes)(const void *skb, __u32 offset, void *to, __u32 len) = (void *)26;
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, __u64 size, __u64 flags) = (void *)130;
static __u64 (*bpf_ringbuf_query)(void *ringbuf, __u64 flags) = (void *)134;

#define BPF_RB_NO_WAKEUP	(1ULL << 0)
#define BPF_RB_FORCE_WAKEUP	(1ULL << 1)
#define BPF_RB_AVAIL_DATA	0

/* Byte order: BPF targets built here are little-endian (bpfel). */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "meshplane's datapath is built for bpfel only"
#endif
#define bpf_htons(x) ((__be16)__builtin_bswap16(x))
#define bpf_ntohs(x) ((__u16)__builtin_bswap16(x))
#define bpf_ntohl(x) ((__u32)__builtin_bswap32(x))
#define bpf_htonl(x) ((__be32)__builtin_bswap32(x))

/* Protocol numbers. */
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_SCTP 132

#endif /* MESHPLANE_BASE_H */
