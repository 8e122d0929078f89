/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The datapath's maps, for datapath.c only (it defines them). */
#ifndef MESHPLANE_MAPS_H
#define MESHPLANE_MAPS_H

#include "meshplane.h"

/*
 * The maps. Package bpf creates and pins them all and hands them to the
 * loader as replacements, so the sizes below are placeholders that the
 * loader overwrites with the pinned maps' own.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct mp_ipcache_key);
	__type(value, struct mp_ipcache_value);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mp_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mp_endpoint_key);
	__type(value, struct mp_endpoint_value);
	__uint(max_entries, 1);
} mp_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct mp_policy_key);
	__type(value, struct mp_policy_value);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mp_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mp_service_key);
	__type(value, struct mp_service_value);
	__uint(max_entries, 1);
} mp_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mp_backend_key);
	__type(value, struct mp_backend_value);
	__uint(max_entries, 1);
} mp_backends SEC(".maps");

/* The prefixes policies' ipBlocks name, keyed like the ipcache. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct mp_ipcache_key);
	__type(value, struct mp_cidr_value);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mp_cidr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mp_ct_key);
	__type(value, struct mp_ct_value);
	__uint(max_entries, 1);
} mp_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} mp_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct mp_counter_value);
	__uint(max_entries, MP_COUNTERS_MAX);
} mp_counters SEC(".maps");

#endif /* MESHPLANE_MAPS_H */
