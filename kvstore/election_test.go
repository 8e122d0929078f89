package kvstore_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// electionKey returns the prefix of an election of the test's own.
func electionKey(t *testing.T) string {
	t.Helper()
	keys, err := kvstore.NewKeys(etcdtest.Cluster(t))
	if err != nil {
		t.Fatal(err)
	}
	return keys.Leader("controlplane")
}

// campaign wins the election or fails the test; the office is resigned
// when the test ends.
func campaign(t *testing.T, c *kvstore.Client, key, who string) *kvstore.Leadership {
	t.Helper()
	l, err := kvstore.Campaign(testContext(t), c, key, kvstore.ElectionConfig{Value: who, TTL: 2 * time.Second})
	if err != nil {
		t.Fatalf("Campaign(%s) = %v", who, err)
	}
	t.Cleanup(func() { _ = l.Resign(context.Background()) })
	return l
}

// candidate campaigns in the background; the result comes on the channel.
func candidate(t *testing.T, c *kvstore.Client, key, who string) <-chan *kvstore.Leadership {
	t.Helper()
	ctx, cancel := context.WithCancel(testContext(t))
	ch := make(chan *kvstore.Leadership, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l, err := kvstore.Campaign(ctx, c, key, kvstore.ElectionConfig{Value: who, TTL: 2 * time.Second})
		if err != nil {
			if ctx.Err() == nil {
				t.Errorf("Campaign(%s) = %v", who, err)
			}
			close(ch)
			return
		}
		ch <- l
		close(ch)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if l, ok := <-ch; ok && l != nil {
			_ = l.Resign(context.Background())
		}
	})
	return ch
}

// wins waits for a background candidate to win.
func wins(t *testing.T, ch <-chan *kvstore.Leadership, who string) *kvstore.Leadership {
	t.Helper()
	select {
	case l := <-ch:
		if l == nil {
			t.Fatalf("%s did not win", who)
		}
		t.Cleanup(func() { _ = l.Resign(context.Background()) })
		return l
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not win within 30s", who)
		return nil
	}
}

// ended waits for a leadership to end and checks why.
func ended(t *testing.T, l *kvstore.Leadership, want error) {
	t.Helper()
	select {
	case <-l.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: Done not closed within 30s", l.Value())
	}
	if err := l.Err(); !errors.Is(err, want) {
		t.Fatalf("%s: Err() = %v, want %v", l.Value(), err, want)
	}
	if !errors.Is(context.Cause(l.Context()), want) {
		t.Fatalf("%s: Context cause = %v, want %v", l.Value(), context.Cause(l.Context()), want)
	}
}

func leaderIs(t *testing.T, c *kvstore.Client, key, want string) {
	t.Helper()
	got, err := kvstore.Leader(testContext(t), c, key)
	if err != nil || got != want {
		t.Fatalf("Leader() = %q, %v; want %q", got, err, want)
	}
}

func notDone(t *testing.T, l *kvstore.Leadership) {
	t.Helper()
	select {
	case <-l.Done():
		t.Fatalf("%s lost the office: %v", l.Value(), l.Err())
	default:
	}
	if l.Err() != nil {
		t.Fatalf("%s: Err() = %v while leading", l.Value(), l.Err())
	}
}

// TestElectionLeaseRevoked: two candidates, one wins; its lease is
// revoked: it learns at once, the other takes over, and a write of the
// deposed leader under its old fence writes nothing.
func TestElectionLeaseRevoked(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	key := electionKey(t)
	if _, err := kvstore.Leader(ctx, c, key); !errors.Is(err, kvstore.ErrNoLeader) {
		t.Fatalf("Leader() before any campaign = %v, want ErrNoLeader", err)
	}
	a := campaign(t, c, key, "a")
	bc := candidate(t, c, key, "b")
	leaderIs(t, c, key, "a")
	notDone(t, a)
	fenceA := a.Condition()
	data := key + "-data/"
	if err := c.Put(ctx, data+"x", []byte("a"), kvstore.WithCondition(fenceA)); err != nil {
		t.Fatalf("leader's fenced write = %v", err)
	}
	select {
	case l := <-bc:
		t.Fatalf("b won while a leads: %v", l)
	default:
	}

	kv, ok, err := c.Get(ctx, a.Key())
	if err != nil || !ok || kv.Lease == 0 {
		t.Fatalf("Get(leader key) = %+v, %v, %v", kv, ok, err)
	}
	if _, err := c.Etcd().Revoke(ctx, clientv3.LeaseID(kv.Lease)); err != nil {
		t.Fatal(err)
	}
	ended(t, a, kvstore.ErrLeadershipLost)
	b := wins(t, bc, "b")
	leaderIs(t, c, key, "b")

	// The deposed leader writes with its old fence: nothing changes.
	if err := c.Put(ctx, data+"x", []byte("stale"), kvstore.WithCondition(fenceA)); !errors.Is(err, kvstore.ErrConditionFailed) {
		t.Fatalf("deposed leader's write = %v, want ErrConditionFailed", err)
	}
	if err := c.Put(ctx, data+"y", []byte("stale"), kvstore.WithCondition(fenceA)); !errors.Is(err, kvstore.ErrConditionFailed) {
		t.Fatalf("deposed leader's write = %v, want ErrConditionFailed", err)
	}
	kvs, _, err := c.List(ctx, data)
	if err != nil || len(kvs) != 1 || string(kvs[0].Value) != "a" {
		t.Fatalf("after the deposed leader's writes: %+v, %v; want only x=a", kvs, err)
	}
	if err := c.Put(ctx, data+"x", []byte("b"), kvstore.WithCondition(b.Condition())); err != nil {
		t.Fatalf("new leader's fenced write = %v", err)
	}
	if err := a.Resign(ctx); err != nil {
		t.Fatalf("Resign after a loss = %v", err)
	}
	notDone(t, b)
}

