package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"
)

// maxTxnOps is the most operations the reconciler puts in one
// transaction (etcd's default limit is 128).
const maxTxnOps = 128

// batchKeys is the most keys one round of a reconciler takes from its
// queue: enough to fill several transactions when many are queued.
const batchKeys = 1024

// ErrNotLeader is returned (wrapped) by a store whose transaction was
// refused because the writer no longer leads: the reconciler stops at once.
var ErrNotLeader = errors.New("controlplane: not the leader")

// store is the etcd side of one kind as a reconciler needs it. Keys are
// relative to the kind's prefix. Txn writes only while the writer leads
// (the leader's condition is part of every transaction) and returns an
// error wrapping ErrNotLeader when it does not.
type store[T any] interface {
	// List returns every key under the kind's prefix, with its value or
	// the error that decoding it gave.
	List(ctx context.Context) ([]stored[T], error)
	// Txn puts values and deletes keys in one transaction of at most
	// maxTxnOps operations. The slices are only read.
	Txn(ctx context.Context, puts []T, deletes []string) error
}

// stored is one key of a kind in etcd.
type stored[T any] struct {
	Key   string
	Value T
	Err   error
}

// codec relates a kind's values, its etcd keys and its source keys.
type codec[T any] struct {
	// key is the value's etcd key, relative to the kind's prefix.
	key func(T) string
	// object is the source key of the object an etcd key holds (for most
	// kinds the same string; a pod's node is in its etcd key only).
	object func(key string) string
	// encode is the value's etcd form; two values are equal when their
	// encodings are.
	encode func(T) ([]byte, error)
}

// sameKey is codec.object for kinds whose etcd key is the source key.
func sameKey(key string) string { return key }

// kindReconciler is what Run needs of a reconciler, whatever its kind.
type kindReconciler interface {
	kind() Kind
	// runTerm reconciles during one term as leader, until ctx ends or a
	// write finds the term over.
	runTerm(ctx context.Context, t *term) error
	// resyncTerm runs one full resync in the term and returns.
	resyncTerm(ctx context.Context, t *term) error
}

// reconciler writes one kind's desired state into etcd. Its state is owned
// by the goroutine that calls run; notify may be called from anywhere.
type reconciler[T any] struct {
	k      Kind
	lister Lister[T]
	// open returns the kind's store with the term's fence.
	open  func(t *term) store[T]
	codec codec[T]
	q     *queue
	m     *metrics
	cfg   *Config

	// store is the current term's store.
	store store[T]

	// actual is what etcd holds, by etcd key: the encoded value (nil when
	// it does not decode), as of the last resync plus this reconciler's
	// own writes since (the leader is the only writer of the prefix; a
	// write from outside is repaired at the next resync).
	actual map[string][]byte
	// byObject maps a source key to the etcd keys that hold its object
	// (one, except after an object moved, or a stray copy in etcd).
	byObject map[string][]string
}

func newReconciler[T any](k Kind, l Lister[T], open func(*term) store[T], c codec[T], q *queue, m *metrics, cfg *Config) *reconciler[T] {
	return &reconciler[T]{k: k, lister: l, open: open, codec: c, q: q, m: m, cfg: cfg}
}

func (r *reconciler[T]) resyncTerm(ctx context.Context, t *term) error {
	r.store = r.open(t)
	defer func() { r.store = nil }()
	return r.resync(ctx)
}

func (r *reconciler[T]) runTerm(ctx context.Context, t *term) error {
	r.store = r.open(t)
	defer func() { r.store = nil }()
	return r.run(ctx)
}

func (r *reconciler[T]) kind() Kind { return r.k }

