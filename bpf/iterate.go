package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Iterate calls fn for the map's entries until fn returns false. It holds
// no lock while fn runs, so fn may call the Map's methods, Close included
// (the walk then ends with an error wrapping os.ErrClosed).
//
// Other processes (the datapath, another agent) may write the map during the
// walk; the kernel's own iteration then restarts at the first key whenever
// the key it stands on is deleted. Iterate hides that. What fn sees:
//
//   - each key at most once;
//   - every key that is in the map for the whole walk, with its value;
//   - keys added or deleted during the walk, or not;
//   - no error for any of this.
//
// Hash maps are read with the kernel's batch lookup, which walks bucket by
// bucket and never restarts. An LPM trie is walked key by key in the
// kernel's order; when the walk restarts, Iterate resumes from a key it saw
// recently that is still there, or skips forward past the keys it has
// already passed. It fails with ErrIterationAborted only if the map changes
// so fast that the walk takes more than 4*MaxEntries+1024 steps that pass
// no new key; calling it again later is safe.
func (m *Map[K, V]) Iterate(fn func(K, V) bool) error {
	return m.iterate(true, fn)
}

// iterate is Iterate; with values false it does not read values (Count).
func (m *Map[K, V]) iterate(values bool, fn func(K, V) bool) error {
	var err error
	if m.lpm {
		err = m.walkLPM(values, fn)
	} else {
		err = m.walkBatch(fn)
	}
	if err != nil {
		return fmt.Errorf("map %s: iterate: %w", m.name, err)
	}
	return nil
}

// batchLookupChunk is how many entries one batch lookup asks for at first.
const batchLookupChunk = 1024

// walkBatch walks the map with BPF_MAP_LOOKUP_BATCH. On a hash map the
// cursor is a bucket index and a bucket is copied whole under its lock, so
// concurrent deletes cannot make the walk restart or repeat a key.
func (m *Map[K, V]) walkBatch(fn func(K, V) bool) error {
	var cursor ebpf.MapBatchCursor
	chunk := batchLookupChunk
	if m.lookupChunk > 0 {
		chunk = m.lookupChunk
	}
	keys := make([]K, chunk)
	vals := make([]V, chunk)
	for {
		var n int
		err := m.do(func(em *ebpf.Map) error {
			var err error
			n, err = em.BatchLookup(&cursor, keys, vals, nil)
			return err
		})
		done := errors.Is(err, ebpf.ErrKeyNotExist)
		switch {
		case err == nil || done:
		case errors.Is(err, unix.ENOSPC) && n == 0 && len(keys) < m.maxEntries+1:
			// One bucket holds more entries than the chunk: the cursor
			// still points at it, so ask again with room for it.
			keys = make([]K, 2*len(keys))
			vals = make([]V, 2*len(vals))
			continue
		case errors.Is(err, ebpf.ErrNotSupported):
			return fmt.Errorf("%w: batch lookup: %w", ErrNotSupported, err)
		default:
			return fmt.Errorf("batch lookup: %w", err)
		}
		for i := range n {
			if !fn(keys[i], vals[i]) {
				return nil
			}
		}
		if done {
			return nil
		}
	}
}

// lpmTrail is how many recently seen keys walkLPM remembers to resume from
// when the kernel restarts its walk.
const lpmTrail = 16

