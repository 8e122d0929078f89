package kvstore_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/kvstore"
)

// ownedAs checks that key holds value on lease.
func ownedAs(ctx context.Context, c *kvstore.Client, key, value string, lease kvstore.LeaseID) error {
	kv, ok, err := c.Get(ctx, key)
	switch {
	case err != nil:
		return err
	case !ok:
		return fmt.Errorf("%s is missing", key)
	case string(kv.Value) != value:
		return fmt.Errorf("%s = %q, want %q", key, kv.Value, value)
	case kv.Lease != int64(lease):
		return fmt.Errorf("%s is on lease %x, want %x", key, kv.Lease, int64(lease))
	}
	return nil
}

// TestSessionRepairsOwnedKeys changes a session's owned keys behind its
// back: a garbage value, a delete, and a put of the same value without
// the lease. The session writes each back on its lease within seconds; a
// key it disowned and deleted itself stays deleted.
func TestSessionRepairsOwnedKeys(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	nodes, eps := prefix+"nodes/", prefix+"endpoints/"
	var mu sync.Mutex
	var repairs []kvstore.Repair
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{
		TTL: 10 * time.Second, Guard: []string{nodes + "n1", eps},
		OnRepair: func(r kvstore.Repair) {
			mu.Lock()
			defer mu.Unlock()
			repairs = append(repairs, r)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	node, ep, ep2, gone := nodes+"n1", eps+"10.0.0.1", eps+"10.0.0.2", eps+"10.0.0.3"
	want := map[string]string{node: `{"name":"n1"}`, ep: `{"ip":"10.0.0.1"}`, ep2: `{"ip":"10.0.0.2"}`, gone: `{"ip":"10.0.0.3"}`}
	for k, v := range want {
		if err := s.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	lease := s.State().Lease
	// The agent deletes one of its own keys: it must stay deleted.
	if err := s.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	delete(want, gone)

	tests := []struct {
		name   string
		key    string
		tamper func() error
	}{
		{"garbage over the node record", node, func() error { return c.Put(ctx, node, []byte(`{"kind":"NetworkPolicy","spec":5}`)) }},
		{"endpoint deleted", ep, func() error { return c.Delete(ctx, ep) }},
		{"same value without the lease", ep2, func() error { return c.Put(ctx, ep2, []byte(want[ep2])) }},
	}
	for _, tt := range tests {
		if err := tt.tamper(); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		eventually(t, 10*time.Second, tt.name+": repaired", func() error {
			return ownedAs(ctx, c, tt.key, want[tt.key], lease)
		})
	}
	if _, ok, err := c.Get(ctx, gone); err != nil || ok {
		t.Errorf("the key the session deleted itself: found %v (err %v), want it to stay deleted", ok, err)
	}
	if n := waitRepairs(t, s, 3); n != 3 {
		t.Errorf("Repairs() = %d, want 3", n)
	}
	// OnRepair runs after the count.
	eventually(t, 10*time.Second, "OnRepair called 3 times", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(repairs) < 3 {
			return fmt.Errorf("OnRepair called %d times", len(repairs))
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	wantReasons := map[string]kvstore.RepairReason{node: kvstore.RepairChanged, ep: kvstore.RepairDeleted, ep2: kvstore.RepairLease}
	if len(repairs) != 3 {
		t.Fatalf("OnRepair saw %+v, want 3 repairs", repairs)
	}
	for _, r := range repairs {
		if wantReasons[r.Key] != r.Reason {
			t.Errorf("repair of %s: reason %s, want %s", r.Key, r.Reason, wantReasons[r.Key])
		}
	}
}

// TestSessionOwnWritesAreNotRepaired writes a guarded key many times in a
// row: the guard sees each new value before the session records it as
// owned, and must never bring an older value back.
func TestSessionOwnWritesAreNotRepaired(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second, Guard: []string{prefix}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	key := prefix + "k"
	for i := range 200 {
		if err := s.Put(ctx, key, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	// A sentinel key changed behind the session's back: once it is
	// repaired, the guard has judged every event before it.
	sentinel := prefix + "sentinel"
	if err := s.Put(ctx, sentinel, "mine"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, sentinel); err != nil {
		t.Fatal(err)
	}
	lease := s.State().Lease
	eventually(t, 10*time.Second, "sentinel repaired", func() error { return ownedAs(ctx, c, sentinel, "mine", lease) })
	if err := ownedAs(ctx, c, key, "199", lease); err != nil {
		t.Error(err)
	}
	if n := waitRepairs(t, s, 1); n != 1 {
		t.Errorf("Repairs() = %d, want 1 (the sentinel): the session repaired its own writes", n)
	}
}

// TestSessionRepairBackoff makes a second writer fight the session over a
// key: the session keeps repairing it, but each repair waits twice as
// long as the one before (up to the maximum), so the fight never becomes
// a tight loop.
func TestSessionRepairBackoff(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	const backoff, maxBackoff = 100 * time.Millisecond, time.Second
	var mu sync.Mutex
	var nexts []time.Duration
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{
		TTL: 10 * time.Second, Guard: []string{prefix}, RepairBackoff: backoff, RepairBackoffMax: maxBackoff,
		OnRepair: func(r kvstore.Repair) {
			mu.Lock()
			defer mu.Unlock()
			nexts = append(nexts, r.Next)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	key := prefix + "contested"
	if err := s.Put(ctx, key, "session"); err != nil {
		t.Fatal(err)
	}
	// The other writer puts its value back whenever it sees the
	// session's, for a bounded time.
	start := time.Now()
	const fight = 3 * time.Second
	for time.Since(start) < fight {
		kv, ok, err := c.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if !ok || string(kv.Value) == "session" {
			if err := c.Put(ctx, key, []byte("other")); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(start)
	n := s.Repairs()
	// Repairs at 0, b, 3b, 7b, ... (capped at max): at most this many fit
	// in the time the fight took. Under load there may be fewer, never more.
	bound := int64(1)
	for at, d := time.Duration(0), backoff; at+d <= took; at, d = at+d, min(2*d, maxBackoff) {
		bound++
	}
	if n < 2 || n > bound {
		t.Errorf("%d repairs in a %s fight, want 2 to %d", n, took.Round(time.Millisecond), bound)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(nexts); i++ {
		if want := min(2*nexts[i-1], maxBackoff); nexts[i] != want {
			t.Errorf("repair %d: next backoff %s, want %s (doubling up to %s)", i, nexts[i], want, maxBackoff)
		}
	}
}

// TestSessionLeaseLossIsNotARepair revokes a guarding session's lease:
// etcd deletes every key on it, and the session's re-assert, not its
// guard, writes them back; nothing counts as a repair.
func TestSessionLeaseLossIsNotARepair(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second, Guard: []string{prefix}, RetryInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 300 // more than one re-assert transaction
	putOwned(t, ctx, s, prefix, n)
	old := s.State().Lease
	if _, err := c.Etcd().Revoke(ctx, clientv3.LeaseID(old)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "keys re-asserted on a new lease", func() error {
		lease := s.State().Lease
		if lease == old {
			return fmt.Errorf("still on the revoked lease")
		}
		return ownedOnLease(ctx, c, prefix, n, lease)
	})
	// A key deleted now is repaired: once it is, the guard has judged
	// every event of the lease loss.
	key := fmt.Sprintf("%sk%03d", prefix, 0)
	if err := c.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "sentinel repaired", func() error { return ownedAs(ctx, c, key, "0", s.State().Lease) })
	if r := waitRepairs(t, s, 1); r != 1 {
		t.Errorf("Repairs() = %d after a lease loss and one delete, want 1", r)
	}
}

// waitRepairs waits until the session has counted at least want repairs
// and returns the count. The guard counts a repair after its write
// commits, so a test that sees the key back may read the count before it
// is incremented.
func waitRepairs(t *testing.T, s *kvstore.Session, want int64) int64 {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%d repairs counted", want), func() error {
		if n := s.Repairs(); n < want {
			return fmt.Errorf("%d repairs counted", n)
		}
		return nil
	})
	return s.Repairs()
}
