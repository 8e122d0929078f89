// Package identity defines security identities: 24-bit numbers that stand for
// canonical label sets (see package labels) in the datapath and in policy.
//
// Layout of an ID:
//
//	bits 16-23  cluster ID (1-255), unique in a mesh
//	bits  0-15  local ID (256-65535), allocated in the cluster's etcd
//
// IDs 1-255 carry no cluster bits: they are the reserved identities (host,
// world, unmanaged, health, init, remote-node, kube-apiserver), fixed numbers
// that mean the same everywhere. Because the cluster ID is part of every
// allocated ID, identities from different clusters never collide and a mesh
// needs no negotiation. Allocation itself lives in kvstore/allocator; this
// package is pure.
package identity
