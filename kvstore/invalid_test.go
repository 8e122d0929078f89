package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// invalidRecorder is a recorder that also implements InvalidHandler: an
// Invalid call is recorded as key=! (and the last state "!").
type invalidRecorder struct{ *recorder }

func newInvalidRecorder() invalidRecorder { return invalidRecorder{newRecorder()} }

func (r invalidRecorder) Invalid(key string, err error) {
	if err == nil {
		panic("Invalid without an error")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, key+"=!")
	r.last[key] = "!"
}

// invalidKeys renders Cache.Invalid as key:lastGood pairs.
func invalidKeys[T any](c *kvstore.Cache[T]) []string {
	var out []string
	for _, k := range c.Invalid() {
		if k.Err == nil || k.ModRevision == 0 {
			panic(fmt.Sprintf("invalid key %+v without an error or a revision", k))
		}
		out = append(out, k.Key+":"+strconv.FormatBool(k.LastGood))
	}
	return out
}

func sameStrings(got []string, want ...string) error {
	if !slices.Equal(got, want) {
		return fmt.Errorf("got %v, want %v", got, want)
	}
	return nil
}

// TestCacheCorruptValueKeepsLastGood overwrites a good value with one the
// decoder rejects: the cache keeps the last good value in force and its
// handlers are not told the key is gone (the fault: the cache deleted the
// entry, and an agent dropped a policy that denied traffic).
func TestCacheCorruptValueKeepsLastGood(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	prefix := testPrefix(t)
	putAll(t, c, prefix, map[string]string{"a": "1", "b": "2"})
	cache, err := kvstore.NewCache(c, kvstore.CacheConfig[int]{Prefix: prefix, Decode: decodeInt})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	cache.Subscribe(rec)
	irec := newInvalidRecorder()
	cache.Subscribe(irec)
	runCache(t, cache)
	eventually(t, 10*time.Second, "handlers see the list", func() error {
		return errors.Join(rec.has(map[string]string{"a": "1", "b": "2"}), irec.has(map[string]string{"a": "1", "b": "2"}))
	})
	rec.take()
	irec.take()
	putAll(t, c, prefix, map[string]string{"a": "garbage"})
	// b's change is written after a's: once a handler has it, it has
	// been given everything about a too.
	putAll(t, c, prefix, map[string]string{"b": "3"})
	eventually(t, 10*time.Second, "handlers see b's change", func() error {
		return errors.Join(rec.has(map[string]string{"b": "3"}), irec.has(map[string]string{"b": "3"}))
	})
	for name, r := range map[string]*recorder{"plain": rec, "InvalidHandler": irec.recorder} {
		if got := r.take(); !slices.Equal(got, []string{"b=3"}) {
			t.Errorf("%s handler calls after a corrupt put over a = %v, want only b=3 (a's last good value stays)", name, got)
		}
	}
	if v, ok := cache.Get("a"); !ok || v != 1 {
		t.Errorf("Get(a) = %d, %v after a corrupt put; want the last good value 1", v, ok)
	}
	if st := cache.Stats(); st.Entries != 2 || st.Invalid != 1 || st.InvalidKeys != 1 {
		t.Errorf("Stats() = %+v, want 2 entries, 1 invalid value seen, 1 invalid key", st)
	}
	if err := sameStrings(invalidKeys(cache), "a:true"); err != nil {
		t.Errorf("Invalid(): %v", err)
	}

	// A second corrupt value: still the last good one.
	putAll(t, c, prefix, map[string]string{"a": "worse"})
	eventually(t, 10*time.Second, "second corrupt value counted", func() error {
		if st := cache.Stats(); st.Invalid != 2 {
			return fmt.Errorf("%d invalid values seen, want 2", st.Invalid)
		}
		return nil
	})
	if v, ok := cache.Get("a"); !ok || v != 1 {
		t.Errorf("Get(a) = %d, %v after a second corrupt put; want 1", v, ok)
	}

	// Fixed: the new value replaces the last good one; the mark goes.
	putAll(t, c, prefix, map[string]string{"a": "10"})
	eventually(t, 10*time.Second, "handlers see the fix", func() error {
		return errors.Join(rec.has(map[string]string{"a": "10"}), irec.has(map[string]string{"a": "10"}))
	})
	if err := sameStrings(invalidKeys(cache), []string(nil)...); err != nil {
		t.Errorf("Invalid() after the fix: %v", err)
	}

	// Corrupt again, then deleted: a delete is a legitimate change.
	putAll(t, c, prefix, map[string]string{"a": "x"})
	if err := c.Delete(testContext(t), prefix+"a"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "handlers see the delete", func() error {
		return errors.Join(rec.has(map[string]string{"a": "-"}), irec.has(map[string]string{"a": "-"}))
	})
	if _, ok := cache.Get("a"); ok || len(cache.Invalid()) != 0 || cache.Stats().InvalidKeys != 0 {
		t.Errorf("after the delete: Get(a) found %v, Invalid() = %v; want neither", ok, cache.Invalid())
	}
}

