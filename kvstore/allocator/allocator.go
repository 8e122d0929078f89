package allocator

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/labels"
)

// Config configures an Allocator.
type Config struct {
	// Cluster is the cluster's name: the key prefix. Required.
	Cluster string
	// ClusterID goes into bits 16-23 of every ID allocated. Required (1-255).
	ClusterID identity.ClusterID
	// Node names the references this allocator holds. Required.
	Node string
	// Filter drops labels that do not describe the workload before
	// allocation. Nil means no filtering (callers normally pass
	// labels.NewFilter(labels.DefaultFilterPatterns())).
	Filter *labels.Filter
	// MaxBatch is the most label sets (and releases) in one transaction.
	// Zero means 100. etcd's --max-txn-ops (default 128) bounds it.
	MaxBatch int
	// MaxIdentities caps how many local IDs the allocator may use, from
	// identity.MinLocal up. Zero means all of them (identity.LocalCount).
	// Lower values carve a smaller range, e.g. for tests of exhaustion.
	MaxIdentities int
	// RequestTimeout bounds one transaction. Zero means 10s.
	RequestTimeout time.Duration
	// RetryFor is how long a batch is retried while etcd is unreachable
	// before its callers get the error. Zero means 30s.
	RetryFor time.Duration
	// Linger is the longest the batcher waits for a growing queue to stop
	// growing before it commits, so that requests arriving together (pods
	// that start at once) share one transaction. It waits only while new
	// requests keep arriving. Zero means 1ms; negative disables it.
	Linger time.Duration
	// MaxInFlight is how many transactions the allocator keeps in flight at
	// once. Zero means 1: on a local etcd a second one measured no faster
	// and collided more; over a long round trip, 2 can help.
	MaxInFlight int
	// OnInvalid, if set, is the identity cache's kvstore.CacheConfig
	// OnInvalid: told about each identity value that does not decode
	// (the cache keeps the last good labels). It must not block.
	OnInvalid func(kvstore.InvalidKey)
}

