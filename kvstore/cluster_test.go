package kvstore_test

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/meshplane/meshplane/cluster"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// clusterKeys returns the keys of a cluster of the test's own.
func clusterKeys(t *testing.T) kvstore.Keys {
	t.Helper()
	k, err := kvstore.NewKeys(etcdtest.Cluster(t))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestEnsureClusterCreatesOnce: the first call writes the record, later
// ones with the same name and ID read it and write nothing.
func TestEnsureClusterCreatesOnce(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	k := clusterKeys(t)
	if k.ClusterRecord() != kvstore.Root+k.Cluster()+"/cluster" {
		t.Fatalf("ClusterRecord() = %s", k.ClusterRecord())
	}
	if _, ok, err := kvstore.GetCluster(ctx, c, k); ok || err != nil {
		t.Fatalf("GetCluster of a fresh cluster = %v, %v; want none", ok, err)
	}

	first, created, err := kvstore.EnsureCluster(ctx, c, k, 42)
	if err != nil || !created {
		t.Fatalf("first EnsureCluster = %+v, created %v, %v", first, created, err)
	}
	if first.Name != k.Cluster() || first.ID != 42 || first.Format != cluster.Format || first.Created.IsZero() {
		t.Fatalf("first EnsureCluster = %+v", first)
	}
	kv, ok, err := c.Get(ctx, k.ClusterRecord())
	if err != nil || !ok || kv.Lease != 0 {
		t.Fatalf("the record: %+v, %v, %v; want it on no lease", kv, ok, err)
	}

	again, created, err := kvstore.EnsureCluster(ctx, c, k, 42)
	if err != nil || created || again != first {
		t.Fatalf("second EnsureCluster = %+v, created %v, %v; want %+v read back", again, created, err, first)
	}
	got, ok, err := kvstore.GetCluster(ctx, c, k)
	if err != nil || !ok || got != first {
		t.Fatalf("GetCluster = %+v, %v, %v; want %+v", got, ok, err, first)
	}
	if kv2, _, _ := c.Get(ctx, k.ClusterRecord()); kv2.ModRevision != kv.ModRevision {
		t.Fatalf("the second call wrote the record (mod revision %d, was %d)", kv2.ModRevision, kv.ModRevision)
	}
}

// TestEnsureClusterConcurrent: creators that race agree on one record.
// Those configured with the record's ID succeed, exactly one of them
// having written it; those configured with another ID are refused.
func TestEnsureClusterConcurrent(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	k := clusterKeys(t)
	const n = 16
	type result struct {
		id      int
		rec     cluster.Record
		created bool
		err     error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		c := newClient(t) // a client each, so the transactions really race
		wg.Go(func() {
			id := 1 + i%2 // half of them say 1, half 2
			rec, created, err := kvstore.EnsureCluster(ctx, c, k, id)
			results[i] = result{id, rec, created, err}
		})
	}
	wg.Wait()
	stored, ok, err := kvstore.GetCluster(ctx, newClient(t), k)
	if err != nil || !ok {
		t.Fatalf("GetCluster after the race: %v, %v", ok, err)
	}
	creators := 0
	for i, r := range results {
		if r.created {
			creators++
		}
		var m *cluster.MismatchError
		switch {
		case r.id == stored.ID && (r.err != nil || r.rec != stored):
			t.Errorf("creator %d (ID %d): %+v, %v; want the stored %+v", i, r.id, r.rec, r.err, stored)
		case r.id != stored.ID && (!errors.As(r.err, &m) || m.Field != cluster.FieldID || r.created):
			t.Errorf("creator %d (ID %d, stored %d): created %v, %v; want an ID mismatch", i, r.id, stored.ID, r.created, r.err)
		}
	}
	if creators != 1 {
		t.Errorf("%d callers created the record, want exactly 1", creators)
	}
}

// TestEnsureClusterMismatch: a record that disagrees with the
// configuration is refused with the field, both values and the key in the
// message, and nothing is written.
func TestEnsureClusterMismatch(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	tests := []struct {
		name   string
		stored func(k kvstore.Keys) cluster.Record
		id     int
		field  string
		says   []string
	}{
		{"ID", func(k kvstore.Keys) cluster.Record { return cluster.Record{Name: k.Cluster(), ID: 3, Format: 1} },
			4, cluster.FieldID, []string{"cluster ID differs", "says 3", "configured with 4", "--cluster-id 3"}},
		{"name: the record was copied from another cluster", func(kvstore.Keys) cluster.Record { return cluster.Record{Name: "other", ID: 4, Format: 1} },
			4, cluster.FieldName, []string{"cluster name differs", `"other"`, "--cluster-name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k := clusterKeys(t)
			b, err := tt.stored(k).Encode()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Put(ctx, k.ClusterRecord(), b); err != nil {
				t.Fatal(err)
			}
			before, _, _ := c.Get(ctx, k.ClusterRecord())

			rec, created, err := kvstore.EnsureCluster(ctx, c, k, tt.id)
			var m *cluster.MismatchError
			if !errors.As(err, &m) || m.Field != tt.field || created {
				t.Fatalf("EnsureCluster = created %v, %v; want a mismatch of %s", created, err, tt.field)
			}
			if rec != tt.stored(k) {
				t.Errorf("EnsureCluster returned %+v, want the stored record", rec)
			}
			for _, s := range append(tt.says, k.ClusterRecord()) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q does not say %q", err, s)
				}
			}
			kvs, _, err := c.List(ctx, k.Prefix())
			if err != nil || len(kvs) != 1 || kvs[0].ModRevision != before.ModRevision || string(kvs[0].Value) != string(b) {
				t.Errorf("after the refusal %s holds %+v (%v); want the record alone, unchanged", k.Prefix(), kvs, err)
			}
		})
	}
}

// TestEnsureClusterCorrupt: a record that does not decode is a clear
// error naming the key and what to do, for writers and readers alike, and
// it is left as it is.
func TestEnsureClusterCorrupt(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	for _, value := range []string{`{"name":`, `{"name":"x","id":0,"format":1}`, `{"name":"x","id":1,"format":9}`} {
		k := clusterKeys(t)
		if err := c.Put(ctx, k.ClusterRecord(), []byte(value)); err != nil {
			t.Fatal(err)
		}
		_, created, err := kvstore.EnsureCluster(ctx, c, k, 1)
		if !errors.Is(err, cluster.ErrInvalid) || created || !strings.Contains(err.Error(), k.ClusterRecord()) || !strings.Contains(err.Error(), "etcdctl del") {
			t.Errorf("EnsureCluster over %s: created %v, %v; want ErrInvalid naming the key and what to do", value, created, err)
		}
		if _, ok, err := kvstore.GetCluster(ctx, c, k); ok || !errors.Is(err, cluster.ErrInvalid) {
			t.Errorf("GetCluster over %s: %v, %v; want ErrInvalid", value, ok, err)
		}
		if kv, _, _ := c.Get(ctx, k.ClusterRecord()); string(kv.Value) != value {
			t.Errorf("the corrupt record became %s", kv.Value)
		}
	}
}