// TestCacheNeverValidKey writes a corrupt value on a new key: it has no
// value; an InvalidHandler is told, a plain handler is not; a valid value
// then arrives as Upsert, and a delete of a never valid key as Delete.
func TestCacheNeverValidKey(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	prefix := testPrefix(t)
	var mu sync.Mutex
	reported := map[string]int{}
	putAll(t, c, prefix, map[string]string{"listed": "?"})
	var cache *kvstore.Cache[int]
	cache, err := kvstore.NewCache(c, kvstore.CacheConfig[int]{Prefix: prefix, Decode: decodeInt,
		OnInvalid: func(k kvstore.InvalidKey) {
			// The change is applied before OnInvalid runs: it may read
			// the cache.
			if len(cache.Invalid()) == 0 {
				panic("OnInvalid before the cache recorded the key")
			}
			mu.Lock()
			defer mu.Unlock()
			reported[k.Key]++
		}})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	cache.Subscribe(rec)
	irec := newInvalidRecorder()
	cache.Subscribe(irec)
	runCache(t, cache)
	eventually(t, 10*time.Second, "a never valid listed key is delivered as invalid", func() error {
		return irec.has(map[string]string{"listed": "!"})
	})
	putAll(t, c, prefix, map[string]string{"new": "garbage"})
	eventually(t, 10*time.Second, "a never valid put is delivered as invalid", func() error {
		return irec.has(map[string]string{"new": "!"})
	})
	if _, ok := cache.Get("new"); ok {
		t.Error("Get(new) found a value for a key that was never valid")
	}
	if err := sameStrings(invalidKeys(cache), "listed:false", "new:false"); err != nil {
		t.Errorf("Invalid(): %v", err)
	}
	putAll(t, c, prefix, map[string]string{"new": "7", "zz": "1"})
	if err := c.Delete(testContext(t), prefix+"listed"); err != nil {
		t.Fatal(err)
	}
	putAll(t, c, prefix, map[string]string{"zzz": "1"})
	eventually(t, 10*time.Second, "fix and delete delivered", func() error {
		return errors.Join(
			irec.has(map[string]string{"new": "7", "listed": "-", "zzz": "1"}),
			rec.has(map[string]string{"new": "7", "zzz": "1"}))
	})
	got := rec.take()
	// The plain handler may be told of the never valid key's delete
	// (a Delete of a key it never saw is allowed), never of the invalid
	// values themselves.
	got = slices.DeleteFunc(got, func(s string) bool { return s == "listed=-" })
	if err := sameStrings(got, "new=7", "zz=1", "zzz=1"); err != nil {
		t.Errorf("plain handler calls: %v", err)
	}
	if n := len(cache.Invalid()); n != 0 {
		t.Errorf("Invalid() holds %d keys after the fix and the delete", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if reported["listed"] != 1 || reported["new"] != 1 || len(reported) != 2 {
		t.Errorf("OnInvalid saw %v, want listed and new once each", reported)
	}
}

// TestCacheInvalidAcrossRelist stops a cache, corrupts keys while it does
// not watch and compacts etcd, so that the next Run lists again: a key
// that had a value keeps it, a new corrupt key is delivered as invalid, a
// never valid key that was deleted is delivered as deleted, and an
// unchanged invalid value is not reported again.
func TestCacheInvalidAcrossRelist(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t) // compaction is global
	c := srv.Client(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	putAll(t, c, prefix, map[string]string{"good": "1", "stays-bad": "?", "bad-then-gone": "?", "other": "5"})
	var mu sync.Mutex
	reported := map[string]int{}
	cache, err := kvstore.NewCache(c, kvstore.CacheConfig[int]{Prefix: prefix, Decode: decodeInt, RetryInterval: 10 * time.Millisecond,
		OnInvalid: func(k kvstore.InvalidKey) {
			mu.Lock()
			defer mu.Unlock()
			reported[k.Key]++
		}})
	if err != nil {
		t.Fatal(err)
	}
	irec := newInvalidRecorder()
	cache.Subscribe(irec)
	stop := runCache(t, cache)
	eventually(t, 10*time.Second, "handler sees the list", func() error {
		return irec.has(map[string]string{"good": "1", "stays-bad": "!", "bad-then-gone": "!", "other": "5"})
	})
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run() = %v", err)
	}
	irec.take()

	putAll(t, c, prefix, map[string]string{"good": "garbage", "new-bad": "?"})
	if err := c.Delete(ctx, prefix+"bad-then-gone"); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Etcd().Put(ctx, prefix+"other", "6")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Etcd().Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}

	runCache(t, cache)
	eventually(t, 10*time.Second, "handler catches up after the list", func() error {
		return irec.has(map[string]string{"other": "6", "new-bad": "!", "bad-then-gone": "-"})
	})
	if st := cache.Stats(); st.Relists != 2 {
		t.Errorf("Stats().Relists = %d, want 2 (the compaction forces a list)", st.Relists)
	}
	got := irec.take()
	if err := sameStrings(got, "bad-then-gone=-", "new-bad=!", "other=6"); err != nil {
		t.Errorf("handler calls after the list (good keeps its last value, stays-bad is unchanged): %v", err)
	}
	if v, ok := cache.Get("good"); !ok || v != 1 {
		t.Errorf("Get(good) = %d, %v after the list found it corrupt; want the last good value 1", v, ok)
	}
	if err := sameStrings(invalidKeys(cache), "good:true", "new-bad:false", "stays-bad:false"); err != nil {
		t.Errorf("Invalid(): %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string]int{"stays-bad": 1, "bad-then-gone": 1, "good": 1, "new-bad": 1}
	for k, n := range want {
		if reported[k] != n {
			t.Errorf("OnInvalid saw %v, want %v", reported, want)
			break
		}
	}
}

// TestCacheDeliveredRevision checks that DeliveredRevision reaches a
// change's revision only once every handler has been given it.
func TestCacheDeliveredRevision(t *testing.T) {
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
	cache.Subscribe(rec)
	cache.Subscribe(slow)
	runCache(t, cache)
	released := false
	defer func() {
		if !released {
			close(slow.release)
		}
	}()
	if err := cache.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the empty list is delivered", func() error {
		if cache.DeliveredRevision() == 0 {
			return errors.New("DeliveredRevision() = 0")
		}
		return nil
	})
	resp, err := c.Etcd().Put(ctx, prefix+"a", "1")
	if err != nil {
		t.Fatal(err)
	}
	written := resp.Header.Revision
	select {
	case <-slow.entered:
	case <-ctx.Done():
		t.Fatal("the slow handler was never called")
	}
	eventually(t, 10*time.Second, "the fast handler has the change", func() error {
		return rec.has(map[string]string{"a": "1"})
	})
	if r := cache.DeliveredRevision(); r >= written {
		t.Errorf("DeliveredRevision() = %d while a handler is still in the change of revision %d", r, written)
	}
	released = true
	close(slow.release)
	eventually(t, 10*time.Second, "DeliveredRevision reaches the change", func() error {
		if r := cache.DeliveredRevision(); r < written {
			return fmt.Errorf("DeliveredRevision() = %d, want >= %d", r, written)
		}
		return nil
	})
}
