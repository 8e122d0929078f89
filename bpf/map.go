package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Errors returned by this package. Callers test for them with errors.Is; the
// messages around them say what to do.
var (
	// ErrNotSupported means eBPF maps cannot be used here: bpffs is not
	// mounted at the configured directory, the process lacks CAP_BPF (or
	// root), or the kernel lacks a map type or operation.
	ErrNotSupported = errors.New("eBPF maps not supported")
	// ErrIncompatible means a pinned map differs from what this version
	// wants (type, key size, value size, flags or max entries). The map is
	// left alone: see the package documentation.
	ErrIncompatible = errors.New("pinned map incompatible")
	// ErrMapFull means a write needed a new entry in a map that holds its
	// maximum number of entries.
	ErrMapFull = errors.New("map full")
	// ErrIterationAborted means Iterate or Count gave up because the map
	// changed faster than the walk could make progress.
	ErrIterationAborted = errors.New("map iteration aborted")
)

// validator is implemented by the keys and values of this package: Put and
// PutBatch refuse what the datapath cannot use.
type validator interface {
	Validate() error
}

// batchState records whether a map's kernel type takes a batch operation.
const (
	batchUnknown int32 = iota
	batchYes
	batchNo
)

// Map is a typed view of one kernel map. K and V are fixed-size structs
// (or integers) without implicit padding, laid out as the datapath's C
// structs: this package's key and value types, or the caller's own for
// OpenPinned.
//
// All methods may be called concurrently. Close waits for calls in
// progress; afterwards every call fails with an error wrapping
// os.ErrClosed. Writes are checked with the key's and value's Validate
// method when they have one.
type Map[K comparable, V comparable] struct {
	name       string
	path       string
	fullHint   string // what an operator raises when the map is full
	maxEntries int
	lpm        bool // an LPM trie: Lookup is longest-prefix, Iterate walks by key order

	// Whether BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH work on this map:
	// learnt on first use. Tests set batchNo to exercise the fallback.
	batchUpdate, batchDelete atomic.Int32
	// lookupChunk, if set, replaces batchLookupChunk (tests make it tiny).
	lookupChunk int

	mu sync.RWMutex // mu guards em: nil once closed
	em *ebpf.Map
}

// newMap wraps em, which it owns from then on; it closes em and fails if
// em's key or value size is not K's or V's.
func newMap[K, V comparable](em *ebpf.Map, name, path, fullHint string) (*Map[K, V], error) {
	ks, err := layoutSize[K]()
	if err == nil {
		var vs int
		vs, err = layoutSize[V]()
		if err == nil && (int(em.KeySize()) != ks || int(em.ValueSize()) != vs) {
			err = fmt.Errorf("%w: map %s at %s has key size %d and value size %d; %s needs %d and %s needs %d",
				ErrIncompatible, name, path, em.KeySize(), em.ValueSize(), typeName[K](), ks, typeName[V](), vs)
		}
	}
	if err == nil {
		switch em.Type() {
		case ebpf.Hash, ebpf.LRUHash, ebpf.LPMTrie, ebpf.Array:
		default:
			err = fmt.Errorf("%w: map %s at %s is a %s; Map handles hash, LRU hash, LPM trie and array maps",
				ErrIncompatible, name, path, em.Type())
		}
	}
	if err != nil {
		_ = em.Close()
		return nil, err
	}
	return &Map[K, V]{
		name:       name,
		path:       path,
		fullHint:   fullHint,
		maxEntries: int(em.MaxEntries()),
		lpm:        em.Type() == ebpf.LPMTrie,
		em:         em,
	}, nil
}

// layoutSize returns T's size, or an error if T is not a fixed-size type
// whose Go layout is its C layout: binary.Size must see every byte that
// unsafe.Sizeof does (no implicit padding) and every field must be exported
// or "_".
func layoutSize[T any]() (int, error) {
	var zero T
	size := binary.Size(zero)
	if size <= 0 {
		return 0, fmt.Errorf("%s is not a fixed-size type", typeName[T]())
	}
	if size != int(unsafe.Sizeof(zero)) {
		return 0, fmt.Errorf("%s has %d bytes of implicit padding: add explicit _ fields so that Go and C agree",
			typeName[T](), int(unsafe.Sizeof(zero))-size)
	}
	if f, ok := unexportedField(reflect.TypeFor[T]()); ok {
		return 0, fmt.Errorf("%s has unexported field %s: map types have exported or _ fields only", typeName[T](), f)
	}
	return size, nil
}

