package reconciler_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshplane/meshplane/nodeagent/reconciler"
)

// span returns the entries k -> k*10+gen for k in [from, to).
func span(from, to uint32, gen uint64) map[uint32]uint64 {
	m := make(map[uint32]uint64, to-from)
	for k := from; k < to; k++ {
		m[k] = uint64(k)*10 + gen
	}
	return m
}

func union(ms ...map[uint32]uint64) map[uint32]uint64 {
	out := make(map[uint32]uint64)
	for _, m := range ms {
		maps.Copy(out, m)
	}
	return out
}

func sortedKeys(m map[uint32]uint64) []uint32 { return slices.Sorted(maps.Keys(m)) }

// TestResync starts a reconciler on a map that already holds entries, as
// after an agent restart, and checks that it writes exactly the
// difference, puts before deletes, and that no desired entry the map held
// at the start is ever missing from it.
func TestResync(t *testing.T) {
	tests := []struct {
		name      string
		installed map[uint32]uint64 // the pinned map's content at start
		desired   map[uint32]uint64
		puts      map[uint32]uint64 // exactly these are written, once each
		deletes   []uint32          // exactly these are deleted, once each
	}{
		{
			name:    "empty map",
			desired: span(0, 1000, 0),
			puts:    span(0, 1000, 0),
		},
		{
			name:      "identical",
			installed: span(0, 1000, 0),
			desired:   span(0, 1000, 0),
		},
		{
			name:      "drift",
			installed: union(span(0, 100, 0), span(100, 200, 1), span(300, 1000, 0), span(1000, 1100, 0)),
			desired:   span(0, 1000, 0),
			puts:      span(100, 300, 0), // 100-199 changed, 200-299 missing
			deletes:   sortedKeys(span(1000, 1100, 0)),
		},
		{
			name:      "all replaced",
			installed: span(0, 300, 0),
			desired:   span(300, 600, 0),
			puts:      span(300, 600, 0),
			deletes:   sortedKeys(span(0, 300, 0)),
		},
		{
			name:      "table empty",
			installed: span(0, 300, 0),
			deletes:   sortedKeys(span(0, 300, 0)),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(tt.installed)
			// Desired entries the map holds at the start must stay in it
			// at every moment: checked after every write, and by a
			// watcher reading the map while the reconciler writes.
			var keep []uint32
			for k := range tt.desired {
				if _, ok := tt.installed[k]; ok {
					keep = append(keep, k)
				}
			}
			present := func(m map[uint32]uint64) error {
				for _, k := range keep {
					if _, ok := m[k]; !ok {
						return fmt.Errorf("desired key %d missing from the map", k)
					}
				}
				return nil
			}
			f.check = present
			watch(t, f, present)

			table := reconciler.NewTable[uint32, uint64]()
			for k, v := range tt.desired {
				table.Set(k, v)
			}
			cfg := testConfig()
			r := mustNew(t, table, f, cfg)
			start(t, r)
			table.MarkReady()
			waitSynced(t, r)
			if err := equal(f, table); err != nil {
				t.Fatal(err)
			}

			puts := make(map[uint32]uint64)
			var deletes []uint32
			sawDelete := false
			for _, c := range f.writes() {
				if len(c.keys) > cfg.BatchSize {
					t.Errorf("%s of %d keys, batch size is %d", c.op, len(c.keys), cfg.BatchSize)
				}
				switch c.op {
				case opPut:
					if sawDelete {
						t.Errorf("put after a delete: puts must all come first")
					}
					for i, k := range c.keys {
						if _, dup := puts[k]; dup {
							t.Errorf("key %d put twice", k)
						}
						puts[k] = c.vals[i]
					}
				case opDelete:
					sawDelete = true
					for _, k := range c.keys {
						if _, ok := tt.desired[k]; ok {
							t.Errorf("desired key %d deleted", k)
						}
					}
					deletes = append(deletes, c.keys...)
				}
			}
			if !maps.Equal(puts, tt.puts) && len(puts)+len(tt.puts) > 0 {
				t.Errorf("put %d entries, want %d: %v", len(puts), len(tt.puts), diffKeys(puts, tt.puts))
			}
			slices.Sort(deletes)
			if !slices.Equal(deletes, tt.deletes) {
				t.Errorf("deleted %v, want %v", deletes, tt.deletes)
			}
			st := r.Status()
			if st.Puts != int64(len(tt.puts)) || st.Deletes != int64(len(tt.deletes)) || st.Errors != 0 ||
				st.Desired != len(tt.desired) || st.Installed != len(tt.desired) || st.Pending != 0 || !st.Synced ||
				st.LastPrune.IsZero() || st.Name != cfg.Name {
				t.Errorf("Status = %+v, want %d puts, %d deletes, %d desired and installed, synced",
					st, len(tt.puts), len(tt.deletes), len(tt.desired))
			}
			f.checkViolations(t)
		})
	}
}

