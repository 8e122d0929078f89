package kvstore_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// TestExternalEtcd runs the client, a session and a cache against Debian's
// etcd binary (3.4), the oldest server meshplane supports, as an external
// process.
func TestExternalEtcd(t *testing.T) {
	t.Parallel()
	srv := etcdtest.StartExternal(t)
	c := srv.Client(t)
	ctx := testContext(t)
	prefix := testPrefix(t)

	if _, err := c.Create(ctx, prefix+"created", []byte("1")); err != nil {
		t.Fatalf("Create() = %v", err)
	}
	if _, err := c.Create(ctx, prefix+"created", []byte("2")); !errors.Is(err, kvstore.ErrConflict) {
		t.Fatalf("second Create() = %v, want ErrConflict", err)
	}

	cache, err := kvstore.NewCache(c, kvstore.CacheConfig[int]{Prefix: prefix, Decode: decodeInt})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	cache.Subscribe(rec)
	stop := runCache(t, cache)
	if err := cache.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}

	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 5 * time.Second, RetryInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("NewSession() = %v", err)
	}
	defer s.Close()
	if err := s.Put(ctx, prefix+"owned", "2"); err != nil {
		t.Fatalf("Session.Put() = %v", err)
	}
	kv, ok, err := c.Get(ctx, prefix+"owned")
	if err != nil || !ok || kv.Lease != int64(s.State().Lease) {
		t.Fatalf("Get(owned) = %+v, %v, %v; want it on lease %x", kv, ok, err, int64(s.State().Lease))
	}
	eventually(t, 10*time.Second, "the cache sees the session's key", func() error {
		return cacheHolds(cache, map[string]int{"created": 1, "owned": 2})
	})

	// Lease loss and re-assert work against the old server too.
	old := s.State().Lease
	if _, err := c.Etcd().Revoke(ctx, clientv3.LeaseID(old)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the owned key is back on a new lease", func() error {
		st := s.State()
		kv, ok, err := c.Get(ctx, prefix+"owned")
		switch {
		case err != nil:
			return err
		case st.Lease == 0 || st.Lease == old:
			return fmt.Errorf("state %+v, want a new lease", st)
		case !ok || kv.Lease != int64(st.Lease):
			return fmt.Errorf("owned key %+v (exists %v), want it on lease %x", kv, ok, int64(st.Lease))
		}
		return nil
	})
	eventually(t, 10*time.Second, "the handler saw the key come back", func() error {
		return rec.has(map[string]string{"created": "1", "owned": "2"})
	})

	if err := s.Close(); err != nil {
		t.Fatalf("Session.Close() = %v", err)
	}
	eventually(t, 10*time.Second, "the cache sees the session end", func() error {
		return cacheHolds(cache, map[string]int{"created": 1})
	})
	if err := stop(); err == nil {
		t.Fatal("Run() = nil, want context.Canceled")
	}
}
