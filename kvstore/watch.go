package kvstore

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// Decoder turns a key (relative to the cache's prefix) and its value into a
// T. An error marks the value invalid: it is counted, reported through
// CacheConfig.OnInvalid and Cache.Invalid, and never replaces the key's
// last good value (see Cache).
type Decoder[T any] func(key string, value []byte) (T, error)

// Handler receives a cache's changes. Calls come from one goroutine per
// handler, never from the watch itself, so a slow handler delays only its
// own later calls. Changes to one key are coalesced: a handler sees the
// latest state, not every intermediate one, so Delete may come for a key
// whose Upsert it never saw. Upsert and Delete must not block for long;
// they must not call back into Run.
type Handler[T any] interface {
	Upsert(key string, value T)
	Delete(key string)
}

// InvalidHandler is an optional capability of a Handler: a handler that
// implements it is told about keys whose value Decode rejects and that
// have no last good value, so that it can isolate what the key may concern
// (an agent denies a namespace's traffic in place of a policy it cannot
// read). It is called like Upsert and Delete, from the handler's delivery
// goroutine and coalesced with them: the handler sees the key's state at
// delivery time. A later valid value comes as Upsert, a delete as Delete.
//
// A key with a last good value is not delivered when it turns invalid:
// the handler keeps the value it has, which is the one in force.
// Handlers that do not implement InvalidHandler see nothing of keys that
// were never valid.
type InvalidHandler interface {
	Invalid(key string, err error)
}

// InvalidKey is a key whose stored value Decode rejects.
type InvalidKey struct {
	// Key is relative to the cache's prefix.
	Key string
	// Err is what Decode said.
	Err error
	// ModRevision is the etcd revision of the invalid value.
	ModRevision int64
	// LastGood is true when the key had a valid value before: that value
	// stays in force (Get returns it) until the key is fixed or deleted.
	LastGood bool
}

// CacheConfig configures a Cache.
type CacheConfig[T any] struct {
	// Prefix is the etcd prefix to mirror. Required.
	Prefix string
	// Decode parses values. Required.
	Decode Decoder[T]
	// OnInvalid, if set, is told about each value Decode rejects, once per
	// value (a list after a compaction does not report an unchanged one
	// again). It is called from the watch goroutine after the cache has
	// applied the change, so it may read the cache (Get, Invalid); it must
	// not block. LastGood says whether a last good value stays in force.
	OnInvalid func(InvalidKey)
	// RetryInterval is the first pause after a failed list; it doubles up
	// to 5s. Zero means 100ms.
	RetryInterval time.Duration
}

// CacheStats are a cache's counters.
type CacheStats struct {
	Entries     int   // values in force now, last good values of invalid keys included
	InvalidKeys int   // keys whose stored value is invalid now (see Cache.Invalid)
	Invalid     int64 // values rejected by Decode, ever
	Relists     int64 // full lists, the first included
	Events      int64 // watch events applied
	Revision    int64 // etcd revision the cache reflects
}

// Cache is a typed, local mirror of an etcd prefix. Run lists the prefix,
// then watches from the list's revision; after a compaction or a broken
// watch it lists again and passes only the difference to handlers. Reads
// (Get, Range, Len, Invalid) are safe from any goroutine.
//
// A value that Decode rejects (a corrupt or hand-edited key) never removes
// or replaces a valid one: the key's last good value stays in force, for
// Get and for the handlers, and the key is recorded as invalid (Invalid)
// until a valid value or a delete comes. A delete is a legitimate change:
// it removes the value and the invalid mark. A key that was never valid
// has no value; handlers that implement InvalidHandler are told about it.
// A list (the first, or after a compaction) keeps the same rules: a key
// that is invalid in the list keeps the last good value the cache had.
// Consumers therefore never act on a corrupt value by dropping what it
// replaced, which is what keeps a corrupt policy from opening traffic.
//
// Goroutines: Run owns the watch loop and one delivery goroutine per
// handler, and returns after all of them exit.
type Cache[T any] struct {
	client *Client
	cfg    CacheConfig[T]

	mu       sync.RWMutex // mu guards entries, invalid, rev and changeRev
	entries  map[string]entry[T]
	invalid  map[string]invalidEntry
	rev      int64
	handlers []*delivery[T]

	synced     chan struct{}
	syncedOnce sync.Once
	// delivered is closed once every handler has been given every entry
	// of the first list; undelivered counts the handlers still behind.
	delivered   chan struct{}
	undelivered atomic.Int64
	invalidSeen atomic.Int64
	relists     atomic.Int64
	// changeRev is the revision of the last list or watch response that
	// carried changes: every handler is queued everything up to it.
	changeRev int64
	events    atomic.Int64
}

type entry[T any] struct {
	value  T
	modRev int64
}

