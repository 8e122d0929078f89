package allocator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/labels"
)

// agent is one simulated node: its own client, session and allocator.
type agent struct {
	client  *kvstore.Client
	session *kvstore.Session
	alloc   *Allocator
	cancel  context.CancelFunc
	done    chan error
}

func startAgent(t testing.TB, cluster, node string, mod func(*Config)) *agent {
	t.Helper()
	return startAgentOn(t, srv, cluster, node, mod)
}

// startAgentOn starts an agent against server, with cluster ID 7 unless mod
// says otherwise; it stops when the test ends.
func startAgentOn(t testing.TB, server *etcdtest.Server, cluster, node string, mod func(*Config)) *agent {
	t.Helper()
	ctx := context.Background()
	c := server.Client(t)
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Cluster: cluster, ClusterID: 7, Node: node}
	if mod != nil {
		mod(&cfg)
	}
	a, err := New(cfg, c, s)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	ag := &agent{client: c, session: s, alloc: a, cancel: cancel, done: make(chan error, 1)}
	go func() { ag.done <- a.Run(rctx) }()
	t.Cleanup(ag.stop)
	return ag
}

func (ag *agent) stop() {
	if ag.cancel == nil {
		return
	}
	ag.cancel()
	<-ag.done
	ag.cancel = nil
	_ = ag.session.Close()
}