func diffKeys(got, want map[uint32]uint64) string {
	var extra, missing []uint32
	for k, v := range got {
		if wv, ok := want[k]; !ok || wv != v {
			extra = append(extra, k)
		}
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			missing = append(missing, k)
		}
	}
	slices.Sort(extra)
	slices.Sort(missing)
	return fmt.Sprintf("unexpected %v, missing %v", extra, missing)
}

// TestNothingBeforeReady loads the table in parts, as watch caches do
// after a restart, and checks that the reconciler touches the map only
// after MarkReady, and then writes only the difference.
func TestNothingBeforeReady(t *testing.T) {
	f := newFake(span(0, 1000, 0))
	var ready atomic.Bool
	f.check = func(map[uint32]uint64) error {
		if !ready.Load() {
			return errors.New("write before MarkReady")
		}
		return nil
	}
	table := reconciler.NewTable[uint32, uint64]()
	r := mustNew(t, table, f, testConfig())
	start(t, r)

	// The first cache has synced; the second has not.
	for k, v := range span(0, 500, 0) {
		table.Set(k, v)
	}
	// Give a misbehaving reconciler time to prune the other half. This
	// sleep coordinates nothing: a correct reconciler does nothing
	// whatever the wait.
	time.Sleep(50 * time.Millisecond)
	if n := f.count(opIterate) + len(f.writes()); n != 0 {
		t.Fatalf("%d calls to the target before MarkReady", n)
	}
	if st := r.Status(); st.Synced || st.Puts+st.Deletes != 0 || st.Desired != 500 {
		t.Fatalf("Status before MarkReady = %+v", st)
	}

	for k, v := range span(500, 1000, 0) {
		table.Set(k, v)
	}
	for k := range uint32(10) {
		table.Delete(k)
	}
	table.Set(20, 7)
	ready.Store(true)
	table.MarkReady()
	table.MarkReady() // idempotent
	waitSynced(t, r)
	if err := equal(f, table); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); st.Puts != 1 || st.Deletes != 10 {
		t.Errorf("Status = %+v, want 1 put and 10 deletes", st)
	}
	f.checkViolations(t)
}

// TestInitialSyncFromEmpty checks a first start: the whole table goes in,
// in batches, and later changes follow.
func TestInitialSyncFromEmpty(t *testing.T) {
	f := newFake[uint32, uint64](nil)
	table := reconciler.NewTable[uint32, uint64]()
	for k, v := range span(0, 1000, 0) {
		table.Set(k, v)
	}
	obs := &recorder{}
	cfg := testConfig()
	cfg.Observer = obs
	r := mustNew(t, table, f, cfg)
	start(t, r)
	table.MarkReady()
	waitSynced(t, r)
	if err := equal(f, table); err != nil {
		t.Fatal(err)
	}
	if n, want := f.count(opPut), (1000+cfg.BatchSize-1)/cfg.BatchSize; n != want {
		t.Errorf("%d PutBatch calls, want %d", n, want)
	}

	table.Set(5000, 1)
	table.Set(1, 2)
	table.Delete(2)
	table.Delete(999_999) // not in the table: nothing to do
	eventually(t, 5*time.Second, "changes written", func() error { return equal(f, table) })
	eventually(t, 5*time.Second, "observer told", func() error {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		if obs.puts != 1002 || obs.deletes != 1 {
			return fmt.Errorf("observer saw %d puts and %d deletes", obs.puts, obs.deletes)
		}
		return nil
	})
	if got, ok := table.Get(1); !ok || got != 2 {
		t.Errorf("Get(1) = %d, %v", got, ok)
	}
}

// blocker holds the next PutBatch after arm until release.
type blocker struct {
	mu sync.Mutex
	// mu guards entered and release.
	entered, release chan struct{}
}

