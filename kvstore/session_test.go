package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// stateLog records the states a session reports through OnState.
type stateLog struct {
	mu     sync.Mutex
	states []kvstore.SessionState
}

func (l *stateLog) record(s kvstore.SessionState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.states = append(l.states, s)
}

func (l *stateLog) sawLoss() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.states {
		if s.Lease == 0 && s.Err != nil {
			return true
		}
	}
	return false
}

// putOwned writes n owned keys under prefix through the session.
func putOwned(t *testing.T, ctx context.Context, s *kvstore.Session, prefix string, n int) {
	t.Helper()
	for i := range n {
		if err := s.Put(ctx, fmt.Sprintf("%sk%03d", prefix, i), fmt.Sprint(i)); err != nil {
			t.Fatalf("Session.Put() #%d: %v", i, err)
		}
	}
}

// ownedOnLease checks that exactly n keys exist under prefix, with their
// values, all on lease, and that the lease is alive.
func ownedOnLease(ctx context.Context, c *kvstore.Client, prefix string, n int, lease kvstore.LeaseID) error {
	if lease == 0 {
		return errors.New("the session holds no lease")
	}
	kvs, _, err := c.List(ctx, prefix)
	if err != nil {
		return err
	}
	if len(kvs) != n {
		return fmt.Errorf("%d keys exist, want %d", len(kvs), n)
	}
	for i, kv := range kvs {
		if kv.Lease != int64(lease) {
			return fmt.Errorf("%s is on lease %x, want %x", kv.Key, kv.Lease, int64(lease))
		}
		if string(kv.Value) != fmt.Sprint(i) {
			return fmt.Errorf("%s = %q, want %q", kv.Key, kv.Value, fmt.Sprint(i))
		}
	}
	ttl, err := c.Etcd().TimeToLive(ctx, clientv3.LeaseID(lease))
	if err != nil {
		return err
	}
	if ttl.TTL <= 0 {
		return fmt.Errorf("lease %x is not alive (TTL %d)", int64(lease), ttl.TTL)
	}
	return nil
}

// leaseGone reports whether etcd has forgotten lease.
func leaseGone(ctx context.Context, c *kvstore.Client, lease kvstore.LeaseID) error {
	ttl, err := c.Etcd().TimeToLive(ctx, clientv3.LeaseID(lease))
	if err != nil {
		return err
	}
	if ttl.TTL != -1 {
		return fmt.Errorf("lease %x still has TTL %ds", int64(lease), ttl.TTL)
	}
	return nil
}