// TestElectionResign: a resigning leader's Context ends with ErrResigned
// and the waiting candidate takes over.
func TestElectionResign(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	key := electionKey(t)
	a := campaign(t, c, key, "a")
	bc := candidate(t, c, key, "b")
	// b is waiting once its key exists.
	eventually(t, 10*time.Second, "b's candidate key", func() error {
		kvs, _, err := c.List(ctx, key+"/")
		if err == nil && len(kvs) != 2 {
			err = errors.New("b has not put its key yet")
		}
		return err
	})
	if err := a.Resign(ctx); err != nil {
		t.Fatalf("Resign() = %v", err)
	}
	ended(t, a, kvstore.ErrResigned)
	if err := a.Resign(ctx); err != nil {
		t.Fatalf("second Resign() = %v", err)
	}
	b := wins(t, bc, "b")
	leaderIs(t, c, key, "b")
	if err := c.Put(ctx, key+"-data", nil, kvstore.WithCondition(a.Condition())); !errors.Is(err, kvstore.ErrConditionFailed) {
		t.Fatalf("write under the resigned fence = %v, want ErrConditionFailed", err)
	}
	notDone(t, b)
}

// TestElectionKeyDeleted: an operator deletes the leader key: the leader
// learns it has lost the office.
func TestElectionKeyDeleted(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	key := electionKey(t)
	a := campaign(t, c, key, "a")
	if err := c.Delete(ctx, a.Key()); err != nil {
		t.Fatal(err)
	}
	ended(t, a, kvstore.ErrLeadershipLost)
	// Its lease is released with it: a new campaign wins at once.
	b := campaign(t, c, key, "b")
	leaderIs(t, c, key, "b")
	notDone(t, b)
}

// TestElectionCampaignCancelled: a candidate that gives up leaves no key.
func TestElectionCampaignCancelled(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	key := electionKey(t)
	campaign(t, c, key, "a")
	ctx, cancel := context.WithCancel(testContext(t))
	errc := make(chan error, 1)
	go func() {
		_, err := kvstore.Campaign(ctx, c, key, kvstore.ElectionConfig{Value: "b", TTL: 2 * time.Second})
		errc <- err
	}()
	eventually(t, 10*time.Second, "b's candidate key", func() error {
		kvs, _, err := c.List(testContext(t), key+"/")
		if err == nil && len(kvs) != 2 {
			err = errors.New("b has not put its key yet")
		}
		return err
	})
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Campaign() after cancel = %v, want context.Canceled", err)
	}
	kvs, _, err := c.List(testContext(t), key+"/")
	if err != nil || len(kvs) != 1 {
		t.Fatalf("after b gave up: %d candidate keys, %v; want a's only", len(kvs), err)
	}
}

func TestElectionConfig(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	for name, cfg := range map[string]kvstore.ElectionConfig{
		"no value":  {},
		"short TTL": {Value: "a", TTL: time.Second},
	} {
		if _, err := kvstore.Campaign(ctx, c, electionKey(t), cfg); !errors.Is(err, kvstore.ErrConfig) {
			t.Errorf("%s: Campaign() = %v, want ErrConfig", name, err)
		}
	}
}

// TestElectionEtcdUnreachable stops etcd under a leader: once the TTL has
// passed without a keepalive, the leader learns it may have lost the
// office, without etcd's help.
func TestElectionEtcdUnreachable(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	key := electionKey(t)
	a := campaign(t, c, key, "a")
	srv.Stop()
	ended(t, a, kvstore.ErrLeadershipLost)
	srv.Resume()
	// Back: a new campaign wins (a's lease expired or is revoked by then).
	b := campaign(t, c, key, "b")
	leaderIs(t, c, key, "b")
	notDone(t, b)
}

// TestElectionClientClosed: a leader whose client is closed (the process
// shutting down its etcd connection, or a test killing a replica) loses the
// office at once, Resign returns, and another candidate takes over when
// the lease expires.
func TestElectionClientClosed(t *testing.T) {
	t.Parallel()
	ca, cb := newClient(t), newClient(t)
	key := electionKey(t)
	a := campaign(t, ca, key, "a")
	bc := candidate(t, cb, key, "b")
	leaderIs(t, cb, key, "a")
	closed := time.Now()
	if err := ca.Close(); err != nil {
		t.Fatal(err)
	}
	ended(t, a, kvstore.ErrLeadershipLost)
	t.Logf("office ended %v after the client closed: %v", time.Since(closed), a.Err())
	if !strings.Contains(a.Err().Error(), "client") {
		t.Errorf("Err() = %v, want it to say the client was closed", a.Err())
	}
	rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Resign(rctx) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Resign after the client closed did not return")
	}
	b := wins(t, bc, "b")
	notDone(t, b)
}