// arm makes the next PutBatch block; it returns a channel closed when
// that PutBatch has started, and a func that lets it go on.
func (b *blocker) arm() (entered <-chan struct{}, release func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.entered, b.release = make(chan struct{}), make(chan struct{})
	rel := b.release
	return b.entered, func() { close(rel) }
}

func (b *blocker) beforePut([]uint32, []uint64) {
	b.mu.Lock()
	entered, release := b.entered, b.release
	b.entered, b.release = nil, nil
	b.mu.Unlock()
	if entered != nil {
		close(entered)
		<-release
	}
}

// TestCoalescing changes keys while the reconciler is busy writing: a key
// changed 1000 times is written about twice, with the last value, and a
// key changed and changed back is not written at all.
func TestCoalescing(t *testing.T) {
	f := newFake[uint32, uint64](nil)
	var b blocker
	f.beforePut = b.beforePut
	table := reconciler.NewTable[uint32, uint64]()
	table.MarkReady()
	r := mustNew(t, table, f, testConfig())
	start(t, r)
	waitSynced(t, r) // nothing to write

	entered, release := b.arm()
	table.Set(1, 0)
	<-entered // the reconciler is inside PutBatch
	for v := range uint64(1000) {
		table.Set(1, v+1)
	}
	release()
	eventually(t, 5*time.Second, "last value written", func() error { return equal(f, table) })
	if v, _ := table.Get(1); v != 1000 {
		t.Fatalf("table has %d", v)
	}
	if n := f.count(opPut); n > 2 {
		t.Errorf("%d PutBatch calls for one key changed 1000 times", n)
	}

	// Setting the value the table holds marks nothing.
	before := f.count(opPut)
	table.Set(1, 1000)
	if p := r.Status().Pending; p != 0 {
		t.Errorf("%d pending after setting an unchanged value", p)
	}

	// A key changed and changed back before the reconciler looks is
	// not written.
	entered, release = b.arm()
	table.Set(2, 1)
	<-entered
	table.Set(1, 5)
	table.Set(1, 1000)
	release()
	eventually(t, 5*time.Second, "no change pending", func() error {
		if p := r.Status().Pending; p != 0 {
			return fmt.Errorf("%d pending", p)
		}
		return equal(f, table)
	})
	for _, c := range f.writes()[before:] {
		if slices.Contains(c.keys, 1) {
			t.Errorf("key 1 written again: %v", c.keys)
		}
	}
}

// TestRetryBackoff fails the first writes and checks that the reconciler
// retries with growing pauses until they succeed, and reports each
// failure.
func TestRetryBackoff(t *testing.T) {
	const failures = 5
	f := newFake[uint32, uint64](nil)
	f.failPut = func(n int) error {
		if n <= failures {
			return fmt.Errorf("attempt %d: %w", n, errInjected)
		}
		return nil
	}
	table := reconciler.NewTable[uint32, uint64]()
	for k, v := range span(0, 100, 0) {
		table.Set(k, v)
	}
	obs := &recorder{}
	cfg := testConfig()
	cfg.BatchSize = 1000
	cfg.RetryMin, cfg.RetryMax = 4*time.Millisecond, 16*time.Millisecond
	cfg.Observer = obs
	r := mustNew(t, table, f, cfg)
	start(t, r)
	table.MarkReady()
	waitSynced(t, r)
	if err := equal(f, table); err != nil {
		t.Fatal(err)
	}

	errs := obs.failures()
	if len(errs) != failures {
		t.Fatalf("observer saw %d failures, want %d", len(errs), failures)
	}
	for _, err := range errs {
		if !errors.Is(err, errInjected) {
			t.Errorf("observer got %v, want it to wrap errInjected", err)
		}
	}
	st := r.Status()
	if st.Errors != failures || !strings.Contains(st.LastError, errInjected.Error()) || st.LastErrorAt.IsZero() || st.Pending != 0 {
		t.Errorf("Status = %+v", st)
	}
	// Timers never fire early, so the pauses have lower bounds: the
	// backoff doubles from RetryMin to RetryMax, less up to a quarter
	// of jitter, never below RetryMin.
	var at []time.Time
	for _, c := range f.writes() {
		at = append(at, c.at)
	}
	if len(at) != failures+1 {
		t.Fatalf("%d PutBatch calls, want %d", len(at), failures+1)
	}
	floors := []time.Duration{4, 6, 12, 12, 12}
	for i := 1; i < len(at); i++ {
		gap, floor := at[i].Sub(at[i-1]), floors[i-1]*time.Millisecond
		if gap < floor {
			t.Errorf("retry %d came %s after the failure, want at least %s", i, gap, floor)
		}
	}
}

