package kvstore_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/policy"
)

// rec is the model of the store tests: stored as JSON under its Name;
// a negative N does not encode.
type rec struct {
	Name string `json:"name"`
	N    int    `json:"n"`
}

var recCodec = kvstore.Codec[rec]{
	Decode: kvstore.CheckKey("rec", func(_ string, value []byte) (rec, error) {
		var r rec
		err := json.Unmarshal(value, &r)
		return r, err
	}, func(r rec) string { return r.Name }),
	Encode: func(r rec) ([]byte, error) {
		if r.N < 0 {
			return nil, fmt.Errorf("rec %s: n %d is negative", r.Name, r.N)
		}
		return json.Marshal(r)
	},
	Key: func(r rec) string { return r.Name },
}

func newRecStore(t *testing.T) (*kvstore.Client, *kvstore.Store[rec]) {
	t.Helper()
	c := newClient(t)
	return c, kvstore.NewStore(c, testPrefix(t)+"recs/", recCodec)
}

func recs(n int) []rec {
	out := make([]rec, n)
	for i := range out {
		out[i] = rec{Name: fmt.Sprintf("r%03d", i), N: i}
	}
	return out
}

// storeIsEmpty fails the test if the store holds anything.
func storeIsEmpty(t *testing.T, s *kvstore.Store[rec]) {
	t.Helper()
	items, _, err := s.List(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 0 {
		t.Fatalf("store holds %d values (first %q), want none: the failed write was not all or nothing", len(items), items[0].Key)
	}
}

func TestStorePutAllRoundTrip(t *testing.T) {
	t.Parallel()
	_, s := newRecStore(t)
	ctx := testContext(t)
	want := recs(kvstore.MaxTxnOps)
	if err := s.PutAll(ctx, want); err != nil {
		t.Fatalf("PutAll(%d) = %v", len(want), err)
	}
	items, rev, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != len(want) {
		t.Fatalf("List() = %d items, want %d", len(items), len(want))
	}
	first := items[0].ModRevision
	for i, it := range items {
		if it.Err != nil || it.Key != want[i].Name || it.Value != want[i] {
			t.Fatalf("item %d = %+v, want %+v", i, it, want[i])
		}
		// One transaction: one revision for all.
		if it.ModRevision != first || it.ModRevision > rev {
			t.Fatalf("item %d at revision %d, item 0 at %d, list at %d: not one transaction", i, it.ModRevision, first, rev)
		}
	}
}

// TestStorePutAllAllOrNothing: every way a PutAll can fail writes nothing.
func TestStorePutAllAllOrNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		vs   func() []rec
		opts []kvstore.WriteOption
		want error  // wrapped sentinel, or nil for any error
		says string // in the message
	}{
		{"more than MaxTxnOps", func() []rec { return recs(kvstore.MaxTxnOps + 1) }, nil, kvstore.ErrTooManyOps, "at most 128"},
		{"a value that does not encode, mid-way", func() []rec {
			vs := recs(50)
			vs[25].N = -1
			return vs
		}, nil, nil, "r025"},
		{"one key twice", func() []rec {
			vs := recs(10)
			vs[9].Name = vs[3].Name
			return vs
		}, nil, kvstore.ErrConfig, "named twice"},
		{"an empty key", func() []rec { return append(recs(3), rec{}) }, nil, kvstore.ErrConfig, "empty key"},
		// etcd refuses the whole transaction: the lease does not exist.
		{"etcd refuses it", func() []rec { return recs(20) }, []kvstore.WriteOption{kvstore.WithLease(0x7ead)}, nil, "lease not found"},
		{"a false condition", func() []rec { return recs(20) }, []kvstore.WriteOption{kvstore.WithCondition(kvstore.Condition{})}, kvstore.ErrConditionFailed, "never true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, s := newRecStore(t)
			err := s.PutAll(testContext(t), tt.vs(), tt.opts...)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("PutAll() = %v, want an error wrapping %v that says %q", err, tt.want, tt.says)
			}
			storeIsEmpty(t, s)
		})
	}
}