type invalidEntry struct {
	err    error
	modRev int64
}

// NewCache returns a cache of the prefix in cfg; Run starts it.
func NewCache[T any](c *Client, cfg CacheConfig[T]) (*Cache[T], error) {
	if cfg.Prefix == "" || cfg.Decode == nil {
		return nil, fmt.Errorf("%w: a watch cache needs a prefix and a decoder", ErrConfig)
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = 100 * time.Millisecond
	}
	return &Cache[T]{
		client: c, cfg: cfg, entries: make(map[string]entry[T]), invalid: make(map[string]invalidEntry),
		synced: make(chan struct{}), delivered: make(chan struct{}),
	}, nil
}

// Subscribe adds a handler. It must be called before Run.
func (c *Cache[T]) Subscribe(h Handler[T]) {
	c.undelivered.Add(1)
	c.handlers = append(c.handlers, newDelivery(h, c.lookup, c.synced, c.handlerDelivered))
}

// Synced is closed once the first list has been applied to the cache.
// Handlers may not have seen all of it yet: see Delivered.
func (c *Cache[T]) Synced() <-chan struct{} { return c.synced }

// Delivered is closed once every handler has been called for every entry
// of the first list. A consumer that builds state from its handler (and,
// say, prunes what the state does not hold) waits for this, not Synced.
func (c *Cache[T]) Delivered() <-chan struct{} { return c.delivered }

func (c *Cache[T]) handlerDelivered() {
	if c.undelivered.Add(-1) == 0 {
		close(c.delivered)
	}
}

// WaitSynced waits for Synced or ctx.
func (c *Cache[T]) WaitSynced(ctx context.Context) error {
	select {
	case <-c.synced:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for %s to sync: %w", c.cfg.Prefix, ctx.Err())
	}
}

// Get returns the value in force for key (relative to the prefix): its
// valid value, or the last good one while the stored value is invalid.
func (c *Cache[T]) Get(key string) (T, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.entries[key]
	return e.value, ok
}

// lookup is Get for the deliveries: the value in force, or, for a key
// that has none, the error of its invalid value (nil if the key is gone).
func (c *Cache[T]) lookup(key string) (T, bool, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if e, ok := c.entries[key]; ok {
		return e.value, true, nil
	}
	var zero T
	if inv, ok := c.invalid[key]; ok {
		return zero, false, inv.err
	}
	return zero, false, nil
}