// TestMapFull fills a map of limited capacity: the entries that fit stay
// written, the error shows in Status and the Observer, the rest is
// retried, and goes in once the table shrinks.
func TestMapFull(t *testing.T) {
	f := newFake[uint32, uint64](nil)
	f.capacity = 100
	table := reconciler.NewTable[uint32, uint64]()
	for k, v := range span(0, 150, 0) {
		table.Set(k, v)
	}
	obs := &recorder{}
	cfg := testConfig()
	cfg.BatchSize = 32
	cfg.Observer = obs
	r := mustNew(t, table, f, cfg)
	start(t, r)
	table.MarkReady()

	eventually(t, 5*time.Second, "full map reported", func() error {
		st := r.Status()
		if st.Errors < 2 || !strings.Contains(st.LastError, errMapFull.Error()) {
			return fmt.Errorf("Status = %+v, want retried map-full errors", st)
		}
		return nil
	})
	st := r.Status()
	if st.Synced || st.Installed != 100 || st.Pending != 50 || st.Desired != 150 {
		t.Errorf("Status = %+v, want 100 installed and 50 pending, not synced", st)
	}
	if n := len(f.snapshot()); n != 100 {
		t.Errorf("map holds %d entries, want the 100 that fit", n)
	}
	for _, err := range obs.failures() {
		if !errors.Is(err, errMapFull) {
			t.Errorf("observer got %v, want it to wrap errMapFull", err)
		}
	}

	for k := range uint32(60) {
		table.Delete(k)
	}
	waitSynced(t, r)
	eventually(t, 5*time.Second, "table fits", func() error { return equal(f, table) })
	if st := r.Status(); st.Pending != 0 || st.Installed != 90 {
		t.Errorf("Status = %+v", st)
	}
}

// TestPruneRepairsDrift changes the map behind the reconciler's back; the
// next prune puts it right.
func TestPruneRepairsDrift(t *testing.T) {
	f := newFake[uint32, uint64](nil)
	table := reconciler.NewTable[uint32, uint64]()
	for k, v := range span(0, 100, 0) {
		table.Set(k, v)
	}
	table.MarkReady()
	cfg := testConfig()
	cfg.PruneInterval = 20 * time.Millisecond
	r := mustNew(t, table, f, cfg)
	start(t, r)
	waitSynced(t, r)
	firstPrune := r.Status().LastPrune

	f.external(func(m map[uint32]uint64) {
		delete(m, 5)   // deleted by someone else
		m[500] = 1     // written by someone else
		m[7] = 123_456 // changed by someone else
	})
	eventually(t, 5*time.Second, "drift repaired", func() error { return equal(f, table) })
	if st := r.Status(); !st.LastPrune.After(firstPrune) || st.Puts != 102 || st.Deletes != 1 {
		t.Errorf("Status = %+v, want a later prune, 102 puts, 1 delete", st)
	}
}

// TestUnreadableTarget fails the first reads of the map: the reconciler
// writes nothing until it can read it, then syncs.
func TestUnreadableTarget(t *testing.T) {
	f := newFake(span(0, 50, 0))
	f.failIterate = func(n int) error {
		if n <= 3 {
			return errInjected
		}
		return nil
	}
	var read atomic.Bool
	f.check = func(map[uint32]uint64) error {
		if !read.Load() {
			return errors.New("write before the map was read")
		}
		return nil
	}
	table := reconciler.NewTable[uint32, uint64]()
	for k, v := range span(25, 75, 0) {
		table.Set(k, v)
	}
	table.MarkReady()
	r := mustNew(t, table, f, testConfig())
	f.mu.Lock() // read is set under the fake's lock, as Iterate runs
	orig := f.failIterate
	f.failIterate = func(n int) error {
		err := orig(n)
		read.Store(err == nil)
		return err
	}
	f.mu.Unlock()
	start(t, r)
	waitSynced(t, r)
	if err := equal(f, table); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); st.Errors != 3 || st.Puts != 25 || st.Deletes != 25 {
		t.Errorf("Status = %+v, want 3 errors, 25 puts, 25 deletes", st)
	}
	f.checkViolations(t)
}