func TestStoreListCorrupt(t *testing.T) {
	t.Parallel()
	c, s := newRecStore(t)
	ctx := testContext(t)
	if err := s.PutAll(ctx, recs(2)); err != nil {
		t.Fatal(err)
	}
	// By hand, as an operator's etcdctl would: not JSON, and a value that
	// names another key.
	if err := c.Put(ctx, s.Prefix()+"bad", []byte("{")); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, s.Prefix()+"other", []byte(`{"name":"r000","n":7}`)); err != nil {
		t.Fatal(err)
	}
	items, _, err := s.List(ctx)
	if err != nil {
		t.Fatalf("List() = %v; a corrupt value must not fail the list", err)
	}
	got := map[string]kvstore.Item[rec]{}
	for _, it := range items {
		got[it.Key] = it
	}
	if len(got) != 4 || got["r000"].Err != nil || got["r001"].Value != (rec{Name: "r001", N: 1}) {
		t.Fatalf("List() = %+v, want r000, r001 valid and two corrupt keys", items)
	}
	if got["bad"].Err == nil || got["bad"].ModRevision == 0 {
		t.Errorf("bad = %+v, want Err set and its revision", got["bad"])
	}
	if e := got["other"].Err; e == nil || !strings.Contains(e.Error(), "the value is rec r000, not other") {
		t.Errorf("other = %+v, want an error saying it holds r000", got["other"])
	}
	it, ok, err := s.Get(ctx, "bad")
	if err != nil || !ok || it.Err == nil {
		t.Errorf("Get(bad) = %+v, %v, %v; want the item with Err set", it, ok, err)
	}
	if _, ok, err := s.Get(ctx, "missing"); ok || err != nil {
		t.Errorf("Get(missing) = %v, %v; want not found", ok, err)
	}
}

func TestStoreDeleteIf(t *testing.T) {
	t.Parallel()
	_, s := newRecStore(t)
	ctx := testContext(t)
	if err := s.Put(ctx, rec{Name: "a", N: 1}); err != nil {
		t.Fatal(err)
	}
	old, _, err := s.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, rec{Name: "a", N: 2}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteIf(ctx, "a", old.ModRevision); !errors.Is(err, kvstore.ErrConflict) {
		t.Fatalf("DeleteIf(stale revision) = %v, want ErrConflict", err)
	}
	cur, ok, err := s.Get(ctx, "a")
	if err != nil || !ok || cur.Value.N != 2 {
		t.Fatalf("after a stale DeleteIf: Get() = %+v, %v, %v; want the value kept", cur, ok, err)
	}
	if err := s.DeleteIf(ctx, "a", cur.ModRevision); err != nil {
		t.Fatalf("DeleteIf(current revision) = %v", err)
	}
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatalf("Delete(missing) = %v, want nil", err)
	}
	storeIsEmpty(t, s)
}

func TestStoreTxn(t *testing.T) {
	t.Parallel()
	_, s := newRecStore(t)
	ctx := testContext(t)
	if err := s.PutAll(ctx, recs(3)); err != nil {
		t.Fatal(err)
	}
	// Replace r000 and r001 by r001 (changed) and r003, in one go.
	if err := s.Txn(ctx, []rec{{Name: "r001", N: 10}, {Name: "r003", N: 3}}, []string{"r000"}); err != nil {
		t.Fatalf("Txn() = %v", err)
	}
	items, _, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range items {
		got = append(got, fmt.Sprintf("%s=%d", it.Key, it.Value.N))
	}
	if strings.Join(got, " ") != "r001=10 r002=2 r003=3" {
		t.Fatalf("after Txn: %v", got)
	}
	if err := s.Txn(ctx, recs(100), []string{"x", "r001"}); err == nil || !strings.Contains(err.Error(), "named twice") {
		t.Fatalf("Txn(put and delete r001) = %v, want a key-named-twice error", err)
	}
	dels := make([]string, 29)
	for i := range dels {
		dels[i] = fmt.Sprintf("d%d", i)
	}
	if err := s.Txn(ctx, recs(100), dels); !errors.Is(err, kvstore.ErrTooManyOps) {
		t.Fatalf("Txn(100 puts, 29 deletes) = %v, want ErrTooManyOps", err)
	}
}