// Invalid returns the keys whose stored value is invalid now, sorted.
func (c *Cache[T]) Invalid() []InvalidKey {
	c.mu.RLock()
	out := make([]InvalidKey, 0, len(c.invalid))
	for k, inv := range c.invalid {
		_, good := c.entries[k]
		out = append(out, InvalidKey{Key: k, Err: inv.err, ModRevision: inv.modRev, LastGood: good})
	}
	c.mu.RUnlock()
	slices.SortFunc(out, func(a, b InvalidKey) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// DeliveredRevision returns the etcd revision up to which every handler
// has been given every change of the prefix: a key whose mod revision is
// at or below it has been delivered as it is now (or the handler has seen
// a later change of it). It is 0 until the first list is delivered, and
// it advances with changes of the prefix and with lists, not with every
// revision of etcd. With no handler it is the revision of the cache's
// last change.
func (c *Cache[T]) DeliveredRevision() int64 {
	if len(c.handlers) == 0 {
		c.mu.RLock()
		defer c.mu.RUnlock()
		return c.changeRev
	}
	rev := int64(-1)
	for _, d := range c.handlers {
		if r := d.deliveredRev.Load(); rev < 0 || r < rev {
			rev = r
		}
	}
	return rev
}

// Range calls f for every entry until f returns false. f runs under the
// cache's read lock: it must not call back into the cache.
func (c *Cache[T]) Range(f func(key string, value T) bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for k, e := range c.entries {
		if !f(k, e.value) {
			return
		}
	}
}

// Len returns the number of valid entries.
func (c *Cache[T]) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// Stats returns the cache's counters.
func (c *Cache[T]) Stats() CacheStats {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return CacheStats{
		Entries: len(c.entries), InvalidKeys: len(c.invalid), Invalid: c.invalidSeen.Load(), Relists: c.relists.Load(),
		Events: c.events.Load(), Revision: c.rev,
	}
}

// Run mirrors the prefix until ctx ends. It returns ctx's error, or an
// error wrapping the client's context error if the client is closed first.
//
// Run may be called again after it returned, but not concurrently: the new
// Run watches on from the revision the cache reached, so handlers see the
// changes made in between; if etcd compacted that revision away, it lists
// the prefix again and handlers see only the difference.
func (c *Cache[T]) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, d := range c.handlers {
		g.Go(func() error { d.run(gctx); return nil })
	}
	g.Go(func() error { return c.loop(gctx) })
	err := g.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (c *Cache[T]) loop(ctx context.Context) error {
	backoff := c.cfg.RetryInterval
	c.mu.RLock()
	needList := c.rev == 0 // never listed: no revision to watch from
	c.mu.RUnlock()
	for {
		// A closed client answers every watch with a closed channel and
		// every list with an error: without this check the loop would spin
		// until ctx ends.
		if err := c.client.etcd.Ctx().Err(); err != nil {
			return fmt.Errorf("watch %s: etcd client closed: %w", c.cfg.Prefix, err)
		}
		if needList {
			if err := c.relist(ctx); err != nil {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			backoff = c.cfg.RetryInterval
		}
		needList = c.watch(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// relist reads the whole prefix and applies the difference to the cache.
// A key whose listed value is invalid keeps the last good value the cache
// had for it.
func (c *Cache[T]) relist(ctx context.Context) error {
	kvs, rev, err := c.client.List(ctx, c.cfg.Prefix)
	if err != nil {
		return err
	}
	c.relists.Add(1)
	fresh := make(map[string]entry[T], len(kvs))
	freshInvalid := make(map[string]invalidEntry)
	for _, kv := range kvs {
		key := kv.Key[len(c.cfg.Prefix):]
		v, err := c.cfg.Decode(key, kv.Value)
		if err != nil {
			freshInvalid[key] = invalidEntry{err: err, modRev: kv.ModRevision}
			continue
		}
		fresh[key] = entry[T]{value: v, modRev: kv.ModRevision}
	}
	c.mu.Lock()
	old, oldInvalid := c.entries, c.invalid
	for k := range freshInvalid {
		if o, ok := old[k]; ok {
			fresh[k] = o // the last good value stays in force
		}
	}
	c.entries, c.invalid = fresh, freshInvalid
	c.rev, c.changeRev = rev, rev
	c.mu.Unlock()

	var reports []InvalidKey
	var changed []string
	for k, inv := range freshInvalid {
		if prev, ok := oldInvalid[k]; ok && prev.modRev == inv.modRev {
			continue // reported before
		}
		_, good := fresh[k]
		reports = append(reports, InvalidKey{Key: k, Err: inv.err, ModRevision: inv.modRev, LastGood: good})
		if !good {
			changed = append(changed, k) // never valid: InvalidHandler
		}
	}
	for k, e := range fresh {
		if o, ok := old[k]; !ok || o.modRev != e.modRev {
			changed = append(changed, k)
		}
	}
	for k := range old {
		if _, ok := fresh[k]; !ok {
			changed = append(changed, k)
		}
	}
	for k := range oldInvalid {
		_, bad := freshInvalid[k]
		_, good := fresh[k]
		_, had := old[k]
		if !bad && !good && !had {
			changed = append(changed, k) // a never valid key is gone
		}
	}
	c.reportInvalid(reports)
	for _, k := range changed {
		c.notify(k)
	}
	c.advance(rev)
	c.syncedOnce.Do(func() {
		close(c.synced)
		if len(c.handlers) == 0 {
			close(c.delivered)
		}
		// A handler with nothing to deliver must still notice the sync.
		for _, d := range c.handlers {
			d.poke()
		}
	})
	return nil
}

// watch follows the prefix from the cache's revision. It returns true if
// the cache must be listed again (compaction), false to just watch again.
func (c *Cache[T]) watch(ctx context.Context) bool {
	c.mu.RLock()
	from := c.rev + 1
	c.mu.RUnlock()
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := c.client.etcd.Watch(wctx, c.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify())
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return true
		}
		if err := resp.Err(); err != nil {
			// No leader, or the server cancelled the watch: start over
			// from where we are, after a short pause.
			select {
			case <-ctx.Done():
			case <-time.After(c.cfg.RetryInterval):
			}
			return false
		}
		c.apply(resp.Events, resp.Header.Revision)
	}
	// The channel closes when ctx ends or the client is closed; pause in
	// case it closed for another reason, so the loop does not spin.
	select {
	case <-ctx.Done():
	case <-c.client.etcd.Ctx().Done():
	case <-time.After(c.cfg.RetryInterval):
	}
	return false
}

func (c *Cache[T]) apply(events []*clientv3.Event, rev int64) {
	changed := make([]string, 0, len(events))
	var reports []InvalidKey
	c.mu.Lock()
	for _, ev := range events {
		key := string(ev.Kv.Key[len(c.cfg.Prefix):])
		switch ev.Type {
		case mvccpb.PUT:
			v, err := c.cfg.Decode(key, ev.Kv.Value)
			if err != nil {
				// Never drop or replace the last good value: record the
				// key as invalid; only a key with no value is delivered
				// (to InvalidHandlers).
				_, good := c.entries[key]
				if prev, ok := c.invalid[key]; !ok || prev.modRev != ev.Kv.ModRevision {
					reports = append(reports, InvalidKey{Key: key, Err: err, ModRevision: ev.Kv.ModRevision, LastGood: good})
				}
				c.invalid[key] = invalidEntry{err: err, modRev: ev.Kv.ModRevision}
				if !good {
					changed = append(changed, key)
				}
				continue
			}
			delete(c.invalid, key)
			c.entries[key] = entry[T]{value: v, modRev: ev.Kv.ModRevision}
		case mvccpb.DELETE:
			_, good := c.entries[key]
			_, bad := c.invalid[key]
			if !good && !bad {
				continue
			}
			delete(c.entries, key)
			delete(c.invalid, key)
		}
		changed = append(changed, key)
	}
	if rev > c.rev {
		c.rev = rev
	}
	if len(events) > 0 && rev > c.changeRev {
		c.changeRev = rev
	}
	c.mu.Unlock()
	c.events.Add(int64(len(events)))
	c.reportInvalid(reports)
	for _, k := range changed {
		c.notify(k)
	}
	if len(events) > 0 {
		c.advance(rev)
	}
}

func (c *Cache[T]) reportInvalid(reports []InvalidKey) {
	c.invalidSeen.Add(int64(len(reports)))
	if c.cfg.OnInvalid == nil {
		return
	}
	for _, r := range reports {
		c.cfg.OnInvalid(r)
	}
}

func (c *Cache[T]) notify(key string) {
	for _, d := range c.handlers {
		d.enqueue(key)
	}
}

// advance tells every delivery that all changes up to rev are queued.
func (c *Cache[T]) advance(rev int64) {
	for _, d := range c.handlers {
		d.advance(rev)
	}
}

// delivery is a handler's queue of changed keys: a set, so it is bounded by
// the number of keys and enqueue never blocks.
type delivery[T any] struct {
	h       Handler[T]
	inv     InvalidHandler // h, if it implements InvalidHandler
	lookup  func(string) (T, bool, error)
	mu      sync.Mutex // mu guards pending, order and queuedRev
	pending map[string]struct{}
	order   []string
	wake    chan struct{}
	// queuedRev is the revision up to which every change is queued (or
	// delivered); deliveredRev the one up to which every change is
	// delivered.
	queuedRev    int64
	deliveredRev atomic.Int64

	// synced is the cache's; caughtUp is called once, after the first
	// drain that began after synced was closed.
	synced    <-chan struct{}
	caughtUp  func()
	delivered bool // owned by run
}

func newDelivery[T any](h Handler[T], lookup func(string) (T, bool, error), synced <-chan struct{}, caughtUp func()) *delivery[T] {
	inv, _ := h.(InvalidHandler)
	return &delivery[T]{
		h: h, inv: inv, lookup: lookup, pending: make(map[string]struct{}), wake: make(chan struct{}, 1),
		synced: synced, caughtUp: caughtUp,
	}
}

// advance records that every change up to rev is queued, and wakes the
// delivery so that deliveredRev follows even when no key changed.
func (d *delivery[T]) advance(rev int64) {
	d.mu.Lock()
	if rev > d.queuedRev {
		d.queuedRev = rev
	}
	d.mu.Unlock()
	d.poke()
}

func (d *delivery[T]) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *delivery[T]) enqueue(key string) {
	d.mu.Lock()
	if _, ok := d.pending[key]; !ok {
		d.pending[key] = struct{}{}
		d.order = append(d.order, key)
	}
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// run is a delivery goroutine: it is started by Cache.Run, which owns it.
func (d *delivery[T]) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		}
		// Every key of the first list was queued before synced was
		// closed; so if synced is closed now, the drain below delivers
		// all of them.
		synced := false
		if !d.delivered {
			select {
			case <-d.synced:
				synced = true
			default:
			}
		}
		for {
			d.mu.Lock()
			batch := d.order
			d.order = nil
			clear(d.pending)
			rev := d.queuedRev
			d.mu.Unlock()
			for _, k := range batch {
				d.deliver(k)
			}
			// Every change up to rev was queued before the batch was
			// taken, so it was in this batch or an earlier one.
			d.deliveredRev.Store(rev)
			if len(batch) == 0 {
				break
			}
		}
		if synced {
			d.delivered = true
			d.caughtUp()
		}
	}
}

// deliver passes the key's current state, read at delivery time, so the
// handler sees the latest value of a key that changed several times.
func (d *delivery[T]) deliver(key string) {
	v, ok, err := d.lookup(key)
	switch {
	case ok:
		d.h.Upsert(key, v)
	case err != nil:
		if d.inv != nil {
			d.inv.Invalid(key, err)
		}
	default:
		d.h.Delete(key)
	}
}
