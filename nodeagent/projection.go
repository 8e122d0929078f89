package nodeagent

import (
	"fmt"

	"github.com/meshplane/meshplane/nodeagent/reconciler"
)

// projection maps sources (an etcd key, a node, a service) to the entries
// they want in one desired table. Each update replaces a source's whole
// contribution and passes only the difference to the table. A key wanted
// by several sources stays until the last lets go; its value is the one of
// the source that sorts first (sources are named with a priority prefix,
// so a node's own address beats a pod that claims it).
//
// A projection is not safe for concurrent use: the mirror's lock guards it.
type projection[K comparable, V comparable] struct {
	table *reconciler.Table[K, V]
	bySrc map[string][]kv[K, V]
	byKey map[K]*claim[V]
}

type kv[K comparable, V comparable] struct {
	k K
	v V
}

// claim is who wants a key: the winning source and value, and the others.
type claim[V comparable] struct {
	src    string
	v      V
	others map[string]V // nil while there is one source, the usual case
}

func newProjection[K comparable, V comparable](t *reconciler.Table[K, V]) *projection[K, V] {
	return &projection[K, V]{table: t, bySrc: make(map[string][]kv[K, V]), byKey: make(map[K]*claim[V])}
}

// update makes entries the whole contribution of src; nil removes src.
// entries must not repeat a key.
func (p *projection[K, V]) update(src string, entries []kv[K, V]) {
	old := p.bySrc[src]
	if len(old) > 0 {
		keep := make(map[K]struct{}, len(entries))
		for _, e := range entries {
			keep[e.k] = struct{}{}
		}
		for _, e := range old {
			if _, ok := keep[e.k]; !ok {
				p.release(e.k, src)
			}
		}
	}
	for _, e := range entries {
		p.want(e.k, src, e.v)
	}
	if len(entries) == 0 {
		delete(p.bySrc, src)
		return
	}
	p.bySrc[src] = entries
}

func (p *projection[K, V]) want(k K, src string, v V) {
	c := p.byKey[k]
	switch {
	case c == nil:
		p.byKey[k] = &claim[V]{src: src, v: v}
		p.table.Set(k, v)
	case c.src == src:
		if c.v != v {
			c.v = v
			p.table.Set(k, v)
		}
	case src < c.src:
		if c.others == nil {
			c.others = make(map[string]V, 1)
		}
		delete(c.others, src)
		c.others[c.src] = c.v
		c.src, c.v = src, v
		p.table.Set(k, v)
	default:
		if c.others == nil {
			c.others = make(map[string]V, 1)
		}
		c.others[src] = v
	}
}

func (p *projection[K, V]) release(k K, src string) {
	c := p.byKey[k]
	if c == nil {
		return
	}
	if c.src != src {
		delete(c.others, src)
		return
	}
	if len(c.others) == 0 {
		delete(p.byKey, k)
		p.table.Delete(k)
		return
	}
	var next string
	first := true
	for s := range c.others {
		if first || s < next {
			next, first = s, false
		}
	}
	c.src, c.v = next, c.others[next]
	delete(c.others, next)
	if len(c.others) == 0 {
		c.others = nil
	}
	p.table.Set(k, c.v)
}

// idAllocator hands out small numeric IDs (backend IDs, service IDs) to
// keys, with reference counts. The datapath's maps hold the IDs, so an
// agent restart seeds the allocator from the maps it finds: the same
// objects get the same IDs and no map entry has to change.
type idAllocator[T comparable] struct {
	what  string
	max   uint32
	ids   map[T]uint32
	refs  map[T]int
	taken map[uint32]T
	next  uint32
}

func newIDAllocator[T comparable](what string, max uint32) *idAllocator[T] {
	return &idAllocator[T]{what: what, max: max, ids: make(map[T]uint32), refs: make(map[T]int), taken: make(map[uint32]T), next: 1}
}

// seed records that t had id before the restart. It holds no reference:
// dropUnseeded forgets seeds nobody acquired.
func (a *idAllocator[T]) seed(t T, id uint32) {
	if id == 0 || id > a.max {
		return
	}
	if _, dup := a.taken[id]; dup {
		return
	}
	if _, ok := a.ids[t]; ok {
		return
	}
	a.ids[t], a.taken[id], a.refs[t] = id, t, 0
}

// dropUnreferenced forgets every ID with no reference (seeds nobody took).
func (a *idAllocator[T]) dropUnreferenced() {
	for t, n := range a.refs {
		if n == 0 {
			delete(a.taken, a.ids[t])
			delete(a.ids, t)
			delete(a.refs, t)
		}
	}
}

func (a *idAllocator[T]) acquire(t T) (uint32, error) {
	if id, ok := a.ids[t]; ok {
		a.refs[t]++
		return id, nil
	}
	if uint32(len(a.taken)) >= a.max {
		return 0, fmt.Errorf("all %d %s IDs are in use", a.max, a.what)
	}
	for {
		id := a.next
		a.next = a.next%a.max + 1
		if _, used := a.taken[id]; !used {
			a.ids[t], a.taken[id], a.refs[t] = id, t, 1
			return id, nil
		}
	}
}

func (a *idAllocator[T]) release(t T) {
	n, ok := a.refs[t]
	if !ok {
		return
	}
	if n <= 1 {
		delete(a.taken, a.ids[t])
		delete(a.ids, t)
		delete(a.refs, t)
		return
	}
	a.refs[t] = n - 1
}
