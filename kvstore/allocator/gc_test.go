package allocator

import (
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newGC(t *testing.T, client *kvstore.Client, cluster string, grace time.Duration) (*GC, *fakeClock) {
	t.Helper()
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	g, err := NewGC(client, GCConfig{Cluster: cluster, GracePeriod: grace, Clock: clock, DeletesPerSecond: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return g, clock
}

func pass(t *testing.T, g *GC) GCResult {
	t.Helper()
	res, err := g.Pass(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestGCKeepsReferenced: identities held by a live node survive any number
// of passes; those whose only holder is gone are deleted after the grace
// period, and not before.
func TestGCKeepsReferenced(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	live := startAgent(t, cluster, "live", nil)
	dead := startAgent(t, cluster, "dead", nil)
	ctx := ctxT(t)
	shared, _ := live.alloc.Allocate(ctx, set(t, "k8s:app=shared"))
	if id, _ := dead.alloc.Allocate(ctx, set(t, "k8s:app=shared")); id != shared {
		t.Fatalf("shared labels got %d and %d", shared, id)
	}
	onlyLive, _ := live.alloc.Allocate(ctx, set(t, "k8s:app=live-only"))
	onlyDead, err := dead.alloc.Allocate(ctx, set(t, "k8s:app=dead-only"))
	if err != nil {
		t.Fatal(err)
	}
	dead.stop() // revokes its lease: its references go

	g, clock := newGC(t, live.client, cluster, time.Minute)
	if res := pass(t, g); res.Identities != 3 || res.Referenced != 2 || res.Candidates != 1 || res.Deleted != 0 {
		t.Fatalf("first pass: %+v", res)
	}
	clock.Advance(30 * time.Second)
	if res := pass(t, g); res.Deleted != 0 {
		t.Fatalf("deleted within the grace period: %+v", res)
	}
	clock.Advance(31 * time.Second)
	if res := pass(t, g); res.Deleted != 1 {
		t.Fatalf("after the grace period: %+v", res)
	}
	for id, want := range map[identity.ID]bool{shared: true, onlyLive: true, onlyDead: false} {
		_, ok, err := live.client.Get(ctx, mustKeys(t, cluster).IdentityID(id.String()))
		if err != nil || ok != want {
			t.Errorf("identity %d present = %v, want %v (err %v)", id, ok, want, err)
		}
	}
	// Many more passes never touch the referenced ones.
	for range 5 {
		clock.Advance(time.Hour)
		if res := pass(t, g); res.Deleted != 0 || res.Referenced != 2 {
			t.Fatalf("later pass: %+v", res)
		}
	}
}

// TestGCRaceWithNewReference: a reference taken between the mark and the
// sweep makes etcd refuse the delete.
func TestGCRaceWithNewReference(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	first := startAgent(t, cluster, "first", nil)
	ctx := ctxT(t)
	id, err := first.alloc.Allocate(ctx, set(t, "k8s:app=racy"))
	if err != nil {
		t.Fatal(err)
	}
	first.stop()
	g, clock := newGC(t, srv.Client(t), cluster, 0)
	if res := pass(t, g); res.Candidates != 1 {
		t.Fatalf("mark pass: %+v", res)
	}
	// Between the passes, a node takes a reference. Its allocator knows the
	// label set from its cache and joins it.
	second := startAgent(t, cluster, "second", nil)
	if got, err := second.alloc.Allocate(ctx, set(t, "k8s:app=racy")); err != nil || got != id {
		t.Fatalf("second node got %d, %v; want %d", got, err, id)
	}
	clock.Advance(time.Second)
	res := pass(t, g)
	if res.Deleted != 0 || res.Referenced != 1 {
		t.Fatalf("sweep pass deleted a referenced identity: %+v", res)
	}
	// Same race, but the reference lands after the sweep's read: the sweep
	// transaction itself must refuse. Mark, then reference, then sweep using
	// the stale marks directly.
	second.stop()
	if res := pass(t, g); res.Candidates != 1 {
		t.Fatalf("re-mark: %+v", res)
	}
	third := startAgent(t, cluster, "third", nil)
	if got, _ := third.alloc.Allocate(ctx, set(t, "k8s:app=racy")); got != id {
		t.Fatalf("third node got %d, want %d", got, id)
	}
	deleted, conflicts, err := g.sweep(ctx, []identity.ID{id})
	if err != nil || deleted != 0 || conflicts != 1 {
		t.Fatalf("sweep = %d deleted, %d conflicts, %v; want a conflict", deleted, conflicts, err)
	}
}

func mustKeys(t testing.TB, cluster string) kvstore.Keys {
	k, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestRestoreAfterDeletion: if an identity a node holds is deleted behind
// its back (its lease was lost and GC ran), the node re-creates it with the
// same ID.
func TestRestoreAfterDeletion(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	ag := startAgent(t, cluster, "n1", nil)
	ctx := ctxT(t)
	s := set(t, "k8s:app=restore")
	id, err := ag.alloc.Allocate(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	keys := mustKeys(t, cluster)
	// What GC does: both keys in one transaction.
	if _, err := ag.client.Etcd().Txn(ctx).Then(
		clientv3.OpDelete(keys.IdentityID(id.String())),
		clientv3.OpDelete(keys.IdentityLabels(s.Hash())),
	).Commit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "identity restored", func() bool {
		kv, ok, _ := ag.client.Get(ctx, keys.IdentityLabels(s.Hash()))
		return ok && string(kv.Value) == id.String()
	})
	if ag.alloc.Stats().Restored != 1 {
		t.Fatalf("stats: %+v", ag.alloc.Stats())
	}
}
