package nodecidr

import (
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/node"
)

// NodeStatus is what etcd says about one node's CIDRs.
type NodeStatus struct {
	Node  string         `json:"node"`
	CIDRs []netip.Prefix `json:"cidrs"`
	// Alive is whether the node record (on the node's lease) exists.
	Alive bool `json:"alive"`
	// Usage is the pod IP usage the node last published, if any.
	Usage []node.CIDRUsage `json:"usage,omitempty"`
}

// PoolUsage is how much of a pool's family is claimed.
type PoolUsage struct {
	Pool    string      `json:"pool"`
	Family  ipam.Family `json:"family"`
	Claimed int         `json:"claimed"`
	Size    *big.Int    `json:"size"` // node CIDRs in all
}

// Status reads the pools, their usage and every node's CIDRs. Corrupt
// index keys are returned in bad, not fatal.
func Status(ctx context.Context, client *kvstore.Client, cluster string) (pools []ipam.Pool, usage []PoolUsage, nodes []NodeStatus, bad []error, err error) {
	p, err := NewPools(client, cluster)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	snap, err := p.read(ctx, true)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	for _, pool := range snap.pools {
		for _, f := range pool.Families() {
			u := PoolUsage{Pool: pool.Name, Family: f, Size: pool.Size(f)}
			for c, cl := range snap.claims {
				if cl.Pool == pool.Name && ipam.Of(c) == f {
					u.Claimed++
				}
			}
			usage = append(usage, u)
		}
	}
	index, _, err := client.List(ctx, p.keys.IPAMNodesPrefix())
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("read node CIDR index: %w", err)
	}
	records, _, err := client.List(ctx, p.keys.NodesPrefix())
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("read node records: %w", err)
	}
	alive := make(map[string]*node.Record, len(records))
	for _, kv := range records {
		var r node.Record
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			bad = append(bad, fmt.Errorf("node record %s: %w", kv.Key, err))
		}
		alive[strings.TrimPrefix(kv.Key, p.keys.NodesPrefix())] = &r
	}
	for _, kv := range index {
		node := strings.TrimPrefix(kv.Key, p.keys.IPAMNodesPrefix())
		var idx NodeCIDRs
		if err := json.Unmarshal(kv.Value, &idx); err != nil {
			bad = append(bad, fmt.Errorf("node CIDR index %s: %w", kv.Key, err))
			continue
		}
		st := NodeStatus{Node: node, CIDRs: idx.CIDRs}
		if r := alive[node]; r != nil {
			st.Alive, st.Usage = true, r.Usage
		}
		nodes = append(nodes, st)
	}
	slices.SortFunc(nodes, func(a, b NodeStatus) int { return strings.Compare(a.Node, b.Node) })
	return snap.pools, usage, nodes, bad, nil
}