func (c *Config) validate() error {
	if err := kvstore.ValidateClusterName(c.Cluster); err != nil {
		return err
	}
	if err := identity.ValidateClusterID(int(c.ClusterID)); err != nil {
		return err
	}
	if err := ValidateNodeName(c.Node); err != nil {
		return err
	}
	if c.MaxBatch < 0 || c.MaxIdentities < 0 || c.MaxIdentities > identity.LocalCount {
		return fmt.Errorf("%w: MaxBatch and MaxIdentities must be within range", kvstore.ErrConfig)
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 100
	}
	if c.MaxIdentities == 0 {
		c.MaxIdentities = identity.LocalCount
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.RetryFor == 0 {
		c.RetryFor = 30 * time.Second
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1
	}
	if c.Linger == 0 {
		c.Linger = time.Millisecond
	}
	return nil
}

// ValidateNodeName checks that a node name is usable in keys: a Kubernetes
// node name (DNS subdomain, at most 253 characters).
func ValidateNodeName(name string) error {
	ok := name != "" && len(name) <= 253
	for _, part := range strings.Split(name, ".") {
		ok = ok && part != "" && isAlnum(part[0]) && isAlnum(part[len(part)-1])
		for i := range len(part) {
			ok = ok && (isAlnum(part[i]) || part[i] == '-')
		}
	}
	if !ok {
		return fmt.Errorf("%w: node name %q: use a DNS subdomain (lowercase letters, digits, '-' and '.')", kvstore.ErrConfig, name)
	}
	return nil
}

func isAlnum(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }

// ErrExhausted is returned when every local ID of the cluster is in use.
var ErrExhausted = errors.New("identity space exhausted")

// ErrClosed is returned after the allocator's Run has ended.
var ErrClosed = errors.New("identity allocator stopped")

// Stats are the allocator's counters.
type Stats struct {
	Txns          int64 // transactions committed (allocation and release batches)
	Created       int64 // identities this allocator created (won the race for)
	Joined        int64 // label sets another node had created; only a reference was written
	Collisions    int64 // candidate IDs found taken by another label set; retried
	Restored      int64 // held identities deleted behind this node's back and re-created
	Held          int   // label sets this node references now
	CacheEntries  int   // identities of all nodes in the local cache
	InvalidCached int64 // corrupt identity values the cache has seen (it keeps the last good labels)
}

// Identity is an allocated identity and its labels.
type Identity struct {
	ID     identity.ID `json:"id"`
	Labels labels.Set  `json:"labels"`
}

// Allocator allocates security identities in etcd for one node.
//
// Allocate resolves a label set this node already references from memory.
// A new one joins a queue; one goroutine (the batcher, started by Run)
// takes everything queued while the previous transaction was in flight and
// commits it as one transaction: for each label set, a nested
// transaction either creates the ID key, the label index and this node's
// reference together, or, when the label set exists (another node won),
// writes the reference and reads the winner's ID. No locks, one round trip,
// and concurrent callers coalesce into batches the way a group commit does.
type Allocator struct {
	cfg     Config
	client  *kvstore.Client
	session *kvstore.Session
	keys    kvstore.Keys
	ids     *kvstore.Cache[labels.Set]

	mu       sync.Mutex // mu guards byHash, queue, taken and closed
	byHash   map[string]*entry
	queue    []*entry
	taken    map[identity.ID]struct{} // candidate IDs in flight or learned taken
	next     int                      // offset of the next candidate in the local range
	backoff  time.Duration            // pause after a failed transaction
	closed   bool
	wake     chan struct{}
	txns     atomic.Int64
	created  atomic.Int64
	joined   atomic.Int64
	collided atomic.Int64
	restored atomic.Int64
}

type state int

const (
	pending   state = iota // queued for allocation or in flight
	held                   // allocated; reference written
	releasing              // refs dropped to 0; reference delete queued
	deleting               // reference delete in flight
)

// entry is a label set this node uses. Fields other than set and hash are
// guarded by Allocator.mu.
type entry struct {
	set  labels.Set
	hash string
	id   identity.ID
	refs int
	st   state
	done chan struct{} // closed when a pending or deleting entry settles
	err  error
	// since is when the entry first failed to commit; zero while healthy.
	since time.Time
	// want is the ID to try first: the entry's old ID when it is restored
	// after its keys were deleted behind this node's back.
	want identity.ID
}

// New returns an allocator; Run starts it. session holds this node's lease.
func New(cfg Config, client *kvstore.Client, session *kvstore.Session) (*Allocator, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("identity allocator: %w", err)
	}
	keys, err := kvstore.NewKeys(cfg.Cluster)
	if err != nil {
		return nil, err
	}
	ids, err := kvstore.NewCache(client, kvstore.CacheConfig[labels.Set]{
		Prefix:    keys.IdentityIDPrefix(),
		Decode:    DecodeIdentity,
		OnInvalid: cfg.OnInvalid,
	})
	if err != nil {
		return nil, err
	}
	a := &Allocator{
		cfg: cfg, client: client, session: session, keys: keys, ids: ids,
		next:   nodeOffset(cfg.Node, cfg.MaxIdentities),
		byHash: make(map[string]*entry),
		taken:  make(map[identity.ID]struct{}),
		wake:   make(chan struct{}, 1),
	}
	ids.Subscribe(restorer{a})
	return a, nil
}

// restorer watches for identities deleted while this node holds them.
// That happens only when the node's references were gone (its lease was
// lost and GC ran before the session re-asserted them): the allocator
// then creates the identity again, with the same ID when it is still free.
type restorer struct{ a *Allocator }

func (restorer) Upsert(string, labels.Set) {}

func (r restorer) Delete(key string) {
	id, err := identity.Parse(key)
	if err != nil {
		return
	}
	a := r.a
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.taken, id)
	for _, e := range a.byHash {
		if e.id == id && e.st == held {
			e.st, e.want, e.done = pending, id, make(chan struct{})
			a.restored.Add(1)
			a.queue = append(a.queue, e)
			a.poke()
		}
	}
}

// DecodeIdentity parses an identity key (the ID, relative to the id/
// prefix) and value (the canonical label set) read back from etcd.
func DecodeIdentity(key string, value []byte) (labels.Set, error) {
	id, err := identity.Parse(key)
	if err != nil {
		return labels.Set{}, fmt.Errorf("identity key %q: %w", key, err)
	}
	if id.IsReserved() {
		return labels.Set{}, fmt.Errorf("identity key %q: reserved IDs are never stored", key)
	}
	set, err := labels.ParseSet(string(value))
	if err != nil {
		return labels.Set{}, fmt.Errorf("identity %d: labels: %w", id, err)
	}
	return set, nil
}

