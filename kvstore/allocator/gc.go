package allocator

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/labels"
)

// Clock tells the time; tests pass one they control.
type Clock interface{ Now() time.Time }

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// GCConfig configures identity garbage collection.
type GCConfig struct {
	// Cluster is the cluster whose identities are collected. Required.
	Cluster string
	// GracePeriod is how long an identity must stay unreferenced, seen by
	// consecutive passes, before it is deleted. Zero means 0: delete in
	// the second pass (still safe: see GC). DefaultGracePeriod suits a
	// long-running collector.
	GracePeriod time.Duration
	// Interval is the time between passes of Run. Zero means 1 minute.
	Interval time.Duration
	// DeletesPerSecond limits deletions. Zero means 100.
	DeletesPerSecond float64
	// Clock is the time source. Nil means the wall clock.
	Clock Clock
}

// DefaultGracePeriod is the grace period the control plane uses.
const DefaultGracePeriod = 10 * time.Minute

// GCResult tells what one pass did.
type GCResult struct {
	Identities int   `json:"identities"` // identity keys seen
	Referenced int   `json:"referenced"` // of which referenced by a node
	Candidates int   `json:"candidates"` // unreferenced, waiting out the grace period
	Deleted    int   `json:"deleted"`    // deleted in this pass
	Conflicts  int   `json:"conflicts"`  // deletions refused by etcd: a reference appeared or the keys changed
	Invalid    int   `json:"invalid"`    // corrupt keys skipped (not deleted: a person should look)
	Revision   int64 `json:"revision"`   // the etcd revision the pass read
}

// GC deletes identities no node references.
//
// Two phases with a revision check: a pass reads every identity, index and
// reference key at one revision and marks identities without references,
// remembering the mod revisions of their ID and index keys. A later pass
// that still sees one unreferenced after GracePeriod deletes it in a
// transaction that compares both mod revisions and that the label set has
// no reference key at all (a range compare). An agent that takes a
// reference in between either commits first, and the delete fails, or
// finds the index gone, and allocates afresh: a referenced ID is never
// deleted, whatever the timing.
//
// A GC is not safe for concurrent use: run one per cluster (the control
// plane's leader).
type GC struct {
	client *kvstore.Client
	keys   kvstore.Keys
	cfg    GCConfig
	limit  *rate.Limiter
	marks  map[identity.ID]mark
}

type mark struct {
	since         time.Time
	idRev, idxRev int64
	hash          string
}

// NewGC returns a collector.
func NewGC(client *kvstore.Client, cfg GCConfig) (*GC, error) {
	keys, err := kvstore.NewKeys(cfg.Cluster)
	if err != nil {
		return nil, err
	}
	if cfg.GracePeriod < 0 || cfg.Interval < 0 || cfg.DeletesPerSecond < 0 {
		return nil, fmt.Errorf("%w: identity GC durations and rate must not be negative", kvstore.ErrConfig)
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Minute
	}
	if cfg.DeletesPerSecond == 0 {
		cfg.DeletesPerSecond = 100
	}
	if cfg.Clock == nil {
		cfg.Clock = wallClock{}
	}
	burst := max(1, int(cfg.DeletesPerSecond))
	return &GC{
		client: client, keys: keys, cfg: cfg,
		limit: rate.NewLimiter(rate.Limit(cfg.DeletesPerSecond), burst),
		marks: make(map[identity.ID]mark),
	}, nil
}

