package bpf_test

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/meshplane/meshplane/bpf"
)

// The agent at start: open (or, on first start, create) the node's pinned
// maps, then write what etcd says in batches. A restarted agent finds the
// previous agent's entries still there and writes only the difference.
func ExampleOpenMaps() {
	maps, err := bpf.OpenMaps(bpf.Config{Node: "node-1"})
	switch {
	case errors.Is(err, bpf.ErrNotSupported):
		fmt.Println("no eBPF here:", err)
		return
	case errors.Is(err, bpf.ErrIncompatible):
		fmt.Println("a pinned map needs an operator:", err)
		return
	case err != nil:
		fmt.Println(err)
		return
	}
	defer maps.Close()

	keys := []bpf.IPCacheKey{
		bpf.IPCacheKeyFor(netip.MustParsePrefix("10.1.0.0/24")),
		bpf.IPCacheKeyFor(netip.MustParsePrefix("fd00:1::/64")),
	}
	node := netip.MustParseAddr("192.168.0.2")
	vals := []bpf.IPCacheValue{
		bpf.IPCacheValueFor(65792, node, 0),
		bpf.IPCacheValueFor(65792, node, 0),
	}
	if _, err := maps.IPCache.PutBatch(keys, vals); errors.Is(err, bpf.ErrMapFull) {
		fmt.Println(err) // names the map and the Config field to raise
		return
	}

	v, ok, err := maps.IPCache.Lookup(bpf.IPCacheLookupKey(netip.MustParseAddr("10.1.0.7")))
	fmt.Println(v, ok, err)
}

// Port ranges in policy are written as port prefixes.
func ExamplePortPrefixes() {
	prefixes, _ := bpf.PortPrefixes(8080, 8090)
	for _, p := range prefixes {
		k, err := bpf.PolicyKeyFor(12, bpf.Ingress, 65792, bpf.ProtoTCP, p.Port, p.Bits)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(k)
	}
	// Output:
	// ep=12 ingress identity=65792 tcp/8080-8087
	// ep=12 ingress identity=65792 tcp/8088-8089
	// ep=12 ingress identity=65792 tcp/8090
}