// Run runs the identity cache and the batcher until ctx ends. Allocate
// waits for the cache's first sync. Run returns after both goroutines exit.
func (a *Allocator) Run(ctx context.Context) error {
	defer func() {
		a.mu.Lock()
		a.closed = true
		for _, e := range a.queue {
			switch e.st {
			case pending:
				a.settleLocked(e, 0, ErrClosed)
			case deleting: // wake Allocate calls waiting for the delete
				close(e.done)
			}
		}
		a.queue = nil
		a.mu.Unlock()
	}()
	cacheDone := make(chan error, 1)
	go func() { cacheDone <- a.ids.Run(ctx) }()
	a.batcher(ctx)
	return <-cacheDone
}

// Allocate returns the identity of set, allocating it if needed, and holds
// a reference on it for this node until Release.
func (a *Allocator) Allocate(ctx context.Context, set labels.Set) (identity.ID, error) {
	set = a.cfg.Filter.Apply(set)
	if id, ok, err := reservedID(set); ok || err != nil {
		return id, err
	}
	if err := a.ids.WaitSynced(ctx); err != nil {
		return 0, err
	}
	h := set.Hash()
	for {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return 0, ErrClosed
		}
		e := a.byHash[h]
		switch {
		case e == nil:
			e = &entry{set: set, hash: h, refs: 1, st: pending, done: make(chan struct{})}
			a.byHash[h] = e
			a.queue = append(a.queue, e)
			a.mu.Unlock()
			a.poke()
			return a.wait(ctx, e)
		case e.st == held || e.st == releasing:
			e.refs++
			e.st = held // a queued release is skipped by the batcher
			id := e.id
			a.mu.Unlock()
			return id, nil
		case e.st == pending:
			e.refs++
			a.mu.Unlock()
			return a.wait(ctx, e)
		default: // deleting: wait for the delete, then allocate afresh
			done := e.done
			a.mu.Unlock()
			select {
			case <-done:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
	}
}

func (a *Allocator) wait(ctx context.Context, e *entry) (identity.ID, error) {
	select {
	case <-e.done:
		a.mu.Lock()
		defer a.mu.Unlock()
		return e.id, e.err
	case <-ctx.Done():
		a.mu.Lock()
		e.refs--
		if e.refs == 0 && e.st == held {
			a.releaseLocked(e)
		}
		a.mu.Unlock()
		return 0, fmt.Errorf("allocate identity for %s: %w", e.set, ctx.Err())
	}
}

// AllocateBatch allocates many label sets at once; they share transactions.
// ids[i] belongs to sets[i]. On error, the sets allocated so far stay held:
// release them or not, as with single calls.
func (a *Allocator) AllocateBatch(ctx context.Context, sets []labels.Set) ([]identity.ID, error) {
	ids := make([]identity.ID, len(sets))
	errs := make([]error, len(sets))
	var wg sync.WaitGroup
	for i, s := range sets {
		wg.Go(func() { ids[i], errs[i] = a.Allocate(ctx, s) })
	}
	wg.Wait()
	return ids, errors.Join(errs...)
}

// Release drops one reference this node holds on set. When the last one
// goes, the node's reference key is deleted (asynchronously, batched).
func (a *Allocator) Release(set labels.Set) error {
	set = a.cfg.Filter.Apply(set)
	if _, ok, err := reservedID(set); ok || err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.byHash[set.Hash()]
	if e == nil || e.refs == 0 || e.st != held {
		return fmt.Errorf("release identity of %s: this node holds no reference to it", set)
	}
	e.refs--
	if e.refs == 0 {
		a.releaseLocked(e)
	}
	return nil
}

func (a *Allocator) releaseLocked(e *entry) {
	e.st = releasing
	a.queue = append(a.queue, e)
	a.poke()
}

func (a *Allocator) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// LookupID returns the labels of id from the local cache (any node's).
func (a *Allocator) LookupID(id identity.ID) (labels.Set, bool) {
	return a.ids.Get(id.String())
}

// Identities returns every identity in the local cache.
func (a *Allocator) Identities() []Identity {
	var out []Identity
	a.ids.Range(func(k string, s labels.Set) bool {
		id, _ := identity.Parse(k)
		out = append(out, Identity{ID: id, Labels: s})
		return true
	})
	return out
}

// Subscribe adds a handler of the identity cache: every node's identities,
// keyed by the ID in decimal. It must be called before Run.
func (a *Allocator) Subscribe(h kvstore.Handler[labels.Set]) { a.ids.Subscribe(h) }

// Delivered is closed once every handler has seen the cache's first list
// (see kvstore.Cache.Delivered).
func (a *Allocator) Delivered() <-chan struct{} { return a.ids.Delivered() }

// WaitSynced waits until the identity cache holds etcd's state.
func (a *Allocator) WaitSynced(ctx context.Context) error { return a.ids.WaitSynced(ctx) }

// Synced is closed once the identity cache holds etcd's state.
func (a *Allocator) Synced() <-chan struct{} { return a.ids.Synced() }

// CacheStats returns the identity cache's counters.
func (a *Allocator) CacheStats() kvstore.CacheStats { return a.ids.Stats() }

// Invalid returns the identity keys whose value does not decode now (see
// kvstore.Cache.Invalid); keys are IDs in decimal.
func (a *Allocator) Invalid() []kvstore.InvalidKey { return a.ids.Invalid() }

// Stats returns the allocator's counters.
func (a *Allocator) Stats() Stats {
	a.mu.Lock()
	nheld := 0
	for _, e := range a.byHash {
		if e.st == held || e.st == releasing {
			nheld++
		}
	}
	a.mu.Unlock()
	cs := a.ids.Stats()
	return Stats{
		Txns: a.txns.Load(), Created: a.created.Load(), Joined: a.joined.Load(), Collisions: a.collided.Load(), Restored: a.restored.Load(),
		Held: nheld, CacheEntries: cs.Entries, InvalidCached: cs.Invalid,
	}
}

// reservedID maps a set made of one reserved:<name> label to its ID.
func reservedID(set labels.Set) (identity.ID, bool, error) {
	if set.IsEmpty() {
		return 0, false, fmt.Errorf("allocate identity: %w: the label set is empty (after filtering)", labels.ErrInvalid)
	}
	if !set.HasSource("reserved") {
		return 0, false, nil
	}
	ls := set.Labels()
	for _, l := range ls {
		if l.Source != "reserved" {
			continue
		}
		if len(ls) == 1 {
			if id, ok := identity.ReservedByName(l.Key); ok && l.Value == "" {
				return id, true, nil
			}
		}
		return 0, false, fmt.Errorf("allocate identity for %s: %w: reserved labels name fixed identities; use exactly one of reserved:host, reserved:world and the like", set, labels.ErrInvalid)
	}
	return 0, false, nil
}

// settleLocked finishes a pending entry with an ID or an error.
func (a *Allocator) settleLocked(e *entry, id identity.ID, err error) {
	e.id, e.err = id, err
	if err != nil {
		delete(a.byHash, e.hash)
	} else {
		e.st = held
		e.since = time.Time{}
	}
	close(e.done)
	if err == nil && e.refs == 0 {
		// Every caller gave up while it was in flight.
		a.releaseLocked(e)
	}
}

// batcher is the goroutine that commits queued work, up to MaxInFlight
// transactions at a time, each taking everything queued (up to MaxBatch)
// when it starts. It returns after its transactions finish.
func (a *Allocator) batcher(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, a.cfg.MaxInFlight)
	for {
		a.mu.Lock()
		empty := len(a.queue) == 0
		a.mu.Unlock()
		if empty {
			select {
			case <-ctx.Done():
				return
			case <-a.wake:
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case slots <- struct{}{}:
		}
		a.linger()
		wg.Go(func() {
			defer func() { <-slots }()
			if err := a.commitBatch(ctx); err != nil {
				a.pause(ctx)
				return
			}
			a.mu.Lock()
			a.backoff = 0
			a.mu.Unlock()
		})
	}
}

// pause waits after a failed transaction, 50ms doubling up to 2s; the
// caller holds its in-flight slot meanwhile, which throttles retries.
func (a *Allocator) pause(ctx context.Context) {
	a.mu.Lock()
	a.backoff = min(max(2*a.backoff, 50*time.Millisecond), 2*time.Second)
	d := a.backoff
	a.mu.Unlock()
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// linger lets a queue that is still growing grow a little longer, in steps
// of a tenth of Linger, until it stops growing, fills a batch, or Linger is
// over.
func (a *Allocator) linger() {
	if a.cfg.Linger <= 0 {
		return
	}
	deadline := time.Now().Add(a.cfg.Linger)
	a.mu.Lock()
	n := len(a.queue)
	a.mu.Unlock()
	for n < a.cfg.MaxBatch && time.Now().Before(deadline) {
		time.Sleep(a.cfg.Linger / 10)
		a.mu.Lock()
		m := len(a.queue)
		a.mu.Unlock()
		if m == n {
			return
		}
		n = m
	}
}

type allocOp struct {
	e    *entry
	cand identity.ID
}

// commitBatch takes up to MaxBatch queued entries and commits them in one
// transaction. Entries that need another round stay queued.
func (a *Allocator) commitBatch(ctx context.Context) error {
	// Wait for a lease before taking entries off the queue; Txn builds
	// the transaction on whichever lease is current when it commits.
	if _, err := a.session.Lease(ctx); err != nil {
		return err
	}
	var (
		allocs   []allocOp
		releases []*entry
		rest     []*entry
	)
	// An entry can be queued twice (released, re-allocated and released
	// again before the batcher ran); it must appear once in a transaction,
	// which etcd refuses when it names a key twice.
	a.mu.Lock()
	seen := make(map[*entry]struct{}, len(a.queue))
	for _, e := range a.queue {
		if _, dup := seen[e]; dup {
			continue
		}
		seen[e] = struct{}{}
		if len(allocs)+len(releases) >= a.cfg.MaxBatch {
			rest = append(rest, e)
			continue
		}
		switch e.st {
		case pending:
			cand, err := a.candidateLocked(e)
			if err != nil {
				a.settleLocked(e, 0, err)
				continue
			}
			a.taken[cand] = struct{}{}
			allocs = append(allocs, allocOp{e: e, cand: cand})
		case releasing:
			e.st = deleting
			e.done = make(chan struct{})
			releases = append(releases, e)
		case deleting: // a delete that failed before; try again
			releases = append(releases, e)
		}
		// held: a release that was cancelled by a new Allocate; drop it.
	}
	a.queue = rest
	a.mu.Unlock()
	if len(allocs)+len(releases) == 0 {
		return nil
	}

	refs := make([]string, len(releases))
	for i, e := range releases {
		refs[i] = a.keys.IdentityRef(e.hash, a.cfg.Node)
		a.session.Disown(refs[i])
	}
	// The answers of the commit that counted, read once by OwnedBy.
	type result struct {
		id  identity.ID
		err error
	}
	results := make([]result, len(allocs))
	tctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	_, err := a.session.Txn(tctx, func(lease kvstore.LeaseID) (kvstore.LeaseTxn, error) {
		ops := make([]clientv3.Op, 0, len(allocs)+len(releases))
		for _, op := range allocs {
			ops = append(ops, a.allocTxn(op, lease))
		}
		for _, ref := range refs {
			ops = append(ops, clientv3.OpDelete(ref))
		}
		return kvstore.LeaseTxn{Then: ops, OwnedBy: func(resp *clientv3.TxnResponse) []kvstore.KeyValue {
			var owned []kvstore.KeyValue
			for i, op := range allocs {
				id, err := a.allocResult(resp.Responses[i].GetResponseTxn(), op)
				results[i] = result{id, err}
				if err == nil && id != 0 {
					owned = append(owned, kvstore.KeyValue{Key: a.keys.IdentityRef(op.e.hash, a.cfg.Node)})
				}
			}
			return owned
		}}, nil
	})
	cancel()
	if err != nil {
		a.requeue(allocs, releases, err)
		return fmt.Errorf("identity batch: %w", err)
	}
	a.txns.Add(1)

	a.mu.Lock()
	defer a.mu.Unlock()
	for i, op := range allocs {
		// A candidate that was created or found taken stays in taken until
		// the watch cache has it (candidateLocked cleans up).
		id, err := results[i].id, results[i].err
		if id != op.cand {
			delete(a.taken, op.cand)
		}
		switch {
		case err != nil:
			a.settleLocked(op.e, 0, err)
		case id == 0: // candidate taken: try another next round
			a.taken[op.cand] = struct{}{}
			// Another node is filling this part of the range: move away
			// rather than walk into its next IDs too.
			a.next = rand.IntN(a.cfg.MaxIdentities)
			a.queue = append(a.queue, op.e)
		default:
			a.settleLocked(op.e, id, nil)
		}
	}
	for _, e := range releases {
		delete(a.byHash, e.hash)
		close(e.done)
	}
	if len(a.queue) > 0 {
		a.poke()
	}
	return nil
}

// allocTxn is the nested transaction for one label set:
//
//	if labels/<h> and id/<cand> are both absent:
//	    put id/<cand> = labels, labels/<h> = cand, refs/<h>/<node> = cand (lease)
//	else if labels/<h> exists:
//	    put refs/<h>/<node> (lease); get labels/<h>
//	else:
//	    get id/<cand>   (the candidate is taken by another label set)
func (a *Allocator) allocTxn(op allocOp, lease kvstore.LeaseID) clientv3.Op {
	idx := a.keys.IdentityLabels(op.e.hash)
	idKey := a.keys.IdentityID(op.cand.String())
	ref := a.keys.IdentityRef(op.e.hash, a.cfg.Node)
	withLease := clientv3.WithLease(clientv3.LeaseID(lease))
	join := clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(idx), ">", 0)},
		[]clientv3.Op{clientv3.OpPut(ref, "", withLease), clientv3.OpGet(idx)},
		[]clientv3.Op{clientv3.OpGet(idKey)},
	)
	return clientv3.OpTxn(
		[]clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(idx), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(idKey), "=", 0),
		},
		[]clientv3.Op{
			clientv3.OpPut(idKey, op.e.set.String()),
			clientv3.OpPut(idx, op.cand.String()),
			clientv3.OpPut(ref, "", withLease),
		},
		[]clientv3.Op{join},
	)
}

