package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/kvstore"
)

func TestCreate(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	key := testPrefix(t) + "k"

	first, err := c.Create(ctx, key, []byte("first"))
	if err != nil {
		t.Fatalf("first Create() = %v", err)
	}
	if first.Key != key || string(first.Value) != "first" || first.ModRevision == 0 {
		t.Fatalf("first Create() = %+v", first)
	}
	got, err := c.Create(ctx, key, []byte("second"))
	if !errors.Is(err, kvstore.ErrConflict) {
		t.Fatalf("second Create() = %v, want an error wrapping ErrConflict", err)
	}
	if string(got.Value) != "first" || got.ModRevision != first.ModRevision {
		t.Fatalf("second Create() returned %+v, want the stored value %q at revision %d", got, "first", first.ModRevision)
	}
	kv, ok, err := c.Get(ctx, key)
	if err != nil || !ok || string(kv.Value) != "first" {
		t.Fatalf("Get() = %+v, %v, %v; want the first value", kv, ok, err)
	}
}

func TestSwap(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)

	tests := []struct {
		name    string
		setup   string // value stored before the swap; "" means none
		rev     func(stored int64) int64
		want    error
		wantVal string // value afterwards; "" means absent
	}{
		{"right revision", "old", func(r int64) int64 { return r }, nil, "new"},
		{"stale revision", "old", func(r int64) int64 { return r - 1 }, kvstore.ErrConflict, "old"},
		{"future revision", "old", func(r int64) int64 { return r + 1000 }, kvstore.ErrConflict, "old"},
		{"zero creates a missing key", "", func(int64) int64 { return 0 }, nil, "new"},
		{"zero on an existing key", "old", func(int64) int64 { return 0 }, kvstore.ErrConflict, "old"},
		{"revision on a missing key", "", func(int64) int64 { return 5 }, kvstore.ErrConflict, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := fmt.Sprintf("%sk%d", prefix, i)
			var stored int64
			if tt.setup != "" {
				kv, err := c.Create(ctx, key, []byte(tt.setup))
				if err != nil {
					t.Fatal(err)
				}
				stored = kv.ModRevision
			}
			got, err := c.Swap(ctx, key, tt.rev(stored), []byte("new"))
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Swap() = %v, want %v", err, tt.want)
			}
			switch {
			case err == nil && (string(got.Value) != "new" || got.ModRevision <= stored):
				t.Errorf("Swap() = %+v, want the new value at a later revision", got)
			case err != nil && tt.setup != "" && (string(got.Value) != tt.setup || got.ModRevision != stored):
				t.Errorf("Swap() conflict returned %+v, want the stored value at revision %d", got, stored)
			}
			kv, ok, err := c.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantVal == "" && ok || tt.wantVal != "" && string(kv.Value) != tt.wantVal {
				t.Errorf("after Swap() the key holds %q (exists %v), want %q", kv.Value, ok, tt.wantVal)
			}
		})
	}
}