func set(t testing.TB, s string) labels.Set {
	t.Helper()
	ls, err := labels.ParseSet(s)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestAllocateRoundTrip(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	ag := startAgent(t, cluster, "node-a", nil)
	ctx := ctxT(t)
	web := set(t, "k8s:app=web,k8s:tier=front")
	id, err := ag.alloc.Allocate(ctx, web)
	if err != nil {
		t.Fatal(err)
	}
	if id.Cluster() != 7 || id.Local() < identity.MinLocal {
		t.Fatalf("id %d is not a cluster-7 ID", id)
	}
	again, err := ag.alloc.Allocate(ctx, set(t, "k8s:tier=front,k8s:app=web"))
	if err != nil || again != id {
		t.Fatalf("second allocation = %d, %v; want %d", again, err, id)
	}
	// The three keys exist: ID, index, reference on the session's lease.
	keys, _ := kvstore.NewKeys(cluster)
	kv, ok, err := ag.client.Get(ctx, keys.IdentityID(id.String()))
	if err != nil || !ok || string(kv.Value) != web.String() {
		t.Fatalf("id key = %q, %v, %v", kv.Value, ok, err)
	}
	kv, ok, _ = ag.client.Get(ctx, keys.IdentityLabels(web.Hash()))
	if !ok || string(kv.Value) != id.String() {
		t.Fatalf("index key = %q, %v", kv.Value, ok)
	}
	kv, ok, _ = ag.client.Get(ctx, keys.IdentityRef(web.Hash(), "node-a"))
	lease, _ := ag.session.Lease(ctx)
	if !ok || kv.Lease != int64(lease) {
		t.Fatalf("ref key = %+v, %v; want on lease %x", kv, ok, lease)
	}
	// Reserved labels map to fixed IDs without etcd.
	if id, err := ag.alloc.Allocate(ctx, set(t, "reserved:host")); err != nil || id != identity.Host {
		t.Fatalf("reserved:host = %d, %v", id, err)
	}
	if _, err := ag.alloc.Allocate(ctx, set(t, "reserved:host,k8s:app=x")); !errors.Is(err, labels.ErrInvalid) {
		t.Fatalf("mixed reserved set: err = %v, want ErrInvalid", err)
	}
	// Two releases drop the reference key.
	for range 2 {
		if err := ag.alloc.Release(web); err != nil {
			t.Fatal(err)
		}
	}
	if err := ag.alloc.Release(web); err == nil {
		t.Fatal("third release succeeded")
	}
	waitFor(t, "reference deleted", func() bool {
		_, ok, _ := ag.client.Get(ctx, keys.IdentityRef(web.Hash(), "node-a"))
		return !ok
	})
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Test64Agents: 64 allocators with separate clients race for the same label
// sets and for distinct ones. Every agent must get the same ID for the same
// labels, and no two label sets may share an ID.
func Test64Agents(t *testing.T) {
	t.Parallel()
	const agents, shared, own = 64, 20, 5
	cluster := etcdtest.Cluster(t)
	ags := make([]*agent, agents)
	for i := range ags {
		ags[i] = startAgent(t, cluster, fmt.Sprintf("node-%d", i), func(c *Config) { c.MaxBatch = 16 })
	}
	ctx := ctxT(t)
	type result struct {
		labels string
		id     identity.ID
	}
	results := make(chan result, agents*(shared+own))
	var wg sync.WaitGroup
	for i, ag := range ags {
		for j := range shared + own {
			wg.Go(func() {
				s := fmt.Sprintf("k8s:app=shared-%d", j)
				if j >= shared {
					s = fmt.Sprintf("k8s:app=own-%d-%d", i, j)
				}
				id, err := ag.alloc.Allocate(ctx, set(t, s))
				if err != nil {
					t.Error(err)
					return
				}
				results <- result{s, id}
			})
		}
	}
	wg.Wait()
	close(results)
	byLabels := map[string]identity.ID{}
	byID := map[identity.ID]string{}
	for r := range results {
		if prev, ok := byLabels[r.labels]; ok && prev != r.id {
			t.Fatalf("%s got IDs %d and %d", r.labels, prev, r.id)
		}
		if prev, ok := byID[r.id]; ok && prev != r.labels {
			t.Fatalf("ID %d given to %s and %s", r.id, prev, r.labels)
		}
		byLabels[r.labels], byID[r.id] = r.id, r.labels
	}
	if want := shared + agents*own; len(byLabels) != want {
		t.Fatalf("%d distinct label sets, want %d", len(byLabels), want)
	}
	// etcd agrees: exactly one ID key per label set.
	keys, _ := kvstore.NewKeys(cluster)
	kvs, _, err := ags[0].client.List(ctx, keys.IdentityIDPrefix())
	if err != nil || len(kvs) != len(byLabels) {
		t.Fatalf("%d ID keys in etcd, want %d (err %v)", len(kvs), len(byLabels), err)
	}
	var created, txns int64
	for _, ag := range ags {
		st := ag.alloc.Stats()
		created += st.Created
		txns += st.Txns
	}
	if created != int64(len(byLabels)) {
		t.Fatalf("allocators created %d identities, want %d", created, len(byLabels))
	}
	t.Logf("%d transactions for %d identities and %d references", txns, created, agents*(shared+own))
}

// TestAllocateReleaseChurn: the same label set allocated and released over
// and over from many goroutines (pods of one deployment restarting) ends
// with the reference present exactly while the node holds the set.
func TestAllocateReleaseChurn(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	ag := startAgent(t, cluster, "churn", nil)
	ctx := ctxT(t)
	s := set(t, "k8s:app=churn")
	want, err := ag.alloc.Allocate(ctx, s) // held throughout by this caller
	if err != nil {
		t.Fatal(err)
	}
	other := set(t, "k8s:app=churn-other")
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 50 {
				id, err := ag.alloc.Allocate(ctx, s)
				if err != nil || id != want {
					t.Errorf("allocate = %d, %v; want %d", id, err, want)
					return
				}
				if _, err := ag.alloc.Allocate(ctx, other); err != nil {
					t.Error(err)
					return
				}
				if err := ag.alloc.Release(s); err != nil {
					t.Error(err)
					return
				}
				if err := ag.alloc.Release(other); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	keys := mustKeys(t, cluster)
	if _, ok, _ := ag.client.Get(ctx, keys.IdentityRef(s.Hash(), "churn")); !ok {
		t.Fatal("reference of a held label set is missing")
	}
	waitFor(t, "reference of the released set deleted", func() bool {
		_, ok, _ := ag.client.Get(ctx, keys.IdentityRef(other.Hash(), "churn"))
		return !ok
	})
	// And the allocator still works.
	if _, err := ag.alloc.Allocate(ctx, other); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reference re-created", func() bool {
		_, ok, _ := ag.client.Get(ctx, keys.IdentityRef(other.Hash(), "churn"))
		return ok
	})
}