func TestSessionConfig(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	for _, ttl := range []time.Duration{time.Second, 1999 * time.Millisecond, -time.Second} {
		s, err := kvstore.NewSession(testContext(t), c, kvstore.SessionConfig{TTL: ttl})
		if !errors.Is(err, kvstore.ErrConfig) {
			if err == nil {
				_ = s.Close()
			}
			t.Errorf("NewSession(TTL %s) = %v, want ErrConfig", ttl, err)
		}
	}
	s, err := kvstore.NewSession(testContext(t), c, kvstore.SessionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ttl, err := c.Etcd().TimeToLive(testContext(t), clientv3.LeaseID(s.State().Lease))
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL != int64(kvstore.DefaultSessionTTL/time.Second) {
		t.Errorf("zero TTL granted %ds, want the default %s", ttl.GrantedTTL, kvstore.DefaultSessionTTL)
	}
}

// TestSessionLeaseRevoked revokes the session's lease behind its back: the
// session must grant a new one and write every owned key on it again. More
// keys than one re-assert transaction holds.
func TestSessionLeaseRevoked(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	const n = 300
	var log stateLog
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second, RetryInterval: 20 * time.Millisecond, OnState: log.record})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	putOwned(t, ctx, s, prefix, n)
	first := s.State()
	if first.Generation != 1 || first.Lease == 0 {
		t.Fatalf("State() = %+v, want generation 1 with a lease", first)
	}
	if s.Owned() != n {
		t.Fatalf("Owned() = %d, want %d", s.Owned(), n)
	}
	if err := ownedOnLease(ctx, c, prefix, n, first.Lease); err != nil {
		t.Fatal(err)
	}

	if _, err := c.Etcd().Revoke(ctx, clientv3.LeaseID(first.Lease)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "owned keys on a new lease", func() error {
		st := s.State()
		if st.Generation != 2 || st.Lease == first.Lease {
			return fmt.Errorf("state %+v, want generation 2 on a new lease", st)
		}
		return ownedOnLease(ctx, c, prefix, n, st.Lease)
	})
	if !log.sawLoss() {
		t.Error("OnState never reported the loss of the lease")
	}
	lease, err := s.Lease(ctx)
	if err != nil || lease != s.State().Lease {
		t.Fatalf("Lease() = %x, %v; want the state's lease %x", lease, err, s.State().Lease)
	}

	// Delete disowns: the key is gone and is not written back.
	if err := s.Delete(ctx, fmt.Sprintf("%sk%03d", prefix, n-1)); err != nil {
		t.Fatal(err)
	}
	if s.Owned() != n-1 {
		t.Fatalf("Owned() after Delete = %d, want %d", s.Owned(), n-1)
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if kvs, _, err := c.List(ctx, prefix); err != nil || len(kvs) != 0 {
		t.Fatalf("after Close %d owned keys remain (%v), want none", len(kvs), err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close() = %v, want nil", err)
	}
	if _, err := s.Lease(ctx); !errors.Is(err, kvstore.ErrSessionClosed) {
		t.Fatalf("Lease() after Close = %v, want ErrSessionClosed", err)
	}
	if err := s.Put(ctx, prefix+"late", "v"); !errors.Is(err, kvstore.ErrSessionClosed) {
		t.Fatalf("Put() after Close = %v, want ErrSessionClosed", err)
	}
}

// TestSessionLeaseLost tells the session its lease is lost although etcd
// still has it: the session must move the keys to a new lease and stop
// keeping the old one alive, so that it expires.
func TestSessionLeaseLost(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 2 * time.Second, RetryInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	putOwned(t, ctx, s, prefix, 3)
	old := s.State().Lease
	s.LeaseLost(old, errors.New("test: pretend the lease is gone"))
	eventually(t, 10*time.Second, "owned keys on a new lease", func() error {
		if st := s.State(); st.Lease == old || st.Generation != 2 {
			return fmt.Errorf("state %+v, want generation 2 on a new lease", st)
		}
		return ownedOnLease(ctx, c, prefix, 3, s.State().Lease)
	})
	// A stale report about the old lease changes nothing.
	cur := s.State()
	s.LeaseLost(old, errors.New("test: stale report"))
	if st := s.State(); st.Lease != cur.Lease || st.Generation != cur.Generation {
		t.Fatalf("a report about an old lease changed the state from %+v to %+v", cur, st)
	}
	eventually(t, 15*time.Second, "the abandoned lease expires", func() error {
		return leaseGone(ctx, c, old)
	})
	if err := ownedOnLease(ctx, c, prefix, 3, s.State().Lease); err != nil {
		t.Fatalf("after the old lease expired: %v", err)
	}
}

// TestSessionOwnStale records a key written on a lease that is no longer
// the session's: the session writes it again on its current lease.
func TestSessionOwnStale(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	other, err := c.Etcd().Grant(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	key := prefix + "k000"
	if err := c.Put(ctx, key, []byte("0"), kvstore.WithLease(kvstore.LeaseID(other.ID))); err != nil {
		t.Fatal(err)
	}
	s.Own(key, "0", kvstore.LeaseID(other.ID))
	eventually(t, 10*time.Second, "the key moves to the session's lease", func() error {
		return ownedOnLease(ctx, c, prefix, 1, s.State().Lease)
	})
	if _, err := c.Etcd().Revoke(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	if err := ownedOnLease(ctx, c, prefix, 1, s.State().Lease); err != nil {
		t.Fatalf("revoking the old lease took the key: %v", err)
	}
}

// TestSessionEtcdRestart restarts etcd under a live session: leases survive
// a restart, so the session keeps or regains its keys.
func TestSessionEtcdRestart(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 5 * time.Second, RetryInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	putOwned(t, ctx, s, prefix, 5)

	srv.Restart()

	eventually(t, 20*time.Second, "owned keys after the restart", func() error {
		return ownedOnLease(ctx, c, prefix, 5, s.State().Lease)
	})
	// The session still writes.
	if err := s.Put(ctx, prefix+"k005", "5"); err != nil {
		t.Fatalf("Put() after the restart: %v", err)
	}
	if err := ownedOnLease(ctx, c, prefix, 6, s.State().Lease); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if kvs, _, err := c.List(ctx, prefix); err != nil || len(kvs) != 0 {
		t.Fatalf("after Close %d owned keys remain (%v), want none", len(kvs), err)
	}
}

// TestSessionEtcdDownLongerThanTTL stops etcd for longer than the session's
// TTL. The client gives the lease up when no keepalive answer came within
// the TTL; etcd, though, does not expire leases while it is down and
// extends them when it comes back. Whatever happens in between, the owned
// keys must end up on a live lease of the session, and stay when the old
// lease expires.
func TestSessionEtcdDownLongerThanTTL(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cfg := srv.Config()
	cfg.RequestTimeout = time.Second // fail grants fast while etcd is down
	ctx := testContext(t)
	c, err := kvstore.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	prefix := testPrefix(t)
	var log stateLog
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 2 * time.Second, RetryInterval: 50 * time.Millisecond, OnState: log.record})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	putOwned(t, ctx, s, prefix, 5)
	old := s.State().Lease

	srv.Stop()
	eventually(t, 15*time.Second, "the session notices the lost lease", func() error {
		if st := s.State(); st.Lease != 0 {
			return fmt.Errorf("state %+v, want no lease", st)
		}
		return nil
	})
	if _, err := s.Lease(ctxTimeout(t, ctx, 100*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lease() while etcd is down = %v, want a deadline error", err)
	}
	srv.Resume()

	eventually(t, 30*time.Second, "owned keys on a live lease after etcd came back", func() error {
		st := s.State()
		if st.Generation < 2 {
			return fmt.Errorf("state %+v, want a new generation", st)
		}
		return ownedOnLease(ctx, c, prefix, 5, st.Lease)
	})
	if !log.sawLoss() {
		t.Error("OnState never reported the loss of the lease")
	}
	if ttl, err := c.Etcd().TimeToLive(ctx, clientv3.LeaseID(old)); err == nil {
		t.Logf("etcd is back: session at generation %d; the old lease %x has TTL %ds left",
			s.State().Generation, int64(old), ttl.TTL)
	}
	eventually(t, 15*time.Second, "the old lease expires", func() error {
		return leaseGone(ctx, c, old)
	})
	if err := ownedOnLease(ctx, c, prefix, 5, s.State().Lease); err != nil {
		t.Fatalf("after the old lease expired: %v", err)
	}
}

func ctxTimeout(t *testing.T, ctx context.Context, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, d)
	t.Cleanup(cancel)
	return ctx
}

// TestSessionDetachResume checks an agent restart: Detach keeps the lease
// and its keys, a new session that resumes the lease adopts it (the keys
// never disappear), and resuming a lease etcd forgot grants a new one.
func TestSessionDetachResume(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := testContext(t)
	prefix := testPrefix(t)
	s1, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	putOwned(t, ctx, s1, prefix, 3)
	lease := s1.Detach()
	if lease == 0 {
		t.Fatal("Detach() returned no lease")
	}
	if err := s1.Close(); err != nil {
		t.Fatalf("Close after Detach: %v", err)
	}
	if err := ownedOnLease(ctx, c, prefix, 3, lease); err != nil {
		t.Fatalf("after Detach: %v", err)
	}
	s2, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second, Resume: lease})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := s2.State().Lease; got != lease {
		t.Fatalf("resumed session holds lease %x, want %x", int64(got), int64(lease))
	}
	putOwned(t, ctx, s2, prefix, 3)
	if err := ownedOnLease(ctx, c, prefix, 3, lease); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	if _, err := c.Etcd().Revoke(ctx, clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	s3, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second, Resume: lease})
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	if got := s3.State().Lease; got == lease || got == 0 {
		t.Fatalf("session resuming a revoked lease holds %x, want a new lease", int64(got))
	}
}
