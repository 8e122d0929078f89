// Package ipam is the pure part of meshplane's IP address management: the
// model of cluster pools (CIDRs per family and a node mask size), their
// validation, and the carving of a pool into node CIDRs. It does no I/O.
//
// Node CIDRs are claimed in etcd by kvstore/nodecidr; pod IPs are handed
// out on the node by ipam/podip.
//
// Invariants: a valid pool's CIDRs are masked, of the right family, do not
// overlap each other, and are larger than the node mask size; valid pools
// do not overlap each other. Because every node CIDR of a pool is aligned
// on the pool's node mask, two node CIDRs of valid pools are either equal
// or disjoint, which is what lets node claims be plain compare-and-create
// on the CIDR's key.
package ipam
