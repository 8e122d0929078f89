package controlplane

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/allocator"
	"github.com/meshplane/meshplane/kvstore/nodecidr"
	"github.com/meshplane/meshplane/pod"
)

// collect runs the garbage collectors every GCInterval until ctx (the
// term) ends. Each is safe against agents racing it (they compare
// revisions in the deleting transaction), so a pass that overlaps a
// change of leader is harmless. Errors are logged and retried next pass.
func (cp *ControlPlane) collect(ctx context.Context, pods Lister[pod.Pod]) {
	ids, err := allocator.NewGC(cp.cfg.Client, allocator.GCConfig{Cluster: cp.cfg.Cluster, GracePeriod: cp.cfg.GracePeriod, Clock: cp.cfg.Clock})
	if err != nil {
		cp.cfg.Logger.Error("identity gc", "error", err)
		return
	}
	cidrs, err := nodecidr.NewGC(cp.cfg.Client, nodecidr.GCConfig{Cluster: cp.cfg.Cluster, GracePeriod: cp.cfg.GracePeriod, Clock: cp.cfg.Clock})
	if err != nil {
		cp.cfg.Logger.Error("ipam gc", "error", err)
		return
	}
	eps := newEndpointGC(cp.cfg.Client, cp.keys, cp.cfg.GracePeriod, cp.cfg.Clock, pods)
	tick := time.NewTicker(cp.cfg.GCInterval)
	defer tick.Stop()
	for {
		if res, err := ids.Pass(ctx); err != nil {
			cp.warnGC(ctx, "identity", err)
		} else if res.Deleted > 0 {
			cp.cfg.Logger.Info("identity gc", "deleted", res.Deleted, "candidates", res.Candidates)
		}
		if res, err := cidrs.Pass(ctx); err != nil {
			cp.warnGC(ctx, "ipam", err)
		} else if res.Reclaimed > 0 {
			cp.cfg.Logger.Info("ipam gc", "reclaimed", res.Reclaimed, "gone", res.Gone)
		}
		if n, err := eps.pass(ctx); err != nil {
			cp.warnGC(ctx, "endpoints", err)
		} else if n > 0 {
			cp.cfg.Logger.Info("endpoint gc", "deleted", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (cp *ControlPlane) warnGC(ctx context.Context, which string, err error) {
	if ctx.Err() == nil {
		cp.cfg.Logger.Warn("gc pass failed; retrying next pass", "gc", which, "error", err)
	}
}

// endpointGC deletes endpoints/<ip> keys left by nodes that are gone.
// They normally vanish with their node's lease; one outlives it only when
// its node's session was repaired onto a lease that the node then left
// behind. A key is deleted when its node has had no record, and its pod
// (if the source knows pods) no object, through two passes GracePeriod
// apart, and only if the key is unchanged since (DeleteIf).
//
// With the node membership written (members/), a node that is still a
// member keeps its endpoints, and one that is not loses them in the pass
// after the one that found them, without the grace period, as IPAM's GC
// does with its CIDRs.
type endpointGC struct {
	client *kvstore.Client
	keys   kvstore.Keys
	grace  time.Duration
	clock  Clock
	pods   Lister[pod.Pod]
	marks  map[string]epMark
}

type epMark struct {
	since time.Time
	rev   int64
}

func newEndpointGC(c *kvstore.Client, k kvstore.Keys, grace time.Duration, clock Clock, pods Lister[pod.Pod]) *endpointGC {
	return &endpointGC{client: c, keys: k, grace: grace, clock: clock, pods: pods, marks: map[string]epMark{}}
}

// pass runs one pass and returns how many keys it deleted.
func (g *endpointGC) pass(ctx context.Context) (int, error) {
	records, _, err := g.client.List(ctx, g.keys.NodesPrefix())
	if err != nil {
		return 0, fmt.Errorf("endpoint gc: %w", err)
	}
	alive := make(map[string]bool, len(records))
	for _, kv := range records {
		alive[strings.TrimPrefix(kv.Key, g.keys.NodesPrefix())] = true
	}
	members, _, err := g.client.List(ctx, g.keys.MembersPrefix())
	if err != nil {
		return 0, fmt.Errorf("endpoint gc: %w", err)
	}
	for _, kv := range members {
		alive[strings.TrimPrefix(kv.Key, g.keys.MembersPrefix())] = true
	}
	grace := g.grace
	if len(members) > 0 {
		grace = 0
	}
	eps, _, err := g.client.List(ctx, g.keys.EndpointsPrefix())
	if err != nil {
		return 0, fmt.Errorf("endpoint gc: %w", err)
	}
	now := g.clock.Now()
	seen := make(map[string]bool, len(eps))
	deleted := 0
	for _, kv := range eps {
		ip := strings.TrimPrefix(kv.Key, g.keys.EndpointsPrefix())
		e, err := ipcache.Decode(ip, kv.Value)
		if err != nil || alive[e.Node] || g.podExists(e) {
			continue // a corrupt key is for a person to look at
		}
		seen[kv.Key] = true
		m, ok := g.marks[kv.Key]
		if !ok || m.rev != kv.ModRevision {
			g.marks[kv.Key] = epMark{since: now, rev: kv.ModRevision}
			continue
		}
		if now.Sub(m.since) < grace {
			continue
		}
		delete(g.marks, kv.Key)
		switch err := g.client.DeleteIf(ctx, kv.Key, kv.ModRevision); {
		case err == nil:
			deleted++
		case errors.Is(err, kvstore.ErrConflict):
			// Rewritten meanwhile: its node is back.
		default:
			return deleted, fmt.Errorf("endpoint gc: %w", err)
		}
	}
	for k := range g.marks {
		if !seen[k] {
			delete(g.marks, k)
		}
	}
	return deleted, nil
}

// podExists reports whether the source still holds the endpoint's pod on
// the endpoint's node.
func (g *endpointGC) podExists(e ipcache.Entry) bool {
	if g.pods == nil || e.Pod == "" {
		return false
	}
	p, ok, err := g.pods.Get(e.Namespace + "/" + e.Pod)
	return err != nil || ok && p.Node == e.Node
}
