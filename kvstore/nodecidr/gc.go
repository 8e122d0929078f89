package nodecidr

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/kvstore"
)

// Clock tells the time; tests pass one they control.
type Clock interface{ Now() time.Time }

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// GCConfig configures the reclaiming of dead nodes' CIDRs.
type GCConfig struct {
	// Cluster is the cluster name. Required.
	Cluster string
	// GracePeriod is how long a node must be gone (no node record, so no
	// lease) before its CIDRs are reclaimed. Zero means 0 (reclaim in the
	// second pass); DefaultGracePeriod suits a long-running collector.
	GracePeriod time.Duration
	// Clock is the time source; nil means the wall clock.
	Clock Clock
}

// DefaultGracePeriod is the grace period of the control plane's collector.
const DefaultGracePeriod = 10 * time.Minute

// GCResult says what one pass did.
type GCResult struct {
	Nodes     int `json:"nodes"`     // nodes holding CIDRs
	Alive     int `json:"alive"`     // of which with a node record
	Gone      int `json:"gone"`      // without one, waiting out the grace period
	Members   int `json:"members"`   // without one, but still members of the cluster (members/): kept
	Reclaimed int `json:"reclaimed"` // node CIDRs freed in this pass
	Conflicts int `json:"conflicts"` // reclaims refused: the node came back or changed its claims
	Invalid   int `json:"invalid"`   // corrupt index keys skipped
}

// GC reclaims the CIDRs of nodes that are gone.
//
// A node is alive while its record (nodes/<node>, on its lease) exists. A
// pass marks nodes that hold CIDRs but have no record, with the mod
// revision of their index key; a later pass, GracePeriod after the mark,
// deletes the index and the claims in a transaction that compares that the
// node record is still absent and the index unchanged. A node that comes
// back in between re-creates its record first, and the reclaim fails: a
// live node's CIDR is never taken.
//
// Where the control plane writes the node membership (members/<node>,
// node.Member; any key under members/ means it does), membership decides
// instead of the grace period: a node that is still a member keeps its
// CIDRs however long its agent is down (it comes back to the same
// CIDRs), and one that is no longer a member and has no record is
// reclaimed in the pass after the one that found it gone, without
// waiting out the grace period (Kubernetes deleted it). The reclaiming
// transaction also compares that the node is still no member.
type GC struct {
	client *kvstore.Client
	keys   kvstore.Keys
	cfg    GCConfig
	marks  map[string]gcMark
}

type gcMark struct {
	since  time.Time
	idxRev int64
}

// NewGC returns a collector.
func NewGC(client *kvstore.Client, cfg GCConfig) (*GC, error) {
	keys, err := kvstore.NewKeys(cfg.Cluster)
	if err != nil {
		return nil, err
	}
	if cfg.GracePeriod < 0 {
		return nil, fmt.Errorf("%w: IPAM GC grace period must not be negative", kvstore.ErrConfig)
	}
	if cfg.Clock == nil {
		cfg.Clock = wallClock{}
	}
	return &GC{client: client, keys: keys, cfg: cfg, marks: make(map[string]gcMark)}, nil
}

// Pass runs one pass.
func (g *GC) Pass(ctx context.Context) (GCResult, error) {
	var res GCResult
	index, _, err := g.client.List(ctx, g.keys.IPAMNodesPrefix())
	if err != nil {
		return res, fmt.Errorf("ipam gc: %w", err)
	}
	records, _, err := g.client.List(ctx, g.keys.NodesPrefix())
	if err != nil {
		return res, fmt.Errorf("ipam gc: %w", err)
	}
	alive := make(map[string]bool, len(records))
	for _, kv := range records {
		alive[strings.TrimPrefix(kv.Key, g.keys.NodesPrefix())] = true
	}
	members, _, err := g.client.List(ctx, g.keys.MembersPrefix())
	if err != nil {
		return res, fmt.Errorf("ipam gc: %w", err)
	}
	member := make(map[string]bool, len(members))
	for _, kv := range members {
		member[strings.TrimPrefix(kv.Key, g.keys.MembersPrefix())] = true
	}
	grace := g.cfg.GracePeriod
	if len(members) > 0 {
		grace = 0 // membership says who is gone: see GC
	}
	now := g.cfg.Clock.Now()
	seen := make(map[string]bool, len(index))
	for _, kv := range index {
		node := strings.TrimPrefix(kv.Key, g.keys.IPAMNodesPrefix())
		seen[node] = true
		var idx NodeCIDRs
		if err := json.Unmarshal(kv.Value, &idx); err != nil {
			res.Invalid++
			continue
		}
		res.Nodes++
		if alive[node] {
			res.Alive++
			delete(g.marks, node)
			continue
		}
		if member[node] {
			res.Members++
			delete(g.marks, node)
			continue
		}
		m, ok := g.marks[node]
		if !ok || m.idxRev != kv.ModRevision {
			g.marks[node] = gcMark{since: now, idxRev: kv.ModRevision}
			res.Gone++
			continue
		}
		if now.Sub(m.since) < grace {
			res.Gone++
			continue
		}
		ok, err := g.reclaim(ctx, node, idx, kv.ModRevision)
		if err != nil {
			return res, err
		}
		delete(g.marks, node)
		if ok {
			res.Reclaimed += len(idx.CIDRs)
		} else {
			res.Conflicts++
		}
	}
	for node := range g.marks {
		if !seen[node] {
			delete(g.marks, node)
		}
	}
	return res, nil
}

func (g *GC) reclaim(ctx context.Context, node string, idx NodeCIDRs, idxRev int64) (bool, error) {
	ops := []clientv3.Op{clientv3.OpDelete(g.keys.IPAMNode(node))}
	for _, c := range idx.CIDRs {
		ops = append(ops, clientv3.OpDelete(g.keys.IPAMCIDR(c.String())))
	}
	resp, err := g.client.Etcd().Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(g.keys.Node(node)), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(g.keys.Member(node)), "=", 0),
		clientv3.Compare(clientv3.ModRevision(g.keys.IPAMNode(node)), "=", idxRev),
	).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("ipam gc: reclaim CIDRs of node %s: %w", node, err)
	}
	return resp.Succeeded, nil
}