func TestDeleteIf(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	key := testPrefix(t) + "k"

	kv, err := c.Create(ctx, key, []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteIf(ctx, key, kv.ModRevision-1); !errors.Is(err, kvstore.ErrConflict) {
		t.Fatalf("DeleteIf() at a stale revision = %v, want ErrConflict", err)
	}
	if _, ok, _ := c.Get(ctx, key); !ok {
		t.Fatal("DeleteIf() at a stale revision deleted the key")
	}
	if err := c.DeleteIf(ctx, key, kv.ModRevision); err != nil {
		t.Fatalf("DeleteIf() at the current revision = %v", err)
	}
	if _, ok, _ := c.Get(ctx, key); ok {
		t.Fatal("DeleteIf() at the current revision left the key")
	}
	if err := c.DeleteIf(ctx, key, kv.ModRevision); !errors.Is(err, kvstore.ErrConflict) {
		t.Fatalf("DeleteIf() of a deleted key = %v, want ErrConflict", err)
	}
}

func TestPutGetDelete(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	key := testPrefix(t) + "k"

	if _, ok, err := c.Get(ctx, key); err != nil || ok {
		t.Fatalf("Get() of a missing key = %v, %v", ok, err)
	}
	lease, err := c.Etcd().Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Etcd().Revoke(context.WithoutCancel(ctx), lease.ID)
	if err := c.Put(ctx, key, []byte("v"), kvstore.WithLease(kvstore.LeaseID(lease.ID))); err != nil {
		t.Fatalf("Put() = %v", err)
	}
	kv, ok, err := c.Get(ctx, key)
	if err != nil || !ok || string(kv.Value) != "v" || kv.Lease != int64(lease.ID) {
		t.Fatalf("Get() = %+v, %v, %v; want v on lease %x", kv, ok, err, lease.ID)
	}
	if err := c.Put(ctx, key, []byte("w"), kvstore.WithLease(0)); err != nil {
		t.Fatalf("Put() without lease = %v", err)
	}
	if kv, _, _ := c.Get(ctx, key); kv.Lease != 0 || string(kv.Value) != "w" {
		t.Fatalf("Get() after Put without lease = %+v", kv)
	}
	if err := c.Delete(ctx, key); err != nil {
		t.Fatalf("Delete() = %v", err)
	}
	if _, ok, _ := c.Get(ctx, key); ok {
		t.Fatal("Delete() left the key")
	}
	if err := c.Put(ctx, key, []byte("v"), kvstore.WithLease(kvstore.LeaseID(0x7fff0000dead))); !kvstore.IsLeaseNotFound(err) {
		t.Fatalf("Put() on a missing lease = %v, want lease not found", err)
	}
}

// TestListPages lists more keys than one page holds, while another writer
// adds keys inside the listed range: the result must be every key that
// existed at the returned revision, sorted, and none written later.
func TestListPages(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	const (
		n     = 12000 // more than two pages of 5000
		batch = 500
	)
	for i := 0; i < n; i += batch {
		ops := make([]clientv3.Op, 0, batch)
		for j := i; j < i+batch; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("%sk%05d", prefix, j), "v"))
		}
		if _, err := c.Etcd().Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("write keys %d..%d: %v", i, i+batch-1, err)
		}
	}

	// The writer puts keys that sort into every page ("k00000x" after
	// "k00000"), so a list that read later pages at a newer revision would
	// return some of them.
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; wctx.Err() == nil; i = (i + 997) % n {
			_, _ = c.Etcd().Put(wctx, fmt.Sprintf("%sk%05dx", prefix, i), "late")
		}
	})
	kvs, rev, err := c.List(ctx, prefix)
	stop()
	wg.Wait()
	if err != nil {
		t.Fatalf("List() = %v", err)
	}

	atRev, err := c.Etcd().Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(kvs)) != atRev.Count || len(kvs) < n {
		t.Fatalf("List() returned %d keys; %d existed at revision %d (at least %d written)", len(kvs), atRev.Count, rev, n)
	}
	if !slices.IsSortedFunc(kvs, func(a, b kvstore.KeyValue) int { return strings.Compare(a.Key, b.Key) }) {
		t.Error("List() is not sorted by key")
	}
	seen := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		if kv.ModRevision > rev {
			t.Fatalf("List() at revision %d returned %s modified at %d", rev, kv.Key, kv.ModRevision)
		}
		if seen[kv.Key] {
			t.Fatalf("List() returned %s twice", kv.Key)
		}
		seen[kv.Key] = true
	}
	for i := range n {
		if k := fmt.Sprintf("%sk%05d", prefix, i); !seen[k] {
			t.Fatalf("List() is missing %s", k)
		}
	}
}

func TestListEmpty(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	kvs, rev, err := c.List(testContext(t), testPrefix(t))
	if err != nil || len(kvs) != 0 || rev == 0 {
		t.Fatalf("List() of an empty prefix = %d keys, revision %d, %v; want none at a nonzero revision", len(kvs), rev, err)
	}
}

func TestDeletePrefix(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	for _, k := range []string{"a", "b", "c/d"} {
		if err := c.Put(ctx, prefix+k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Put(ctx, prefix[:len(prefix)-1]+"-sibling", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if n, err := c.DeletePrefix(ctx, prefix); err != nil || n != 3 {
		t.Fatalf("DeletePrefix() = %d, %v; want 3", n, err)
	}
	if _, ok, _ := c.Get(ctx, prefix[:len(prefix)-1]+"-sibling"); !ok {
		t.Error("DeletePrefix() deleted a key beside the prefix")
	}
	if _, err := c.DeletePrefix(ctx, ""); !errors.Is(err, kvstore.ErrConfig) {
		t.Fatalf("DeletePrefix(\"\") = %v, want ErrConfig", err)
	}
}