// TestDeleteFailure fails a delete: the key stays pending and is deleted
// on retry.
func TestDeleteFailure(t *testing.T) {
	f := newFake(span(0, 10, 0))
	f.failDelete = func(n int) error {
		if n == 1 {
			return errInjected
		}
		return nil
	}
	table := reconciler.NewTable[uint32, uint64]()
	table.MarkReady()
	r := mustNew(t, table, f, testConfig())
	start(t, r)
	waitSynced(t, r)
	if n := len(f.snapshot()); n != 0 {
		t.Fatalf("map holds %d entries", n)
	}
	if st := r.Status(); st.Errors != 1 || st.Deletes != 10 {
		t.Errorf("Status = %+v", st)
	}
}

// TestRunStops cancels Run in each of its states; goleak in TestMain
// checks that nothing is left behind.
func TestRunStops(t *testing.T) {
	tests := []struct {
		name  string
		setup func(table *reconciler.Table[uint32, uint64], f *fakeTarget[uint32, uint64])
		wait  func(r *reconciler.Reconciler[uint32, uint64]) error
	}{
		{
			name:  "before ready",
			setup: func(*reconciler.Table[uint32, uint64], *fakeTarget[uint32, uint64]) {},
			wait:  func(*reconciler.Reconciler[uint32, uint64]) error { return nil },
		},
		{
			name: "idle",
			setup: func(table *reconciler.Table[uint32, uint64], _ *fakeTarget[uint32, uint64]) {
				table.Set(1, 1)
				table.MarkReady()
			},
			wait: func(r *reconciler.Reconciler[uint32, uint64]) error {
				if !r.Status().Synced {
					return errors.New("not synced")
				}
				return nil
			},
		},
		{
			name: "retrying",
			setup: func(table *reconciler.Table[uint32, uint64], f *fakeTarget[uint32, uint64]) {
				f.failPut = func(int) error { return errInjected }
				table.Set(1, 1)
				table.MarkReady()
			},
			wait: func(r *reconciler.Reconciler[uint32, uint64]) error {
				if r.Status().Errors < 3 {
					return errors.New("not retrying yet")
				}
				return nil
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake[uint32, uint64](nil)
			table := reconciler.NewTable[uint32, uint64]()
			tt.setup(table, f)
			r := mustNew(t, table, f, testConfig())
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			eventually(t, 5*time.Second, "state reached", func() error { return tt.wait(r) })
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v, want nil", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
		})
	}
}

// TestConcurrentWriters has many goroutines change the table while the
// reconciler writes it into a map that sometimes fails; in the end the
// map equals the table.
func TestConcurrentWriters(t *testing.T) {
	f := newFake[uint32, uint64](nil)
	f.failPut = func(n int) error {
		if n%7 == 0 {
			return errInjected
		}
		return nil
	}
	table := reconciler.NewTable[uint32, uint64]()
	cfg := testConfig()
	cfg.BatchSize = 16
	cfg.PruneInterval = 30 * time.Millisecond
	r := mustNew(t, table, f, cfg)
	start(t, r)
	watch(t, f, func(map[uint32]uint64) error { return nil }) // a reader racing the writes

	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range 5000 {
				k := rng.Uint32N(500)
				if rng.IntN(4) == 0 {
					table.Delete(k)
				} else {
					table.Set(k, rng.Uint64N(8))
				}
				if w == 0 && i == 1000 {
					table.MarkReady()
				}
				_ = r.Status()
			}
		}()
	}
	wg.Wait()
	waitSynced(t, r)
	eventually(t, 10*time.Second, "map equals table", func() error {
		if p := r.Status().Pending; p != 0 {
			return fmt.Errorf("%d pending", p)
		}
		return equal(f, table)
	})
}

