package kvstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// Decoder turns a key (relative to the cache's prefix) and its value into a
// T. An error marks the entry corrupt: it is counted, reported through
// CacheConfig.OnInvalid, and left out of the cache.
type Decoder[T any] func(key string, value []byte) (T, error)

// Handler receives a cache's changes. Calls come from one goroutine per
// handler, never from the watch itself, so a slow handler delays only its
// own later calls. Changes to one key are coalesced: a handler sees the
// latest value, not every intermediate one. Upsert and Delete must not
// block for long; they must not call back into Run.
type Handler[T any] interface {
	Upsert(key string, value T)
	Delete(key string)
}

// CacheConfig configures a Cache.
type CacheConfig[T any] struct {
	// Prefix is the etcd prefix to mirror. Required.
	Prefix string
	// Decode parses values. Required.
	Decode Decoder[T]
	// OnInvalid, if set, is told about each entry Decode rejects. It is
	// called from the watch goroutine and must not block.
	OnInvalid func(key string, err error)
	// RetryInterval is the first pause after a failed list; it doubles up
	// to 5s. Zero means 100ms.
	RetryInterval time.Duration
}

// CacheStats are a cache's counters.
type CacheStats struct {
	Entries  int   // valid entries now
	Invalid  int64 // entries rejected by Decode, ever
	Relists  int64 // full lists, the first included
	Events   int64 // watch events applied
	Revision int64 // etcd revision the cache reflects
}

// Cache is a typed, local mirror of an etcd prefix. Run lists the prefix,
// then watches from the list's revision; after a compaction or a broken
// watch it lists again and passes only the difference to handlers. Reads
// (Get, Range, Len) are safe from any goroutine.
//
// Goroutines: Run owns the watch loop and one delivery goroutine per
// handler, and returns after all of them exit.
type Cache[T any] struct {
	client *Client
	cfg    CacheConfig[T]

	mu       sync.RWMutex // mu guards entries and rev
	entries  map[string]entry[T]
	rev      int64
	handlers []*delivery[T]

	synced     chan struct{}
	syncedOnce sync.Once
	// delivered is closed once every handler has been given every entry
	// of the first list; undelivered counts the handlers still behind.
	delivered   chan struct{}
	undelivered atomic.Int64
	invalid     atomic.Int64
	relists     atomic.Int64
	events      atomic.Int64
}

type entry[T any] struct {
	value  T
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
		client: c, cfg: cfg, entries: make(map[string]entry[T]),
		synced: make(chan struct{}), delivered: make(chan struct{}),
	}, nil
}

// Subscribe adds a handler. It must be called before Run.
func (c *Cache[T]) Subscribe(h Handler[T]) {
	c.undelivered.Add(1)
	c.handlers = append(c.handlers, newDelivery(h, c.Get, c.synced, c.handlerDelivered))
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

// Get returns the value of key (relative to the prefix).
func (c *Cache[T]) Get(key string) (T, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.entries[key]
	return e.value, ok
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
		Entries: len(c.entries), Invalid: c.invalid.Load(), Relists: c.relists.Load(),
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
func (c *Cache[T]) relist(ctx context.Context) error {
	kvs, rev, err := c.client.List(ctx, c.cfg.Prefix)
	if err != nil {
		return err
	}
	c.relists.Add(1)
	fresh := make(map[string]entry[T], len(kvs))
	for _, kv := range kvs {
		key := kv.Key[len(c.cfg.Prefix):]
		v, err := c.cfg.Decode(key, kv.Value)
		if err != nil {
			c.reportInvalid(key, err)
			continue
		}
		fresh[key] = entry[T]{value: v, modRev: kv.ModRevision}
	}
	c.mu.Lock()
	old := c.entries
	c.entries = fresh
	c.rev = rev
	c.mu.Unlock()
	for k, e := range fresh {
		if o, ok := old[k]; !ok || o.modRev != e.modRev {
			c.notify(k)
		}
	}
	for k := range old {
		if _, ok := fresh[k]; !ok {
			c.notify(k)
		}
	}
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
	c.mu.Lock()
	for _, ev := range events {
		key := string(ev.Kv.Key[len(c.cfg.Prefix):])
		switch ev.Type {
		case mvccpb.PUT:
			v, err := c.cfg.Decode(key, ev.Kv.Value)
			if err != nil {
				c.reportInvalid(key, err)
				if _, ok := c.entries[key]; ok {
					delete(c.entries, key)
					changed = append(changed, key)
				}
				continue
			}
			c.entries[key] = entry[T]{value: v, modRev: ev.Kv.ModRevision}
		case mvccpb.DELETE:
			if _, ok := c.entries[key]; !ok {
				continue
			}
			delete(c.entries, key)
		}
		changed = append(changed, key)
	}
	if rev > c.rev {
		c.rev = rev
	}
	c.mu.Unlock()
	c.events.Add(int64(len(events)))
	for _, k := range changed {
		c.notify(k)
	}
}

func (c *Cache[T]) reportInvalid(key string, err error) {
	c.invalid.Add(1)
	if c.cfg.OnInvalid != nil {
		c.cfg.OnInvalid(key, err)
	}
}

func (c *Cache[T]) notify(key string) {
	for _, d := range c.handlers {
		d.enqueue(key)
	}
}

// delivery is a handler's queue of changed keys: a set, so it is bounded by
// the number of keys and enqueue never blocks.
type delivery[T any] struct {
	h       Handler[T]
	get     func(string) (T, bool)
	mu      sync.Mutex // mu guards pending and order
	pending map[string]struct{}
	order   []string
	wake    chan struct{}

	// synced is the cache's; caughtUp is called once, after the first
	// drain that began after synced was closed.
	synced    <-chan struct{}
	caughtUp  func()
	delivered bool // owned by run
}

func newDelivery[T any](h Handler[T], get func(string) (T, bool), synced <-chan struct{}, caughtUp func()) *delivery[T] {
	return &delivery[T]{
		h: h, get: get, pending: make(map[string]struct{}), wake: make(chan struct{}, 1),
		synced: synced, caughtUp: caughtUp,
	}
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
			d.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for _, k := range batch {
				d.deliver(k)
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
	if v, ok := d.get(key); ok {
		d.h.Upsert(key, v)
		return
	}
	d.h.Delete(key)
}
