package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// decodeInt accepts decimal integers; anything else is corrupt.
func decodeInt(_ string, value []byte) (int, error) {
	return strconv.Atoi(string(value))
}

// recorder is a Handler that remembers every call and the last state of
// each key ("-" for deleted).
type recorder struct {
	mu    sync.Mutex
	calls []string
	last  map[string]string
}

func newRecorder() *recorder { return &recorder{last: make(map[string]string)} }

func (r *recorder) Upsert(key string, value int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("%s=%d", key, value))
	r.last[key] = strconv.Itoa(value)
}

func (r *recorder) Delete(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, key+"=-")
	r.last[key] = "-"
}

// has reports an error unless the last state of every key in want matches.
func (r *recorder) has(want map[string]string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, v := range want {
		if r.last[k] != v {
			return fmt.Errorf("handler has %s=%q, want %q", k, r.last[k], v)
		}
	}
	return nil
}

func (r *recorder) seen(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.last[key]
	return ok
}

// take returns the calls so far, sorted, and forgets them.
func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	calls := r.calls
	r.calls = nil
	clear(r.last)
	slices.Sort(calls)
	return calls
}

// runCache runs cache until stop is called; stop waits for Run to return
// and hands back its error.
func runCache[T any](t *testing.T, cache *kvstore.Cache[T]) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cache.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("Cache.Run did not return within 30s of its context ending")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func putAll(t *testing.T, c *kvstore.Client, prefix string, kvs map[string]string) {
	t.Helper()
	ctx := testContext(t)
	for k, v := range kvs {
		if err := c.Put(ctx, prefix+k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
}

func cacheHolds(cache *kvstore.Cache[int], want map[string]int) error {
	if cache.Len() != len(want) {
		var keys []string
		cache.Range(func(k string, _ int) bool { keys = append(keys, k); return true })
		slices.Sort(keys)
		return fmt.Errorf("cache holds %v, want %d entries", keys, len(want))
	}
	for k, v := range want {
		if got, ok := cache.Get(k); !ok || got != v {
			return fmt.Errorf("Get(%q) = %d, %v; want %d", k, got, ok, v)
		}
	}
	return nil
}

func TestNewCacheConfig(t *testing.T) {
	c := newClient(t)
	tests := []struct {
		name string
		cfg  kvstore.CacheConfig[int]
	}{
		{"no prefix", kvstore.CacheConfig[int]{Decode: decodeInt}},
		{"no decoder", kvstore.CacheConfig[int]{Prefix: "/x/"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := kvstore.NewCache(c, tt.cfg); !errors.Is(err, kvstore.ErrConfig) {
				t.Fatalf("NewCache() = %v, want ErrConfig", err)
			}
		})
	}
}

// TestCache covers the initial list, Synced, changes after it, and values
// the decoder rejects.
func TestCache(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	putAll(t, c, prefix, map[string]string{"a": "1", "b": "2", "c": "3", "bad": "x"})
	if err := c.Put(ctx, prefix[:len(prefix)-1]+"-outside", []byte("9")); err != nil {
		t.Fatal(err)
	}

	var invalidMu sync.Mutex
	invalid := map[string]int{}
	cache, err := kvstore.NewCache(c, kvstore.CacheConfig[int]{
		Prefix: prefix,
		Decode: decodeInt,
		OnInvalid: func(k kvstore.InvalidKey) {
			invalidMu.Lock()
			defer invalidMu.Unlock()
			if k.Err == nil {
				panic("OnInvalid without an error")
			}
			invalid[k.Key]++
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	cache.Subscribe(rec)
	select {
	case <-cache.Synced():
		t.Fatal("Synced before Run")
	default:
	}
	notYet, cancel := context.WithCancel(ctx)
	cancel()
	if err := cache.WaitSynced(notYet); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitSynced() with a cancelled context = %v, want context.Canceled", err)
	}
	stop := runCache(t, cache)
	if err := cache.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cacheHolds(cache, map[string]int{"a": 1, "b": 2, "c": 3}); err != nil {
		t.Fatalf("after sync: %v", err)
	}
	st := cache.Stats()
	if st.Entries != 3 || st.Invalid != 1 || st.Relists != 1 || st.Revision == 0 {
		t.Fatalf("Stats() after sync = %+v, want 3 entries, 1 invalid, 1 list, a revision", st)
	}
	eventually(t, 10*time.Second, "handler sees the initial list", func() error {
		return rec.has(map[string]string{"a": "1", "b": "2", "c": "3"})
	})

	// Changes after the list.
	putAll(t, c, prefix, map[string]string{"b": "20", "d": "4"})
	if err := c.Delete(ctx, prefix+"c"); err != nil {
		t.Fatal(err)
	}
	// A valid key overwritten with a corrupt value keeps its last good
	// value.
	putAll(t, c, prefix, map[string]string{"a": "one"})
	// A corrupt key made valid enters it.
	putAll(t, c, prefix, map[string]string{"bad": "5"})
	// A new corrupt key has no value.
	putAll(t, c, prefix, map[string]string{"worse": "?"})
	want := map[string]int{"a": 1, "b": 20, "d": 4, "bad": 5}
	eventually(t, 10*time.Second, "cache follows the changes", func() error {
		if st := cache.Stats(); st.Invalid != 3 {
			return fmt.Errorf("%d invalid values seen, want 3", st.Invalid)
		}
		return cacheHolds(cache, want)
	})
	eventually(t, 10*time.Second, "handler follows the changes", func() error {
		return rec.has(map[string]string{"a": "1", "b": "20", "c": "-", "d": "4", "bad": "5"})
	})
	if rec.seen("worse") {
		t.Error("the handler was told about a key the decoder rejected")
	}
	st = cache.Stats()
	if st.Invalid != 3 || st.InvalidKeys != 2 || st.Entries != 4 || st.Relists != 1 || st.Events < 6 {
		t.Errorf("Stats() = %+v, want 3 invalid values seen, 2 invalid keys now, 4 entries, 1 list, at least 6 events", st)
	}
	invalidMu.Lock()
	if !maps.Equal(invalid, map[string]int{"bad": 1, "a": 1, "worse": 1}) {
		t.Errorf("OnInvalid saw %v, want bad, a and worse once each", invalid)
	}
	invalidMu.Unlock()
	if _, ok := cache.Get("outside"); ok || cache.Len() != 4 {
		t.Error("the cache holds a key beside its prefix")
	}

	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run() = %v, want context.Canceled", err)
	}
}

// TestCacheResume stops a synced cache, changes the prefix, and runs the
// same cache again. Without compaction the new Run watches on from where
// the cache was; with it, the watch fails and the cache lists again. Either
// way the handler sees exactly the keys that changed.
func TestCacheResume(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		compact     bool
		wantRelists int64
	}{
		{"watch from the old revision", false, 1},
		{"old revision compacted", true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A server of its own: compaction is global and would make
			// other tests' caches list again.
			srv := etcdtest.Start(t)
			c := srv.Client(t)
			ctx := testContext(t)
			prefix := testPrefix(t)
			putAll(t, c, prefix, map[string]string{"a": "1", "b": "2", "c": "3", "d": "4"})
			cache, err := kvstore.NewCache(c, kvstore.CacheConfig[int]{Prefix: prefix, Decode: decodeInt, RetryInterval: 10 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			rec := newRecorder()
			cache.Subscribe(rec)
			stop := runCache(t, cache)
			if err := cache.WaitSynced(ctx); err != nil {
				t.Fatal(err)
			}
			eventually(t, 10*time.Second, "handler sees the initial list", func() error {
				return rec.has(map[string]string{"a": "1", "b": "2", "c": "3", "d": "4"})
			})
			if err := stop(); !errors.Is(err, context.Canceled) {
				t.Fatalf("Run() = %v, want context.Canceled", err)
			}
			rec.take()

			// While no Run watches: change b twice, delete c, add e,
			// rewrite d with its own value (a change to etcd, if not to
			// the value), leave a alone.
			putAll(t, c, prefix, map[string]string{"b": "21"})
			putAll(t, c, prefix, map[string]string{"b": "22", "e": "5", "d": "4"})
			if err := c.Delete(ctx, prefix+"c"); err != nil {
				t.Fatal(err)
			}
			resp, err := c.Etcd().Put(ctx, prefix+"zz-last-change", "0")
			if err != nil {
				t.Fatal(err)
			}
			changed := resp.Header.Revision
			if tt.compact {
				if _, err := c.Etcd().Compact(ctx, changed, clientv3.WithCompactPhysical()); err != nil {
					t.Fatal(err)
				}
			}

			stop = runCache(t, cache)
			eventually(t, 10*time.Second, "cache catches up", func() error {
				if st := cache.Stats(); st.Revision < changed {
					return fmt.Errorf("cache at revision %d, want %d", st.Revision, changed)
				}
				return nil
			})
			// Every change before the catch-up is queued for the handler;
			// a key written now is delivered after them.
			putAll(t, c, prefix, map[string]string{"zz-sentinel": "0"})
			eventually(t, 10*time.Second, "handler sees the sentinel", func() error {
				return rec.has(map[string]string{"zz-sentinel": "0"})
			})
			if err := cacheHolds(cache, map[string]int{"a": 1, "b": 22, "d": 4, "e": 5, "zz-last-change": 0, "zz-sentinel": 0}); err != nil {
				t.Fatal(err)
			}
			if err := rec.has(map[string]string{"b": "22"}); err != nil {
				t.Error(err)
			}
			// Coalescing may merge b's two changes or not; nothing else
			// may show up, least of all a, which did not change.
			got := slices.DeleteFunc(rec.take(), func(s string) bool { return s == "b=21" || s == "b=22" })
			want := []string{"c=-", "d=4", "e=5", "zz-last-change=0", "zz-sentinel=0"}
			if !slices.Equal(got, want) {
				t.Errorf("handler calls after the resume (b aside) = %v, want %v", got, want)
			}
			if st := cache.Stats(); st.Relists != tt.wantRelists {
				t.Errorf("Stats().Relists = %d, want %d", st.Relists, tt.wantRelists)
			}
			if err := stop(); !errors.Is(err, context.Canceled) {
				t.Fatalf("Run() = %v, want context.Canceled", err)
			}
		})
	}
}

// blockingHandler blocks in its first call until release is closed.
type blockingHandler struct {
	entered chan struct{} // closed when the first call blocks
	release chan struct{}
	once    sync.Once
}

func (h *blockingHandler) block() {
	first := false
	h.once.Do(func() { first = true; close(h.entered) })
	if first {
		<-h.release
	}
}

func (h *blockingHandler) Upsert(string, int) { h.block() }
func (h *blockingHandler) Delete(string)      { h.block() }

// TestCacheSlowHandler blocks one handler: neither the cache nor another
// handler may wait for it.
func TestCacheSlowHandler(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	cache, err := kvstore.NewCache(c, kvstore.CacheConfig[int]{Prefix: prefix, Decode: decodeInt})
	if err != nil {
		t.Fatal(err)
	}
	slow := &blockingHandler{entered: make(chan struct{}), release: make(chan struct{})}
	rec := newRecorder()
	cache.Subscribe(slow)
	cache.Subscribe(rec)
	stop := runCache(t, cache)
	released := false
	defer func() {
		if !released {
			close(slow.release) // let Run return
		}
	}()
	if err := cache.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	putAll(t, c, prefix, map[string]string{"first": "1"})
	select {
	case <-slow.entered:
	case <-ctx.Done():
		t.Fatal("the slow handler was never called")
	}
	for i := range 50 {
		putAll(t, c, prefix, map[string]string{fmt.Sprintf("k%02d", i): strconv.Itoa(i)})
	}
	eventually(t, 10*time.Second, "cache sees writes while a handler is blocked", func() error {
		if v, ok := cache.Get("k49"); !ok || v != 49 {
			return fmt.Errorf("Get(k49) = %d, %v", v, ok)
		}
		return nil
	})
	eventually(t, 10*time.Second, "the other handler sees writes while one is blocked", func() error {
		return rec.has(map[string]string{"first": "1", "k49": "49"})
	})
	released = true
	close(slow.release)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run() = %v, want context.Canceled", err)
	}
}

// TestCacheClientClosed closes the client under a running cache: Run must
// return with an error instead of retrying (or spinning) until its context
// ends.
func TestCacheClientClosed(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c, err := kvstore.New(ctx, sharedConfig())
	if err != nil {
		t.Fatal(err)
	}
	cache, err := kvstore.NewCache(c, kvstore.CacheConfig[int]{Prefix: testPrefix(t), Decode: decodeInt})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cache.Run(ctx) }()
	if err := cache.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || ctx.Err() != nil {
			t.Fatalf("Run() = %v after the client closed, want an error", err)
		}
	case <-ctx.Done():
		t.Fatal("Run() did not return after the client closed")
	}
}

// TestCacheDelivered checks that Delivered closes only after every handler
// has seen every entry of the first list, also for an empty prefix.
func TestCacheDelivered(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	for _, n := range []int{0, 2000} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			prefix := testPrefix(t)
			want := make(map[string]string, n)
			for i := range n {
				want[fmt.Sprintf("k%04d", i)] = strconv.Itoa(i)
			}
			putAll(t, c, prefix, want)
			cache, err := kvstore.NewCache(c, kvstore.CacheConfig[int]{Prefix: prefix, Decode: decodeInt})
			if err != nil {
				t.Fatal(err)
			}
			recs := []*recorder{newRecorder(), newRecorder()}
			for _, r := range recs {
				cache.Subscribe(r)
			}
			runCache(t, cache)
			select {
			case <-cache.Delivered():
			case <-ctx.Done():
				t.Fatal("Delivered never closed")
			}
			for i, r := range recs {
				if err := r.has(want); err != nil {
					t.Errorf("handler %d when Delivered closed: %v", i, err)
				}
			}
		})
	}
}