// unexportedField returns the name of a field of t (or of a nested struct)
// that is neither exported nor "_".
func unexportedField(t reflect.Type) (string, bool) {
	switch t.Kind() {
	case reflect.Array:
		return unexportedField(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() && f.Name != "_" {
				return f.Name, true
			}
			if name, ok := unexportedField(f.Type); ok {
				return name, true
			}
		}
	}
	return "", false
}

func typeName[T any]() string {
	return reflect.TypeFor[T]().String()
}

// OpenPinned opens the map pinned at path for reading and writing, as a
// Map[K, V]. It fails with an error wrapping ErrIncompatible if the map's
// key or value size is not K's or V's, or if it is a type Map does not
// handle (per-CPU maps, maps of maps, ring buffers, ...).
func OpenPinned[K, V comparable](path string) (*Map[K, V], error) {
	em, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", path, classify(err))
	}
	name := path
	if info, err := em.Info(); err == nil && info.Name != "" {
		name = info.Name
	}
	return newMap[K, V](em, name, path,
		fmt.Sprintf("its max entries; that needs the pin (%s) deleted and the map recreated on a drained node", path))
}

// classify wraps err with ErrNotSupported when it means the kernel or the
// process's privileges cannot do what was asked.
func classify(err error) error {
	if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: %w", ErrNotSupported, err)
	}
	return err
}

// Name returns the map's name, e.g. "mp_ipcache".
func (m *Map[K, V]) Name() string { return m.name }

// Path returns the map's pin path.
func (m *Map[K, V]) Path() string { return m.path }

// MaxEntries returns the most entries the map can hold.
func (m *Map[K, V]) MaxEntries() int { return m.maxEntries }

// ID returns the kernel's ID of the map. Two Maps with the same ID are the
// same kernel object: an agent restart that reopens its pins gets the IDs
// it had.
func (m *Map[K, V]) ID() (uint32, error) {
	var id ebpf.MapID
	err := m.do(func(em *ebpf.Map) error {
		info, err := em.Info()
		if err != nil {
			return err
		}
		var ok bool
		if id, ok = info.ID(); !ok {
			return fmt.Errorf("%w: the kernel reports no map IDs", ErrNotSupported)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("map %s: id: %w", m.name, err)
	}
	return uint32(id), nil
}

// do runs fn with the open map, or fails if the Map is closed.
func (m *Map[K, V]) do(fn func(em *ebpf.Map) error) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.em == nil {
		return os.ErrClosed
	}
	return fn(m.em)
}

// Close closes the map's file descriptor; the pin, and so the map and its
// contents, stay. It waits for calls in progress and may be called more
// than once.
func (m *Map[K, V]) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.em == nil {
		return nil
	}
	err := m.em.Close()
	m.em = nil
	if err != nil {
		return fmt.Errorf("close map %s: %w", m.name, err)
	}
	return nil
}

// Lookup returns the value stored for k and whether there is one. On an LPM
// trie (IPCache, Policy) it is a longest-prefix match, as in the datapath:
// the value of the longest stored prefix that contains k's prefix.
func (m *Map[K, V]) Lookup(k K) (V, bool, error) {
	var v V
	err := m.do(func(em *ebpf.Map) error { return em.Lookup(&k, &v) })
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false, nil
	}
	if err != nil {
		var zero V
		return zero, false, fmt.Errorf("map %s: look up %v: %w", m.name, k, err)
	}
	return v, true, nil
}

// Put stores v under k, adding the entry or replacing its value. Adding to
// a full map fails with an error wrapping ErrMapFull.
func (m *Map[K, V]) Put(k K, v V) error {
	if err := validate(&k, &v); err != nil {
		return fmt.Errorf("map %s: put %v: %w", m.name, k, err)
	}
	if err := m.do(func(em *ebpf.Map) error { return em.Put(&k, &v) }); err != nil {
		return m.writeError(fmt.Sprintf("put %v", k), err)
	}
	return nil
}

// validate runs the Validate methods of *k and *v, if they have them.
// Pointers keep the conversion to an interface free of allocations.
func validate[K, V any](k *K, v *V) error {
	if kv, ok := any(k).(validator); ok {
		if err := kv.Validate(); err != nil {
			return err
		}
	}
	if vv, ok := any(v).(validator); ok {
		return vv.Validate()
	}
	return nil
}