// Run runs a pass every Interval until ctx ends. A failed pass is retried
// at the next interval; onPass, if set, sees every pass's result.
func (g *GC) Run(ctx context.Context, onPass func(GCResult, error)) error {
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	for {
		res, err := g.Pass(ctx)
		if onPass != nil {
			onPass(res, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

type scanned struct {
	labels labels.Set
	hash   string
	rev    int64
}

// Pass runs one pass: mark unreferenced identities, delete those whose
// grace period is over.
func (g *GC) Pass(ctx context.Context) (GCResult, error) {
	var res GCResult
	base := g.keys.Prefix() + "identities/"
	kvs, rev, err := g.client.List(ctx, base)
	if err != nil {
		return res, fmt.Errorf("identity gc: %w", err)
	}
	res.Revision = rev
	ids := make(map[identity.ID]scanned)
	index := make(map[string]kvstore.KeyValue) // hash → index key
	refs := make(map[string]int)               // hash → references
	for _, kv := range kvs {
		switch rest := strings.TrimPrefix(kv.Key, base); {
		case strings.HasPrefix(rest, "id/"):
			key := strings.TrimPrefix(rest, "id/")
			set, err := DecodeIdentity(key, kv.Value)
			if err != nil {
				res.Invalid++
				continue
			}
			id, _ := identity.Parse(key)
			ids[id] = scanned{labels: set, hash: set.Hash(), rev: kv.ModRevision}
		case strings.HasPrefix(rest, "labels/"):
			index[strings.TrimPrefix(rest, "labels/")] = kv
		case strings.HasPrefix(rest, "refs/"):
			hash, _, _ := strings.Cut(strings.TrimPrefix(rest, "refs/"), "/")
			refs[hash]++
		}
	}
	res.Identities = len(ids)
	now := g.cfg.Clock.Now()
	var due []identity.ID
	for id, s := range ids {
		if refs[s.hash] > 0 {
			res.Referenced++
			delete(g.marks, id)
			continue
		}
		idx, ok := index[s.hash]
		if !ok || string(idx.Value) != id.String() {
			// The index does not point back: not ours to judge.
			res.Invalid++
			continue
		}
		m, ok := g.marks[id]
		if !ok || m.idRev != s.rev || m.idxRev != idx.ModRevision {
			g.marks[id] = mark{since: now, idRev: s.rev, idxRev: idx.ModRevision, hash: s.hash}
			res.Candidates++
			continue
		}
		if now.Sub(m.since) < g.cfg.GracePeriod {
			res.Candidates++
			continue
		}
		due = append(due, id)
	}
	for id := range g.marks {
		if _, ok := ids[id]; !ok {
			delete(g.marks, id)
		}
	}
	const batch = 64
	for len(due) > 0 {
		n := min(batch, len(due))
		if err := g.limit.WaitN(ctx, min(n, g.limit.Burst())); err != nil {
			return res, fmt.Errorf("identity gc: %w", err)
		}
		del, conflicts, err := g.sweep(ctx, due[:n])
		res.Deleted += del
		res.Conflicts += conflicts
		if err != nil {
			return res, err
		}
		due = due[n:]
	}
	return res, nil
}

// sweep deletes identities whose marks still hold, one nested transaction
// per identity inside one outer transaction.
func (g *GC) sweep(ctx context.Context, ids []identity.ID) (deleted, conflicts int, err error) {
	ops := make([]clientv3.Op, 0, len(ids))
	for _, id := range ids {
		m := g.marks[id]
		idKey, idx := g.keys.IdentityID(id.String()), g.keys.IdentityLabels(m.hash)
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.ModRevision(idKey), "=", m.idRev),
				clientv3.Compare(clientv3.ModRevision(idx), "=", m.idxRev),
				// No reference key at all: a range compare holds for every
				// key in the range, and for none when the range is empty.
				clientv3.Compare(clientv3.CreateRevision(g.keys.IdentityRefs(m.hash)), "=", 0).WithPrefix(),
			},
			[]clientv3.Op{clientv3.OpDelete(idKey), clientv3.OpDelete(idx)},
			nil,
		))
	}
	resp, err := g.client.Etcd().Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return 0, 0, fmt.Errorf("identity gc: delete: %w", err)
	}
	for i, id := range ids {
		delete(g.marks, id)
		if resp.Responses[i].GetResponseTxn().Succeeded {
			deleted++
		} else {
			conflicts++
		}
	}
	return deleted, conflicts, nil
}