// allocResult reads one label set's nested answer: the ID, 0 to retry with
// another candidate, or an error.
func (a *Allocator) allocResult(r *pb.TxnResponse, op allocOp) (identity.ID, error) {
	if r.Succeeded {
		a.created.Add(1)
		return op.cand, nil
	}
	join := r.Responses[0].GetResponseTxn()
	if !join.Succeeded {
		a.collided.Add(1)
		return 0, nil
	}
	kvs := join.Responses[1].GetResponseRange().Kvs
	if len(kvs) != 1 {
		return 0, fmt.Errorf("allocate identity for %s: label index vanished during the transaction", op.e.set)
	}
	id, err := identity.Parse(string(kvs[0].Value))
	if err != nil || id.Cluster() != a.cfg.ClusterID {
		return 0, fmt.Errorf("allocate identity for %s: label index %s holds %q, not an ID of cluster %d: repair or delete the key",
			op.e.set, kvs[0].Key, kvs[0].Value, a.cfg.ClusterID)
	}
	a.joined.Add(1)
	return id, nil
}

// requeue puts a failed batch back, or fails it once it has been failing
// for longer than RetryFor.
func (a *Allocator) requeue(allocs []allocOp, releases []*entry, cause error) {
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, op := range allocs {
		delete(a.taken, op.cand)
		e := op.e
		if e.since.IsZero() {
			e.since = now
		}
		if now.Sub(e.since) > a.cfg.RetryFor {
			a.settleLocked(e, 0, fmt.Errorf("allocate identity for %s: %w", e.set, cause))
			continue
		}
		a.queue = append(a.queue, e)
	}
	// The deletes may or may not have happened: keep them deleting (an
	// Allocate of the same labels waits) and delete again, which is harmless.
	a.queue = append(a.queue, releases...)
}