// writeError wraps an update's error: ErrMapFull with the way out when the
// kernel says the map is full (E2BIG from hash maps, ENOSPC from LPM tries).
func (m *Map[K, V]) writeError(op string, err error) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("%w: map %s holds its maximum of %d entries; raise %s (%s: %s)",
			ErrMapFull, m.name, m.maxEntries, m.fullHint, op, unix.ErrnoName(errnoOf(err)))
	}
	return fmt.Errorf("map %s: %s: %w", m.name, op, err)
}

// errnoOf returns the errno inside err, or 0.
func errnoOf(err error) unix.Errno {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return 0
}

// Delete removes k (an exact key, also on an LPM trie) and reports whether
// it was there.
func (m *Map[K, V]) Delete(k K) (bool, error) {
	err := m.do(func(em *ebpf.Map) error { return em.Delete(&k) })
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("map %s: delete %v: %w", m.name, k, err)
	}
	return true, nil
}

// PutBatch stores vals[i] under keys[i] for every i, with the kernel's batch
// update (one system call) where the map type has it and one by one where
// not. It returns how many entries it wrote: on an error, keys[:n] were
// written and keys[n:] not. A full map fails with an error wrapping
// ErrMapFull. Every key and value is validated before anything is written.
func (m *Map[K, V]) PutBatch(keys []K, vals []V) (int, error) {
	if len(keys) != len(vals) {
		return 0, fmt.Errorf("map %s: put batch: %d keys but %d values", m.name, len(keys), len(vals))
	}
	for i := range keys {
		if err := validate(&keys[i], &vals[i]); err != nil {
			return 0, fmt.Errorf("map %s: put batch: entry %d (%v): %w", m.name, i, keys[i], err)
		}
	}
	if len(keys) == 0 {
		return 0, nil
	}
	if m.batchUpdate.Load() != batchNo {
		var n int
		err := m.do(func(em *ebpf.Map) error {
			var err error
			n, err = em.BatchUpdate(keys, vals, nil)
			return err
		})
		switch {
		case err == nil:
			m.batchUpdate.Store(batchYes)
			return n, nil
		case n == 0 && errors.Is(err, ebpf.ErrNotSupported):
			m.batchUpdate.Store(batchNo)
		default:
			op := "put batch"
			if n < len(keys) {
				op = fmt.Sprintf("put batch: entry %d (%v)", n, keys[n])
			}
			return n, m.writeError(op, err)
		}
	}
	for i := range keys {
		if err := m.do(func(em *ebpf.Map) error { return em.Put(&keys[i], &vals[i]) }); err != nil {
			return i, m.writeError(fmt.Sprintf("put batch: entry %d (%v)", i, keys[i]), err)
		}
	}
	return len(keys), nil
}

// DeleteBatch removes keys, with the kernel's batch delete where the map
// type has it and one by one where not. Keys that are not in the map are
// skipped, not errors. It returns how many entries it removed.
func (m *Map[K, V]) DeleteBatch(keys []K) (int, error) {
	deleted := 0
	rest := keys
	for len(rest) > 0 && m.batchDelete.Load() != batchNo {
		var n int
		err := m.do(func(em *ebpf.Map) error {
			var err error
			n, err = em.BatchDelete(rest, nil)
			return err
		})
		deleted += n
		switch {
		case err == nil:
			m.batchDelete.Store(batchYes)
			return deleted, nil
		case errors.Is(err, ebpf.ErrKeyNotExist) && n < len(rest):
			// The kernel stops at the first missing key, rest[n]: skip it.
			m.batchDelete.Store(batchYes)
			rest = rest[n+1:]
		case n == 0 && errors.Is(err, ebpf.ErrNotSupported):
			m.batchDelete.Store(batchNo)
		default:
			return deleted, fmt.Errorf("map %s: delete batch: %w", m.name, err)
		}
	}
	for _, k := range rest {
		ok, err := m.Delete(k)
		if err != nil {
			return deleted, err
		}
		if ok {
			deleted++
		}
	}
	return deleted, nil
}

// Count returns the number of entries, by walking the map as Iterate does;
// under concurrent writes it is a count of one moment's walk, not a
// snapshot.
func (m *Map[K, V]) Count() (int, error) {
	n := 0
	err := m.iterate(false, func(K, V) bool { n++; return true })
	if err != nil {
		return 0, err
	}
	return n, nil
}
