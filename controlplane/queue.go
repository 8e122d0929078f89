package controlplane

import (
	"sync"
	"sync/atomic"
	"time"
)

// queue is a coalescing FIFO of dirty keys: a key is in it at most once,
// so it holds at most as many keys as the source has objects, and a key
// changed ten times before the reconciler takes it is reconciled once. It
// remembers when each key was first queued, for the lag metric.
//
// add never blocks; take is called by the kind's reconciler goroutine.
type queue struct {
	mu sync.Mutex
	// mu guards order and queued.
	order  []string
	queued map[string]time.Time
	// ready has a token when order is not empty.
	ready chan struct{}
	// off is set for a kind no reconciler takes: add drops its keys.
	off atomic.Bool
}

func newQueue() *queue {
	return &queue{queued: map[string]time.Time{}, ready: make(chan struct{}, 1)}
}

// add marks key dirty since the given time; a key already queued keeps
// the earlier of its two times.
func (q *queue) add(key string, since time.Time) {
	if q.off.Load() {
		return
	}
	q.mu.Lock()
	if t, ok := q.queued[key]; !ok {
		q.queued[key] = since
		q.order = append(q.order, key)
	} else if since.Before(t) {
		q.queued[key] = since
	}
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take removes up to max keys, oldest first, with the time each was first
// queued. It returns nothing when the queue is empty.
func (q *queue) take(max int) ([]string, []time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(max, len(q.order))
	if n == 0 {
		return nil, nil
	}
	keys := make([]string, n)
	copy(keys, q.order[:n])
	q.order = q.order[n:]
	if len(q.order) == 0 {
		q.order = nil // let a large backing array go
	}
	since := make([]time.Time, n)
	for i, k := range keys {
		since[i] = q.queued[k]
		delete(q.queued, k)
	}
	if len(q.order) > 0 {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
	return keys, since
}

// close drops the queued keys and every later one.
func (q *queue) close() {
	q.off.Store(true)
	q.mu.Lock()
	q.order, q.queued = nil, map[string]time.Time{}
	q.mu.Unlock()
}

// len is the number of queued keys.
func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.order)
}