// run resyncs, then reconciles queued keys until ctx ends (the leader's
// term), resyncing every ResyncInterval. A write refused because the
// writer no longer leads ends it with that error; other failures are
// retried with backoff (the keys stay queued).
func (r *reconciler[T]) run(ctx context.Context) error {
	backoff := newBackoff()
	resync := true
	tick := time.NewTicker(r.cfg.ResyncInterval)
	defer tick.Stop()
	for {
		var err error
		if resync {
			err = r.resync(ctx)
			if err == nil {
				resync = false
			}
		} else if keys, since := r.q.take(batchKeys); len(keys) > 0 {
			err = r.sync(ctx, keys, since)
			r.m.depth.WithLabelValues(r.k.String()).Set(float64(r.q.len()))
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrNotLeader):
			return err
		case err != nil:
			r.m.failed.WithLabelValues(r.k.String()).Inc()
			r.cfg.Logger.Warn("controlplane write failed, retrying", "kind", r.k.String(), "error", err)
			if !backoff.wait(ctx) {
				return ctx.Err()
			}
			continue
		}
		backoff.reset()
		if r.q.len() > 0 && !resync {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.q.ready:
		case <-tick.C:
			resync = true
		}
	}
}

// resync lists etcd and reconciles every object of the source and of etcd.
func (r *reconciler[T]) resync(ctx context.Context) error {
	items, err := r.store.List(ctx)
	if err != nil {
		return fmt.Errorf("%s: list etcd: %w", r.k, err)
	}
	r.actual = make(map[string][]byte, len(items))
	r.byObject = make(map[string][]string, len(items))
	for _, it := range items {
		var b []byte
		if it.Err == nil {
			if b, err = r.codec.encode(it.Value); err != nil {
				b = nil
			}
		}
		r.setActual(it.Key, b)
	}
	// A resync reconciles every key: take the queued ones with it, keeping
	// the time they were queued for the lag metric.
	queued := map[string]time.Time{}
	for {
		ks, ts := r.q.take(batchKeys)
		if len(ks) == 0 {
			break
		}
		for i, k := range ks {
			queued[k] = ts[i]
		}
	}
	keys := r.lister.Keys()
	seen := make(map[string]bool, len(keys)+len(r.byObject)+len(queued))
	for _, k := range keys {
		seen[k] = true
	}
	for obj := range r.byObject {
		if !seen[obj] {
			seen[obj] = true
			keys = append(keys, obj)
		}
	}
	for obj := range queued {
		if !seen[obj] {
			seen[obj] = true
			keys = append(keys, obj)
		}
	}
	slices.Sort(keys)
	now := r.cfg.Clock.Now()
	since := make([]time.Time, len(keys))
	for i, k := range keys {
		since[i] = now
		if t, ok := queued[k]; ok {
			since[i] = t
		}
	}
	r.m.resyncs.WithLabelValues(r.k.String()).Inc()
	return r.sync(ctx, keys, since)
}

// setActual records that etcd holds b (nil: a value that does not
// decode) under key.
func (r *reconciler[T]) setActual(key string, b []byte) {
	if _, ok := r.actual[key]; !ok {
		obj := r.codec.object(key)
		r.byObject[obj] = append(r.byObject[obj], key)
	}
	if b == nil {
		b = []byte{}
	}
	r.actual[key] = b
}

// dropActual records that etcd no longer holds key.
func (r *reconciler[T]) dropActual(key string) {
	if _, ok := r.actual[key]; !ok {
		return
	}
	delete(r.actual, key)
	obj := r.codec.object(key)
	r.byObject[obj] = slices.DeleteFunc(r.byObject[obj], func(k string) bool { return k == key })
	if len(r.byObject[obj]) == 0 {
		delete(r.byObject, obj)
	}
}

// change is what one object needs in etcd.
type change[T any] struct {
	obj     string
	since   time.Time
	put     *T
	putKey  string
	putEnc  []byte
	deletes []string
}

func (c change[T]) ops() int {
	n := len(c.deletes)
	if c.put != nil {
		n++
	}
	return n
}

// txnsInFlight is how many of one round's transactions are committed
// at once: their keys are disjoint, and etcd batches concurrent proposals
// into one raft round, so a burst is not bound by one fsync per
// transaction.
const txnsInFlight = 8