// TestWithCondition: a write whose condition is false writes nothing and
// says so; one whose condition holds writes.
func TestWithCondition(t *testing.T) {
	t.Parallel()
	c, s := newRecStore(t)
	ctx := testContext(t)
	fence := strings.TrimSuffix(s.Prefix(), "recs/") + "fence"
	kv, err := c.Create(ctx, fence, []byte("leader"))
	if err != nil {
		t.Fatal(err)
	}
	held := kvstore.WithCondition(kvstore.KeyCreatedAt(fence, kv.ModRevision))
	if err := s.PutAll(ctx, recs(2), held); err != nil {
		t.Fatalf("PutAll(condition true) = %v", err)
	}
	if _, err := c.Create(ctx, strings.TrimSuffix(s.Prefix(), "recs/")+"new", []byte("x"), held); err != nil {
		t.Fatalf("Create(condition true) = %v", err)
	}
	if _, err := c.Create(ctx, strings.TrimSuffix(s.Prefix(), "recs/")+"new", []byte("y"), held); !errors.Is(err, kvstore.ErrConflict) {
		t.Fatalf("Create(condition true, key exists) = %v, want ErrConflict (not a condition failure)", err)
	}

	// The fence goes (a deposed leader's key) and comes back with a new
	// create revision: the old condition is false for good.
	if err := c.Delete(ctx, fence); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, fence, []byte("another leader")); err != nil {
		t.Fatal(err)
	}
	writes := map[string]func() error{
		"Store.Put":      func() error { return s.Put(ctx, rec{Name: "z", N: 1}, held) },
		"Store.PutAll":   func() error { return s.PutAll(ctx, []rec{{Name: "r000", N: 99}, {Name: "z"}}, held) },
		"Store.Txn":      func() error { return s.Txn(ctx, []rec{{Name: "z"}}, []string{"r000"}, held) },
		"Store.Delete":   func() error { return s.Delete(ctx, "r000", held) },
		"Store.DeleteIf": func() error { return s.DeleteIf(ctx, "r001", 0, held) },
		"Client.Put":     func() error { return c.Put(ctx, s.Prefix()+"z", []byte("{}"), held) },
		"Client.Swap": func() error {
			_, err := c.Swap(ctx, s.Prefix()+"z", 0, []byte("{}"), held)
			return err
		},
		"Client.Create": func() error {
			_, err := c.Create(ctx, s.Prefix()+"z", []byte("{}"), held)
			return err
		},
	}
	for name, write := range writes {
		if err := write(); !errors.Is(err, kvstore.ErrConditionFailed) || !strings.Contains(err.Error(), fence) {
			t.Errorf("%s(condition false) = %v, want ErrConditionFailed naming %s", name, err, fence)
		}
	}
	items, _, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || items[0].Value != (rec{Name: "r000", N: 0}) || items[1].Value != (rec{Name: "r001", N: 1}) {
		t.Fatalf("after writes under a false condition the store holds %+v, want r000=0 and r001=1 untouched", items)
	}
}

// TestPolicyStore: the policy codec keys a policy by namespace and name,
// and List reports a key that holds another policy.
func TestPolicyStore(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	keys, err := kvstore.NewKeys(etcdtest.Cluster(t))
	if err != nil {
		t.Fatal(err)
	}
	s := kvstore.PolicyStore(c, keys)
	ps, err := policy.Parse([]byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutAll(ctx, ps); err != nil {
		t.Fatal(err)
	}
	if got := s.Key(ps[0]); got != keys.Policy("prod", "deny") {
		t.Fatalf("Key() = %s, want %s", got, keys.Policy("prod", "deny"))
	}
	b, _ := ps[0].Encode()
	if err := c.Put(ctx, keys.Policy("prod", "copy"), b); err != nil {
		t.Fatal(err)
	}
	items, _, err := s.ListPrefix(ctx, "prod/")
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || items[0].Key != "prod/copy" || items[0].Err == nil || items[1].Err != nil || items[1].Value.Key() != "prod/deny" {
		t.Fatalf("List() = %+v, want prod/copy refused (it holds prod/deny) and prod/deny", items)
	}
	cfg := s.CacheConfig()
	if cfg.Prefix != keys.PoliciesPrefix() {
		t.Fatalf("CacheConfig().Prefix = %s", cfg.Prefix)
	}
	if _, err := cfg.Decode("prod/copy", b); err == nil {
		t.Fatal("the cache's decoder accepted a policy under another policy's key")
	}
}

// FuzzPolicyCodec feeds arbitrary keys and values, as read back from
// etcd, to the policy codec: what it accepts is named by its key and
// encodes back to a value it accepts again.
func FuzzPolicyCodec(f *testing.F) {
	f.Add("prod/deny", []byte(`{"kind":"NetworkPolicy","namespace":"prod","name":"deny","spec":{"podSelector":{}}}`))
	f.Add("prod/other", []byte(`{"kind":"NetworkPolicy","namespace":"prod","name":"deny","spec":{"podSelector":{}}}`))
	f.Add("a/b", []byte(`{`))
	codec := kvstore.PolicyCodec()
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		p, err := codec.Decode(key, value)
		if err != nil {
			return
		}
		if codec.Key(p) != key {
			t.Fatalf("Decode(%q) accepted policy %s", key, codec.Key(p))
		}
		b, err := codec.Encode(p)
		if err != nil {
			t.Fatalf("Encode of a decoded policy: %v", err)
		}
		if _, err := codec.Decode(key, b); err != nil {
			t.Fatalf("round trip: %v", err)
		}
	})
}
