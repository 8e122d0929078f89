package allocator

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/labels"
)

// TestLeaseLossReassertsReferences: when the node's lease is revoked behind
// its back, the session re-creates it and writes the references again.
func TestLeaseLossReassertsReferences(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	ag := startAgent(t, cluster, "n1", nil)
	ctx := ctxT(t)
	var sets []labels.Set
	for i := range 300 { // more than one re-assert transaction
		sets = append(sets, set(t, fmt.Sprintf("k8s:app=lease-%d", i)))
	}
	if _, err := ag.alloc.AllocateBatch(ctx, sets); err != nil {
		t.Fatal(err)
	}
	old, _ := ag.session.Lease(ctx)
	if _, err := ag.client.Etcd().Revoke(ctx, clientv3.LeaseID(old)); err != nil {
		t.Fatal(err)
	}
	keys := mustKeys(t, cluster)
	waitFor(t, "references re-asserted on a new lease", func() bool {
		kvs, _, err := ag.client.List(ctx, keys.IdentityRefsPrefix())
		if err != nil || len(kvs) != len(sets) {
			return false
		}
		for _, kv := range kvs {
			if kv.Lease == int64(old) || kv.Lease == 0 {
				return false
			}
		}
		return true
	})
	if g := ag.session.State().Generation; g < 2 {
		t.Fatalf("session generation %d after lease loss", g)
	}
	// Allocation goes on.
	if _, err := ag.alloc.Allocate(ctx, set(t, "k8s:app=after-loss")); err != nil {
		t.Fatal(err)
	}
}

// TestExhaustion: running out of IDs is ErrExhausted, and nothing is written.
func TestExhaustion(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	ag := startAgent(t, cluster, "n1", func(c *Config) { c.MaxIdentities = 3 })
	ctx := ctxT(t)
	for i := range 3 {
		if _, err := ag.alloc.Allocate(ctx, set(t, fmt.Sprintf("k8s:app=x%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "cache holds 3", func() bool { return ag.alloc.Stats().CacheEntries == 3 })
	_, err := ag.alloc.Allocate(ctx, set(t, "k8s:app=one-too-many"))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	kvs, _, _ := ag.client.List(ctx, mustKeys(t, cluster).IdentityIDPrefix())
	if len(kvs) != 3 {
		t.Fatalf("%d ID keys after exhaustion, want 3", len(kvs))
	}
}

// TestCorruptKeysSkipped: corrupt identity keys are counted and skipped,
// and allocation works around them.
func TestCorruptKeysSkipped(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	keys := mustKeys(t, cluster)
	c := srv.Client(t)
	ctx := ctxT(t)
	for k, v := range map[string]string{
		keys.IdentityID("not-a-number"): "k8s:app=x",
		keys.IdentityID("12"):           "k8s:app=reserved-range",
		keys.IdentityID("459008"):       "no source here", // 7<<16|256
	} {
		if err := c.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	ag := startAgent(t, cluster, "n1", nil)
	id, err := ag.alloc.Allocate(ctx, set(t, "k8s:app=fine"))
	if err != nil {
		t.Fatal(err)
	}
	// The watch delivers the new identity asynchronously.
	waitFor(t, "cache holds the new identity", func() bool { return ag.alloc.Stats().CacheEntries == 1 })
	if st := ag.alloc.Stats(); st.InvalidCached != 3 {
		t.Fatalf("stats %+v, want 3 invalid", st)
	}
	if id == 7<<16|256 {
		t.Fatal("allocator reused the ID of a corrupt key")
	}
}

// TestEtcdRestartMidRun: etcd restarts while allocators run; they recover
// and go on, and every label set ends with exactly one ID.
func TestEtcdRestartMidRun(t *testing.T) {
	own := etcdtest.Start(t)
	cluster := etcdtest.Cluster(t)
	var ags []*agent
	for i := range 4 {
		ags = append(ags, startAgentOn(t, own, cluster, fmt.Sprintf("n%d", i), func(c *Config) {
			c.ClusterID, c.RetryFor = 9, time.Minute
		}))
	}
	ctx := ctxT(t)
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		got = map[string]map[identity.ID]bool{}
	)
	for i, ag := range ags {
		wg.Go(func() {
			for j := range 60 {
				if j == 20 && i == 0 {
					own.Restart()
				}
				s := fmt.Sprintf("k8s:app=r%d", j%30)
				id, err := ag.alloc.Allocate(ctx, set(t, s))
				if err != nil {
					t.Errorf("agent %d: %v", i, err)
					return
				}
				mu.Lock()
				if got[s] == nil {
					got[s] = map[identity.ID]bool{}
				}
				got[s][id] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for s, ids := range got {
		if len(ids) != 1 {
			t.Errorf("%s got IDs %v", s, ids)
		}
	}
	kvs, _, err := ags[0].client.List(ctx, mustKeys(t, cluster).IdentityIDPrefix())
	if err != nil || len(kvs) != 30 {
		t.Fatalf("%d ID keys, want 30 (%v)", len(kvs), err)
	}
}

// FuzzDecodeIdentity: keys read back from etcd never crash the decoder, and
// what it accepts is a valid allocated ID with a canonical label set.
func FuzzDecodeIdentity(f *testing.F) {
	f.Add("459008", []byte("k8s:app=web"))
	f.Add("1", []byte("reserved:host"))
	f.Add("x", []byte(""))
	f.Add("65792", []byte("k8s:a=b,k8s:a=c"))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		s, err := DecodeIdentity(key, value)
		if err != nil {
			return
		}
		id, err := identity.Parse(key)
		if err != nil || id.IsReserved() {
			t.Fatalf("accepted key %q", key)
		}
		back, err := labels.ParseSet(s.String())
		if err != nil || !back.Equal(s) {
			t.Fatalf("decoded labels %q do not round-trip", s)
		}
	})
}

// TestCorruptIdentityKeepsLabels overwrites a held identity's value with
// garbage: the cache keeps the last good labels (LookupID still answers),
// lists the key as invalid, and the allocator does not take it for a
// deleted identity (no restore). A real delete (of the ID and its label
// index, as GC deletes them) is restored.
func TestCorruptIdentityKeepsLabels(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	keys := mustKeys(t, cluster)
	c := srv.Client(t)
	ctx := ctxT(t)
	ag := startAgent(t, cluster, "n1", nil)
	s := set(t, "k8s:app=kept")
	id, err := ag.alloc.Allocate(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "cache holds the identity", func() bool { _, ok := ag.alloc.LookupID(id); return ok })
	if err := c.Put(ctx, keys.IdentityID(id.String()), []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the key is listed invalid", func() bool {
		inv := ag.alloc.Invalid()
		return len(inv) == 1 && inv[0].Key == id.String() && inv[0].LastGood
	})
	if got, ok := ag.alloc.LookupID(id); !ok || !got.Equal(s) {
		t.Errorf("LookupID(%d) = %s, %v after the corrupt put; want the last good labels %s", id, got, ok, s)
	}
	if st := ag.alloc.Stats(); st.Restored != 0 || st.InvalidCached != 1 || ag.alloc.CacheStats().InvalidKeys != 1 {
		t.Errorf("stats %+v, cache %+v: want no restore, 1 invalid value", st, ag.alloc.CacheStats())
	}
	for _, k := range []string{keys.IdentityLabels(s.Hash()), keys.IdentityID(id.String())} {
		if err := c.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the deleted identity is restored", func() bool {
		got, ok := ag.alloc.LookupID(id)
		return ok && got.Equal(s) && ag.alloc.Stats().Restored == 1 && len(ag.alloc.Invalid()) == 0
	})
}