// sync reconciles the given objects: it asks the source for each, and
// writes what differs from etcd in transactions of up to maxTxnOps
// operations. Objects whose transaction failed are queued again.
func (r *reconciler[T]) sync(ctx context.Context, objs []string, since []time.Time) error {
	var changes []change[T]
	for i, obj := range objs {
		c, ok := r.diff(obj)
		if !ok {
			continue
		}
		c.since = since[i]
		changes = append(changes, c)
	}
	var chunks [][]change[T]
	for len(changes) > 0 {
		n, ops := 0, 0
		for n < len(changes) && ops+changes[n].ops() <= maxTxnOps {
			ops += changes[n].ops()
			n++
		}
		n = max(n, 1) // an object with more stray keys than a transaction holds fails alone
		chunks = append(chunks, changes[:n])
		changes = changes[n:]
	}
	errs := make([]error, len(chunks))
	var g errgroup.Group
	g.SetLimit(txnsInFlight)
	for i, cs := range chunks {
		g.Go(func() error {
			errs[i] = r.txn(ctx, cs)
			return nil
		})
	}
	_ = g.Wait()
	// The mirror is this goroutine's: apply what committed, requeue the rest.
	for i, cs := range chunks {
		if errs[i] != nil {
			for _, c := range cs {
				r.q.add(c.obj, c.since)
			}
			continue
		}
		r.applied(cs)
	}
	for _, err := range errs {
		if errors.Is(err, ErrNotLeader) {
			return err
		}
	}
	return errors.Join(errs...)
}

// diff computes what obj needs; ok is false when etcd already holds its
// desired state (or the source cannot say what it is).
func (r *reconciler[T]) diff(obj string) (change[T], bool) {
	c := change[T]{obj: obj}
	v, want, err := r.lister.Get(obj)
	if err != nil {
		// It exists but cannot be written: keep what etcd holds.
		r.m.invalid.WithLabelValues(r.k.String()).Inc()
		if r.cfg.OnInvalid != nil {
			r.cfg.OnInvalid(r.k, obj, err)
		}
		return c, false
	}
	if want {
		b, err := r.codec.encode(v)
		if err != nil {
			r.m.invalid.WithLabelValues(r.k.String()).Inc()
			if r.cfg.OnInvalid != nil {
				r.cfg.OnInvalid(r.k, obj, err)
			}
			return c, false
		}
		c.putKey = r.codec.key(v)
		if have, ok := r.actual[c.putKey]; !ok || !bytes.Equal(have, b) {
			c.put, c.putEnc = &v, b
		}
	}
	for _, k := range r.byObject[obj] {
		if !want || k != c.putKey {
			c.deletes = append(c.deletes, k)
		}
	}
	return c, c.put != nil || len(c.deletes) > 0
}

// txn writes one transaction's worth of changes.
func (r *reconciler[T]) txn(ctx context.Context, cs []change[T]) error {
	var puts []T
	var deletes []string
	for _, c := range cs {
		if c.put != nil {
			puts = append(puts, *c.put)
		}
		deletes = append(deletes, c.deletes...)
	}
	if err := r.store.Txn(ctx, puts, deletes); err != nil {
		return fmt.Errorf("%s: write %d keys, delete %d: %w", r.k, len(puts), len(deletes), err)
	}
	return nil
}

// applied records committed changes in the mirror and the metrics.
func (r *reconciler[T]) applied(cs []change[T]) {
	now := r.cfg.Clock.Now()
	kind := r.k.String()
	r.m.batches.WithLabelValues(kind).Inc()
	for _, c := range cs {
		for _, k := range c.deletes {
			r.dropActual(k)
		}
		r.m.writes.WithLabelValues(kind, "delete").Add(float64(len(c.deletes)))
		if c.put != nil {
			r.setActual(c.putKey, c.putEnc)
			r.m.writes.WithLabelValues(kind, "put").Inc()
		}
		r.m.lag.WithLabelValues(kind).Observe(now.Sub(c.since).Seconds())
	}
}

// backoff is an exponential retry delay, 100ms doubling to 5s.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: 100 * time.Millisecond} }

func (b *backoff) reset() { b.d = 100 * time.Millisecond }

// wait waits out the delay, then doubles it; false if ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.d)
	defer t.Stop()
	b.d = min(2*b.d, 5*time.Second)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