// candidateLocked picks a local ID that is neither in the cache nor in
// flight. Each node walks the range from its own starting point (a hash of
// its name), so racing nodes rarely pick the same candidate; collisions are
// still safe, only slower.
func (a *Allocator) candidateLocked(e *entry) (identity.ID, error) {
	if want := e.want; want != 0 {
		e.want = 0
		if _, busy := a.taken[want]; !busy {
			if _, used := a.ids.Get(want.String()); !used {
				return want, nil
			}
		}
	}
	n := a.cfg.MaxIdentities
	for i := range n {
		off := (a.next + i) % n
		local := identity.MinLocal + off
		id, _ := identity.New(a.cfg.ClusterID, local)
		_, busy := a.taken[id]
		if _, used := a.ids.Get(id.String()); used {
			if busy {
				delete(a.taken, id)
			}
			continue
		}
		if busy {
			continue
		}
		a.next = off + 1
		return id, nil
	}
	return 0, fmt.Errorf("allocate identity: %w: all %d local IDs of cluster %s (ID %d) are in use; release workloads or run `meshctl identity gc`",
		ErrExhausted, n, a.cfg.Cluster, a.cfg.ClusterID)
}

// nodeOffset spreads nodes' starting points over the local range.
func nodeOffset(node string, n int) int {
	sum := sha256.Sum256([]byte(node))
	return int(binary.BigEndian.Uint64(sum[:8]) % uint64(n))
}
