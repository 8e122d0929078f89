package reconciler

import (
	"maps"
	"sync"
	"sync/atomic"
)

// Table is the desired state of one Target: the entries the agent wants in
// a kernel map, keyed and valued as the map is. Watch-cache handlers write
// it; one Reconciler reads it.
//
// All methods are safe for concurrent use by many goroutines. Writers never
// wait for the Reconciler to write anything: Set and Delete take the
// table's lock for a few map operations and at most send on a 1-buffered
// channel without blocking. The Reconciler holds the same lock only to swap
// out the set of changed keys (constant time) and, at startup and every
// prune, to compare the whole table with the map it read (a few
// milliseconds for 100,000 entries).
//
// A Table feeds at most one Reconciler: New refuses a table that another
// Reconciler already reads, because the set of changed keys can be handed
// out only once.
type Table[K comparable, V comparable] struct {
	mu sync.RWMutex
	// mu guards desired, dirty and ready.
	desired map[K]V
	// dirty holds, for every key changed since the Reconciler last took
	// it, the key's latest desired state. It is kept only once ready:
	// before that, the first full reconcile compares everything anyway.
	dirty map[K]change[V]
	ready bool
	// seq counts the changes to desired (see Seq).
	seq uint64

	readyCh chan struct{} // closed by the first MarkReady
	// wake is 1-buffered. A writer sends (without blocking) after making
	// dirty non-empty; the Reconciler receives, then takes dirty. A wake
	// can be spurious (dirty already taken), never missing.
	wake  chan struct{}
	inUse atomic.Bool // set by New: the table feeds one Reconciler
}

// change is a key's latest desired state: a value, or absent.
type change[V comparable] struct {
	val V
	del bool
}

// NewTable returns an empty table that is not ready.
func NewTable[K comparable, V comparable]() *Table[K, V] {
	return &Table[K, V]{
		desired: make(map[K]V),
		dirty:   make(map[K]change[V]),
		readyCh: make(chan struct{}),
		wake:    make(chan struct{}, 1),
	}
}

// Set makes v the desired value of k. Setting the value k already has is
// a no-op; changes to one key between two reconcile rounds coalesce into
// one write of the latest value.
func (t *Table[K, V]) Set(k K, v V) {
	t.mu.Lock()
	if old, ok := t.desired[k]; ok && old == v {
		t.mu.Unlock()
		return
	}
	t.desired[k] = v
	t.seq++
	wake := t.markLocked(k, change[V]{val: v})
	t.mu.Unlock()
	if wake {
		t.signal()
	}
}

// Delete makes k unwanted: the Reconciler removes it from the Target.
// Deleting a key the table does not hold is a no-op (if the Target holds
// it anyway, the next full compare removes it).
func (t *Table[K, V]) Delete(k K) {
	t.mu.Lock()
	if _, ok := t.desired[k]; !ok {
		t.mu.Unlock()
		return
	}
	delete(t.desired, k)
	t.seq++
	wake := t.markLocked(k, change[V]{del: true})
	t.mu.Unlock()
	if wake {
		t.signal()
	}
}

// markLocked records k as changed and reports whether the Reconciler
// must be woken (the dirty set was empty, so nobody has woken it yet).
func (t *Table[K, V]) markLocked(k K, c change[V]) bool {
	if !t.ready {
		return false
	}
	t.dirty[k] = c
	return len(t.dirty) == 1
}

func (t *Table[K, V]) signal() {
	select {
	case t.wake <- struct{}{}:
	default: // a wake is already pending
	}
}

// Get returns the desired value of k.
func (t *Table[K, V]) Get(k K) (V, bool) {
	t.mu.RLock()
	v, ok := t.desired[k]
	t.mu.RUnlock()
	return v, ok
}

// Seq returns the number of changes made to the table so far. Once a
// Reconciler's Status().Applied reaches it, every one of those changes is
// in the Target: a writer that wants to know when its change is installed
// reads Seq after making it and waits for Applied.
func (t *Table[K, V]) Seq() uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.seq
}

// Len returns the number of desired entries.
func (t *Table[K, V]) Len() int {
	t.mu.RLock()
	n := len(t.desired)
	t.mu.RUnlock()
	return n
}

// Range calls fn for each desired entry, in no particular order, until fn
// returns false. It holds the table's read lock throughout: fn must not
// call Set, Delete or MarkReady (that deadlocks), and writers wait until
// Range returns.
func (t *Table[K, V]) Range(fn func(K, V) bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for k, v := range t.desired {
		if !fn(k, v) {
			return
		}
	}
}

// MarkReady declares that the writers have loaded their initial state
// (their watch caches are synced and delivered). Until then the
// Reconciler writes nothing and, above all, deletes nothing: after an
// agent restart the pinned map holds entries the table has merely not
// loaded yet, and they keep serving traffic. Calling MarkReady again is
// a no-op.
func (t *Table[K, V]) MarkReady() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.ready {
		t.ready = true
		close(t.readyCh)
	}
}

// takeDirty swaps the dirty set for spare, which must be empty, and
// returns the changes the writers made since the last take, and the
// table's Seq with them.
func (t *Table[K, V]) takeDirty(spare map[K]change[V]) (map[K]change[V], uint64) {
	t.mu.Lock()
	d, seq := t.dirty, t.seq
	t.dirty = spare
	t.mu.Unlock()
	return d, seq
}

func (t *Table[K, V]) dirtyLen() int {
	t.mu.RLock()
	n := len(t.dirty)
	t.mu.RUnlock()
	return n
}

// snapshot returns a copy of the whole table and clears the dirty set in
// the same critical section: every change made before it is in the copy,
// every change after it is dirty again. Copying (about a millisecond for
// 100,000 entries) keeps the lock short; comparing under it would hold
// writers for the time of a lookup per entry, cache misses included.
func (t *Table[K, V]) snapshot() (map[K]V, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.dirty)
	return maps.Clone(t.desired), t.seq
}