// walkLPM walks an LPM trie with BPF_MAP_GET_NEXT_KEY.
//
// The kernel returns the trie's keys in post-order (kernel/bpf/lpm_trie.c),
// which is a total order on prefixes that lpmLess computes. Given a key that
// is not in the trie (we stood on it and it was deleted), the kernel
// restarts at the first key. So a key that does not come after the last one
// we saw means we are behind: either the kernel restarted, or we resumed
// from an older key and are catching up. Keys are reported only when they
// come after every key reported so far, which makes "at most once" hold
// without remembering every key.
//
// A key's value is read right after the key, but reported only once the
// next step shows that the key was still there (the kernel walked on from
// it instead of restarting, which restartedAt tells apart even when the
// restart lands after it): an LPM lookup of a key deleted in between
// would return the value of a shorter prefix.
func (m *Map[K, V]) walkLPM(values bool, fn func(K, V) bool) error {
	var (
		last      K    // the newest key passed; valid when started
		started   bool // a key has been passed
		cursor    *K   // where the next step starts; nil: at the first key
		catchUp   bool // cursor is a key the kernel returned that is not after last
		trail     []K  // recently passed keys, newest last; cursor is trail's top unless catching up
		pending   bool // last's value is read but not yet reported
		pendingV  V    // last's value
		wasted    int  // steps that passed no new key
		maxWasted = 4*m.maxEntries + 1024
		// Declared once: the closures below make them escape to the heap.
		next, behind K // the key the kernel returned; a copy to catch up from
		v            V
	)
	for {
		end := false
		var from any // an untyped nil asks for the first key; a nil *K would not
		if cursor != nil {
			from = cursor
		}
		err := m.do(func(em *ebpf.Map) error { return em.NextKey(from, &next) })
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			end, err = true, nil
		}
		if err != nil {
			return fmt.Errorf("next key: %w", err)
		}
		if pending {
			// cursor is last: the kernel walked on from it (or ended) only
			// if it was still there.
			pending = false
			if end || lpmLess(keyBytes(&last), keyBytes(&next)) {
				gone, err := m.restartedAt(end, &next)
				if err != nil {
					return err
				}
				if !gone && !fn(last, pendingV) {
					return nil
				}
			}
		}
		if end {
			return nil
		}
		if !started || lpmLess(keyBytes(&last), keyBytes(&next)) {
			last, started, catchUp = next, true, false
			if len(trail) == lpmTrail {
				trail = append(trail[:0], trail[1:]...)
			}
			trail = append(trail, next)
			cursor = &trail[len(trail)-1]
			if !values {
				pendingV, pending = *new(V), true
				continue
			}
			err := m.do(func(em *ebpf.Map) error { return em.Lookup(&next, &v) })
			switch {
			case err == nil:
				pendingV, pending = v, true
			case errors.Is(err, ebpf.ErrKeyNotExist):
				// Deleted already; the next step restarts and we catch up.
			default:
				return fmt.Errorf("look up %v: %w", next, err)
			}
			continue
		}
		// next is not after last: we are behind.
		if wasted++; wasted > maxWasted {
			return fmt.Errorf("%w: no progress in %d steps; the map changes too fast", ErrIterationAborted, wasted)
		}
		switch {
		case catchUp:
			// Keep walking forward from where the kernel took us.
		case lpmLess(keyBytes(cursor), keyBytes(&next)):
			// cursor (an older key of the trail) is still there and next
			// follows it: catch up from there, a few steps at most.
			catchUp = true
		default:
			// The kernel restarted: cursor was deleted. Resume from the
			// newest older key of the trail, or catch up from the first key.
			trail = trail[:len(trail)-1]
			if len(trail) > 0 {
				cursor = &trail[len(trail)-1]
				continue
			}
			catchUp = true
		}
		behind = next
		cursor = &behind
	}
}

// restartedAt tells, after a step from the pending key (last) that seems
// to walk on (next comes after it, or end), whether the kernel restarted
// instead because last was deleted: a restart lands on the trie's first
// key, and that is after last when every key before it is gone too (the
// deleter works in walk order, as the reconciler's batches do), or the
// trie is empty (end). The step walked on from a key still there only if
// next is not the first key: that key comes after last, and last, being
// there, would be first or come before it. A deleted key's lookup returned
// a shorter prefix's value, so its value must not be reported.
func (m *Map[K, V]) restartedAt(end bool, next *K) (bool, error) {
	var first K
	err := m.do(func(em *ebpf.Map) error { return em.NextKey(nil, &first) })
	switch {
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return true, nil // empty: last is gone
	case err != nil:
		return false, fmt.Errorf("first key: %w", err)
	}
	return !end && first == *next, nil
}

// keyBytes returns k's memory: its C layout, because layoutSize proved K
// has no implicit padding and no pointers.
func keyBytes[K any](k *K) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(k)), unsafe.Sizeof(*k))
}

// lpmLess reports whether the kernel's LPM trie walk returns key a before
// key b. Keys are struct bpf_lpm_trie_key: a host-order __u32 prefixlen, then
// the data, matched most significant bit of data[0] first.
//
// The walk is a post-order traversal of the binary trie, child 0 before
// child 1 before the node itself. So of two prefixes that differ within
// their common length, the one with a 0 at the first differing bit comes
// first; and a prefix comes after every longer prefix inside it ("more
// specific keys before less specific ones").
func lpmLess(a, b []byte) bool {
	la, lb := binary.NativeEndian.Uint32(a), binary.NativeEndian.Uint32(b)
	da, db := a[4:], b[4:]
	n := int(min(la, lb, uint32(len(da)*8)))
	full := n / 8
	for i := range full {
		if da[i] != db[i] {
			return da[i] < db[i]
		}
	}
	if rem := n % 8; rem != 0 {
		mask := byte(0xff) << (8 - rem)
		if x, y := da[full]&mask, db[full]&mask; x != y {
			return x < y
		}
	}
	return la > lb
}
