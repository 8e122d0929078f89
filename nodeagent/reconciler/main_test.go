package reconciler_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshplane/meshplane/nodeagent/reconciler"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// errMapFull is what fakeTarget returns when a put would exceed its
// capacity, as a kernel hash map returns E2BIG. The reconciler knows
// nothing of it: it is just an error.
var errMapFull = errors.New("fake map full")

// errInjected is what fakeTarget's failure hooks return.
var errInjected = errors.New("injected failure")

type op int

const (
	opPut op = iota
	opDelete
	opIterate
)

func (o op) String() string { return [...]string{"put", "delete", "iterate"}[o] }

// call is one recorded Target call.
type call[K comparable, V comparable] struct {
	op   op
	keys []K
	vals []V
	n    int
	err  error
	at   time.Time // when the call started
}

// fakeTarget is an in-memory Target. It records every call, can fail
// chosen calls or act as a map of limited capacity, and checks an
// invariant after every write. Its methods take a mutex so that tests and
// a watcher goroutine can look at it while the reconciler writes.
type fakeTarget[K comparable, V comparable] struct {
	// The fields up to mu are set before the reconciler runs.

	// capacity, if positive, bounds the entries: a put of a new key
	// into a full map fails with errMapFull.
	capacity int
	// failPut, failDelete and failIterate, if set, are called with the
	// 1-based number of the call of their kind; a non-nil error fails
	// the call before it writes anything.
	failPut, failDelete, failIterate func(n int) error
	// beforePut, if set, runs at the start of every PutBatch, without
	// the mutex (it may block).
	beforePut func(keys []K, vals []V)
	// check, if set, runs under the mutex after every write; what it
	// returns is collected in violations.
	check func(m map[K]V) error

	mu sync.Mutex
	// mu guards the fields below.
	m          map[K]V
	calls      []call[K, V]
	counts     [3]int // calls per op
	violations []error
	written    chan struct{} // if not nil, gets a non-blocking send after every successful put
}

func newFake[K comparable, V comparable](initial map[K]V) *fakeTarget[K, V] {
	f := &fakeTarget[K, V]{m: make(map[K]V, len(initial))}
	for k, v := range initial {
		f.m[k] = v
	}
	return f
}

func (f *fakeTarget[K, V]) PutBatch(keys []K, vals []V) (int, error) {
	if len(keys) != len(vals) || len(keys) == 0 {
		panic(fmt.Sprintf("PutBatch with %d keys and %d values", len(keys), len(vals)))
	}
	if f.beforePut != nil {
		f.beforePut(keys, vals)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c := call[K, V]{op: opPut, keys: append([]K(nil), keys...), vals: append([]V(nil), vals...), at: time.Now()}
	f.counts[opPut]++
	if f.failPut != nil {
		c.err = f.failPut(f.counts[opPut])
	}
	if c.err == nil {
		for i, k := range keys {
			if _, ok := f.m[k]; !ok && f.capacity > 0 && len(f.m) >= f.capacity {
				c.err = errMapFull
				break
			}
			f.m[k] = vals[i]
			c.n++
		}
	}
	f.recordLocked(c)
	if c.err == nil && f.written != nil {
		select {
		case f.written <- struct{}{}:
		default:
		}
	}
	return c.n, c.err
}

func (f *fakeTarget[K, V]) DeleteBatch(keys []K) (int, error) {
	if len(keys) == 0 {
		panic("DeleteBatch with no keys")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c := call[K, V]{op: opDelete, keys: append([]K(nil), keys...), at: time.Now()}
	f.counts[opDelete]++
	if f.failDelete != nil {
		c.err = f.failDelete(f.counts[opDelete])
	}
	if c.err == nil {
		for _, k := range keys {
			delete(f.m, k)
		}
		c.n = len(keys)
	}
	f.recordLocked(c)
	return c.n, c.err
}

func (f *fakeTarget[K, V]) Iterate(fn func(K, V) bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts[opIterate]++
	c := call[K, V]{op: opIterate, at: time.Now()}
	if f.failIterate != nil {
		c.err = f.failIterate(f.counts[opIterate])
	}
	f.calls = append(f.calls, c)
	if c.err != nil {
		return c.err
	}
	for k, v := range f.m {
		if !fn(k, v) {
			break
		}
	}
	return nil
}

func (f *fakeTarget[K, V]) recordLocked(c call[K, V]) {
	f.calls = append(f.calls, c)
	if f.check != nil {
		if err := f.check(f.m); err != nil {
			f.violations = append(f.violations, fmt.Errorf("after %s of %d keys: %w", c.op, len(c.keys), err))
		}
	}
}

// snapshot returns a copy of the map.
func (f *fakeTarget[K, V]) snapshot() map[K]V {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[K]V, len(f.m))
	for k, v := range f.m {
		m[k] = v
	}
	return m
}

// writes returns the recorded puts and deletes, in order.
func (f *fakeTarget[K, V]) writes() []call[K, V] {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []call[K, V]
	for _, c := range f.calls {
		if c.op != opIterate {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeTarget[K, V]) count(o op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[o]
}

// external changes the map behind the reconciler's back.
func (f *fakeTarget[K, V]) external(fn func(m map[K]V)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.m)
}

func (f *fakeTarget[K, V]) checkViolations(t testing.TB) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, err := range f.violations {
		t.Error(err)
	}
}

// equal reports how the fake differs from the table, if it does.
func equal[K comparable, V comparable](f *fakeTarget[K, V], t *reconciler.Table[K, V]) error {
	got := f.snapshot()
	if n := t.Len(); len(got) != n {
		return fmt.Errorf("target has %d entries, table %d", len(got), n)
	}
	var err error
	t.Range(func(k K, v V) bool {
		if gv, ok := got[k]; !ok || gv != v {
			err = fmt.Errorf("key %v: target has %v (present %v), table %v", k, gv, ok, v)
			return false
		}
		return true
	})
	return err
}

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu sync.Mutex
	// mu guards the fields below.
	puts, deletes, rounds int
	errs                  []error
}