func TestNewErrors(t *testing.T) {
	f := newFake[uint32, uint64](nil)
	tests := []struct {
		name  string
		table *reconciler.Table[uint32, uint64]
		cfg   func(c *reconciler.Config)
		want  error
	}{
		{"no name", reconciler.NewTable[uint32, uint64](), func(c *reconciler.Config) { c.Name = "" }, reconciler.ErrConfig},
		{"negative batch", reconciler.NewTable[uint32, uint64](), func(c *reconciler.Config) { c.BatchSize = -1 }, reconciler.ErrConfig},
		{"negative prune", reconciler.NewTable[uint32, uint64](), func(c *reconciler.Config) { c.PruneInterval = -time.Second }, reconciler.ErrConfig},
		{"retry max below min", reconciler.NewTable[uint32, uint64](), func(c *reconciler.Config) {
			c.RetryMin, c.RetryMax = time.Second, time.Millisecond
		}, reconciler.ErrConfig},
		{"no table", nil, func(*reconciler.Config) {}, reconciler.ErrConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.cfg(&cfg)
			if _, err := reconciler.New(tt.table, f, cfg); !errors.Is(err, tt.want) {
				t.Errorf("New = %v, want %v", err, tt.want)
			}
		})
	}

	t.Run("defaults", func(t *testing.T) {
		if err := (reconciler.Config{Name: "ipcache"}).Validate(); err != nil {
			t.Errorf("Validate of the zero config = %v", err)
		}
		// A RetryMin above the default RetryMax raises the default.
		if err := (reconciler.Config{Name: "ipcache", RetryMin: time.Minute}).Validate(); err != nil {
			t.Errorf("Validate = %v", err)
		}
	})

	t.Run("table in use", func(t *testing.T) {
		table := reconciler.NewTable[uint32, uint64]()
		mustNew(t, table, f, testConfig())
		if _, err := reconciler.New(table, f, testConfig()); !errors.Is(err, reconciler.ErrTableInUse) {
			t.Errorf("second New = %v, want ErrTableInUse", err)
		}
	})

	t.Run("run twice", func(t *testing.T) {
		table := reconciler.NewTable[uint32, uint64]()
		table.MarkReady()
		r := mustNew(t, table, newFake[uint32, uint64](nil), testConfig())
		start(t, r)
		waitSynced(t, r)
		if err := r.Run(context.Background()); !errors.Is(err, reconciler.ErrRunning) {
			t.Errorf("second Run = %v, want ErrRunning", err)
		}
	})
}

// TestApplied checks Status().Applied against Table.Seq: it reaches the
// table's Seq only once every change up to it is in the Target, and it
// stays behind while a write is blocked or failing.
func TestApplied(t *testing.T) {
	f := newFake[uint32, uint64](nil)
	var b blocker
	f.beforePut = b.beforePut
	var failing sync.Mutex
	fail := false
	f.failPut = func(int) error {
		failing.Lock()
		defer failing.Unlock()
		if fail {
			return errInjected
		}
		return nil
	}
	table := reconciler.NewTable[uint32, uint64]()
	table.Set(1, 1) // before ready: the first full compare takes it
	r := mustNew(t, table, f, testConfig())
	start(t, r)
	if a := r.Status().Applied; a != 0 {
		t.Fatalf("Applied = %d before the first full compare", a)
	}
	table.MarkReady()
	waitSynced(t, r)
	applied := func(seq uint64) func() error {
		return func() error {
			if a := r.Status().Applied; a < seq {
				return fmt.Errorf("Applied = %d, want %d", a, seq)
			}
			return nil
		}
	}
	eventually(t, 5*time.Second, "the first change applied", applied(table.Seq()))

	entered, release := b.arm()
	table.Set(2, 2)
	seq := table.Seq()
	<-entered // the change is taken, the write in flight
	if a := r.Status().Applied; a >= seq {
		t.Errorf("Applied = %d while the change of Seq %d is being written", a, seq)
	}
	release()
	eventually(t, 5*time.Second, "the written change applied", applied(seq))

	failing.Lock()
	fail = true
	failing.Unlock()
	table.Set(3, 3)
	seq = table.Seq()
	eventually(t, 5*time.Second, "the write fails", func() error {
		if r.Status().Pending == 0 {
			return errors.New("nothing pending")
		}
		return nil
	})
	if a := r.Status().Applied; a >= seq {
		t.Errorf("Applied = %d while the change of Seq %d fails", a, seq)
	}
	failing.Lock()
	fail = false
	failing.Unlock()
	eventually(t, 5*time.Second, "the retried change applied", applied(seq))
	if err := equal(f, table); err != nil {
		t.Error(err)
	}
}