func (o *recorder) Applied(puts, deletes int, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.puts += puts
	o.deletes += deletes
	o.rounds++
}

func (o *recorder) Failed(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.errs = append(o.errs, err)
}

func (o *recorder) failures() []error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]error(nil), o.errs...)
}

// testConfig has short retries and no prune within a test's life.
func testConfig() reconciler.Config {
	return reconciler.Config{
		Name:          "test",
		BatchSize:     64,
		RetryMin:      time.Millisecond,
		RetryMax:      20 * time.Millisecond,
		PruneInterval: time.Hour,
	}
}

// mustNew returns a reconciler of table into target.
func mustNew[K comparable, V comparable](t testing.TB, table *reconciler.Table[K, V], target reconciler.Target[K, V], cfg reconciler.Config) *reconciler.Reconciler[K, V] {
	t.Helper()
	r, err := reconciler.New(table, target, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

// start runs r until the test ends, then checks that Run returned nil.
func start[K comparable, V comparable](t testing.TB, r *reconciler.Reconciler[K, V]) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// waitSynced waits for r's first full reconcile.
func waitSynced[K comparable, V comparable](t testing.TB, r *reconciler.Reconciler[K, V]) {
	t.Helper()
	select {
	case <-r.Synced():
	case <-time.After(10 * time.Second):
		t.Fatalf("not synced within 10s: %+v", r.Status())
	}
}

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// watch starts a goroutine that checks the fake's content with check
// until the test ends, as a user of the map would see it while the
// reconciler writes; failures are reported at the end.
func watch[K comparable, V comparable](t testing.TB, f *fakeTarget[K, V], check func(m map[K]V) error) {
	t.Helper()
	stop := make(chan struct{})
	done := make(chan []error)
	go func() {
		var errs []error
		for {
			select {
			case <-stop:
				done <- errs
				return
			default:
			}
			f.mu.Lock()
			if err := check(f.m); err != nil && len(errs) < 10 {
				errs = append(errs, err)
			}
			f.mu.Unlock()
			time.Sleep(50 * time.Microsecond)
		}
	}()
	t.Cleanup(func() {
		close(stop)
		for _, err := range <-done {
			t.Errorf("watcher: %v", err)
		}
	})
}
