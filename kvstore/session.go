package kvstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// LeaseID is an etcd lease.
type LeaseID int64

// SessionConfig configures a Session.
type SessionConfig struct {
	// TTL is the lease TTL. Keys on the lease outlive a dead agent by up to
	// TTL. etcd is not the failure detector (gossip is), so it can be long.
	// Zero means DefaultSessionTTL.
	TTL time.Duration

	// RetryInterval is the first pause after a failed grant or re-assert;
	// it doubles up to 10s. Zero means 200ms.
	RetryInterval time.Duration

	// OnState, if set, is called (from the session's goroutine, so it must
	// not block) whenever the session gains or loses its lease.
	OnState func(SessionState)

	// Resume, if set, is a lease an earlier run of the same agent held
	// (and left with Detach). If etcd still has it, the session adopts it
	// instead of granting a new one, so the keys on it never go away
	// across an agent restart. If it is gone, a new lease is granted.
	Resume LeaseID

	// Guard lists prefixes under which the session repairs the keys it
	// owns: it watches them, and when an owned key is deleted, holds a
	// value the session did not write, or holds the session's value on
	// another lease or none (a hand-made put), it writes its own value
	// back on its lease, as it does after a lease loss. Keys it disowned
	// (Delete, Disown) are never written back. Each guarded prefix costs
	// one watch: every change under it reaches this client. Empty: owned
	// keys are written again only after a lease loss.
	Guard []string

	// RepairBackoff is the least time between two repairs of one key. It
	// doubles with each further repair, up to RepairBackoffMax, so that
	// two writers of one key (a misconfigured second agent with the same
	// name, an operator's script) never fight in a tight loop. Zero means
	// 1s.
	RepairBackoff time.Duration
	// RepairBackoffMax caps RepairBackoff; a key left alone for
	// RepairBackoffMax after its backoff ran out starts again at
	// RepairBackoff. Zero means 1m.
	RepairBackoffMax time.Duration

	// OnRepair, if set, is called (from the session's guard goroutine, so
	// it must not block) after each repair.
	OnRepair func(Repair)
}

// DefaultSessionTTL is the lease TTL when SessionConfig.TTL is zero.
const DefaultSessionTTL = 60 * time.Second

// SessionState says whether the session holds a live lease.
type SessionState struct {
	Lease LeaseID // 0 while there is none
	// Generation counts leases granted so far; it grows each time the
	// session is re-created after a loss.
	Generation int
	// Err is the last error while Lease is 0.
	Err error
}

// ErrSessionClosed is returned by a closed session.
var ErrSessionClosed = errors.New("kvstore: session closed")

// Session is an agent's lease with keepalive, and the set of keys the agent
// owns on it. When the lease is lost (etcd restarted with a wiped lease, a
// network cut longer than the TTL, an operator revoking it), the session
// grants a new lease and writes every owned key again on it, without the
// caller noticing, beyond the short window in which the keys are missing.
// Under the prefixes of SessionConfig.Guard it also repairs owned keys
// that someone else changed or deleted (see Repairs).
//
// One goroutine, started by NewSession and stopped by Close, owns the
// lease: it grants, keeps alive and re-asserts. With Guard, one more
// goroutine per guarded prefix watches it and one repairs (see guard);
// Close and Detach stop them too. mu guards the rest.
type Session struct {
	client *Client
	cfg    SessionConfig

	mu      sync.Mutex
	state   SessionState
	ready   chan struct{} // closed while state.Lease != 0; replaced on loss
	owned   map[string]string
	pending map[string]struct{} // owned keys written on an older lease
	writing map[string]int      // owned keys being written (Put, Writing): not repaired meanwhile
	// reasserting counts re-asserts in flight: the keys they write are
	// not repaired meanwhile (after a lease loss, etcd's deletes of the
	// old lease's keys are not someone else's doing).
	reasserting int
	kick        chan struct{}

	guard   *guard
	repairs atomic.Int64

	cancel    context.CancelFunc
	done      chan struct{}
	guardDone chan struct{}
	closeOnce sync.Once
}

// NewSession starts a session and waits for its first lease, up to the
// client's dial timeout; after that the lease is kept in the background.
func NewSession(ctx context.Context, c *Client, cfg SessionConfig) (*Session, error) {
	if cfg.TTL == 0 {
		cfg.TTL = DefaultSessionTTL
	}
	if cfg.TTL < 2*time.Second {
		return nil, fmt.Errorf("%w: session TTL %s is under the 2s etcd accepts reliably", ErrConfig, cfg.TTL)
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = 200 * time.Millisecond
	}
	if cfg.RepairBackoff == 0 {
		cfg.RepairBackoff = time.Second
	}
	if cfg.RepairBackoffMax == 0 {
		cfg.RepairBackoffMax = time.Minute
	}
	if cfg.RepairBackoff < 0 || cfg.RepairBackoffMax < cfg.RepairBackoff {
		return nil, fmt.Errorf("%w: session repair backoff %s must be positive and at most its maximum %s", ErrConfig, cfg.RepairBackoff, cfg.RepairBackoffMax)
	}
	for _, p := range cfg.Guard {
		if p == "" {
			return nil, fmt.Errorf("%w: a guarded prefix must not be empty (it would watch the whole keyspace)", ErrConfig)
		}
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Session{
		client:    c,
		cfg:       cfg,
		ready:     make(chan struct{}),
		owned:     make(map[string]string),
		pending:   make(map[string]struct{}),
		writing:   make(map[string]int),
		kick:      make(chan struct{}, 1),
		cancel:    cancel,
		done:      make(chan struct{}),
		guardDone: make(chan struct{}),
	}
	go s.run(rctx)
	if len(cfg.Guard) > 0 {
		s.guard = newGuard(s)
		go func() {
			defer close(s.guardDone)
			s.guard.run(rctx)
		}()
	} else {
		close(s.guardDone)
	}
	wctx, wcancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer wcancel()
	if _, err := s.Lease(wctx); err != nil {
		_ = s.Close()
		s.mu.Lock()
		last := s.state.Err
		s.mu.Unlock()
		if last != nil {
			return nil, fmt.Errorf("session: %w", last)
		}
		return nil, fmt.Errorf("session: %w", err)
	}
	return s, nil
}

// Lease returns the current lease, waiting until there is one.
func (s *Session) Lease(ctx context.Context) (LeaseID, error) {
	for {
		s.mu.Lock()
		id, ready := s.state.Lease, s.ready
		s.mu.Unlock()
		if id != 0 {
			return id, nil
		}
		select {
		case <-ready:
		case <-s.done:
			return 0, ErrSessionClosed
		case <-ctx.Done():
			return 0, fmt.Errorf("wait for etcd lease: %w", ctx.Err())
		}
	}
}

// State returns the session's state.
func (s *Session) State() SessionState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// Own records that key, with value, is owned by this session and was
// written on lease. If lease is no longer current (it was lost between the
// write and this call), the key is written again on the current lease.
// A transaction that writes owned keys uses Txn, which calls it.
func (s *Session) Own(key, value string, lease LeaseID) {
	s.mu.Lock()
	s.owned[key] = value
	stale := lease != s.state.Lease
	if stale {
		s.pending[key] = struct{}{}
	}
	s.mu.Unlock()
	if stale {
		s.poke()
	}
}

// Disown forgets key: it is no longer written again after a lease loss.
// The caller deletes it.
func (s *Session) Disown(key string) {
	s.mu.Lock()
	delete(s.owned, key)
	delete(s.pending, key)
	s.mu.Unlock()
}

// Put writes an owned key on the session's lease.
func (s *Session) Put(ctx context.Context, key, value string) error {
	defer s.Writing(key)()
	for {
		lease, err := s.Lease(ctx)
		if err != nil {
			return err
		}
		err = s.client.Put(ctx, key, []byte(value), WithLease(lease))
		if isLeaseNotFound(err) {
			s.lost(lease, err)
			continue
		}
		if err != nil {
			return err
		}
		s.Own(key, value, lease)
		return nil
	}
}

// Writing marks key as being written by the caller, in a transaction of
// its own that ends with Own: until done is called, the guard does not
// repair the key, so the event of the new value, seen before Own records
// it, never brings the old value back. Put does this itself.
func (s *Session) Writing(key string) (done func()) {
	s.mu.Lock()
	s.writing[key]++
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.writing[key]--; s.writing[key] <= 0 {
				delete(s.writing, key)
			}
			s.mu.Unlock()
		})
	}
}

// Repairs returns how many times the session wrote back an owned key that
// was changed or deleted behind its back (see SessionConfig.Guard).
func (s *Session) Repairs() int64 { return s.repairs.Load() }

// Delete disowns and deletes an owned key.
func (s *Session) Delete(ctx context.Context, key string) error {
	s.Disown(key)
	return s.client.Delete(ctx, key)
}

// LeaseLost tells the session that a write on lease failed because the
// lease is gone, so it need not wait for the keepalive to notice. Put and
// Txn do it themselves.
func (s *Session) LeaseLost(lease LeaseID, err error) { s.lost(lease, err) }

// Owned returns how many keys the session owns.
func (s *Session) Owned() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.owned)
}

// Close revokes the lease, which deletes every owned key, and stops the
// session. It is idempotent.
func (s *Session) Close() error { return s.close(true) }

// Detach stops the session without revoking its lease: the keys on it
// stay until the lease's TTL runs out, or until a new session that
// resumes the lease (SessionConfig.Resume) keeps them. An agent restart
// uses it so that its node record and endpoints never vanish from etcd.
// It returns the lease (0 if there was none). Close after Detach does
// nothing.
func (s *Session) Detach() LeaseID {
	s.mu.Lock()
	lease := s.state.Lease
	s.mu.Unlock()
	_ = s.close(false)
	return lease
}

func (s *Session) close(revoke bool) error {
	var err error
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
		<-s.guardDone
		s.mu.Lock()
		lease := s.state.Lease
		s.state.Lease = 0
		s.mu.Unlock()
		if lease != 0 && revoke {
			ctx, cancel := context.WithTimeout(context.Background(), s.client.cfg.RequestTimeout)
			defer cancel()
			if _, rerr := s.client.etcd.Revoke(ctx, clientv3.LeaseID(lease)); rerr != nil && !isLeaseNotFound(rerr) {
				err = fmt.Errorf("revoke lease %x: %w", lease, wrapErr(rerr))
			}
		}
	})
	return err
}

func (s *Session) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// lost marks lease as gone, if it is still the current one.
func (s *Session) lost(lease LeaseID, err error) {
	s.mu.Lock()
	if s.state.Lease == lease && lease != 0 {
		s.state.Lease = 0
		s.state.Err = err
		s.ready = make(chan struct{})
		s.mu.Unlock()
		s.notify()
		s.poke()
		return
	}
	s.mu.Unlock()
}

func (s *Session) notify() {
	if s.cfg.OnState != nil {
		s.cfg.OnState(s.State())
	}
}

// run owns the lease: grant, re-assert the owned keys, keep alive, repeat.
func (s *Session) run(ctx context.Context) {
	defer close(s.done)
	backoff := s.cfg.RetryInterval
	pause := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
		return true
	}
	resume := s.cfg.Resume
	for ctx.Err() == nil {
		lease, ka, stopKeepAlive, err := s.grant(ctx, resume)
		resume = 0
		if err != nil {
			s.setErr(err)
			if !pause() {
				return
			}
			continue
		}
		// Publish the lease first, then snapshot the owned keys: a key owned
		// after the snapshot was written on this lease or is marked pending.
		s.mu.Lock()
		s.state.Lease = lease
		s.state.Generation++
		s.state.Err = nil
		close(s.ready)
		keys := make(map[string]string, len(s.owned))
		for k, v := range s.owned {
			keys[k] = v
		}
		clear(s.pending)
		s.reasserting++
		s.mu.Unlock()
		s.notify()

		err = s.reassert(ctx, lease, keys)
		s.reasserted()
		if err != nil {
			stopKeepAlive()
			s.lost(lease, err)
			if !pause() {
				return
			}
			continue
		}
		backoff = s.cfg.RetryInterval
		s.keepAlive(ctx, lease, ka)
		// The lease is given up: stop renewing it, or a lease reported lost
		// that etcd still has (LeaseLost, a failed re-assert) would be kept
		// alive by this client for as long as the session lives.
		stopKeepAlive()
	}
}

// grant grants a lease (or adopts resume, if etcd still has it) and starts
// keeping it alive until stop is called.
func (s *Session) grant(ctx context.Context, resume LeaseID) (_ LeaseID, _ <-chan *clientv3.LeaseKeepAliveResponse, stop func(), _ error) {
	gctx, cancel := context.WithTimeout(ctx, s.client.cfg.RequestTimeout)
	defer cancel()
	id := clientv3.LeaseID(resume)
	if resume != 0 {
		ttl, err := s.client.etcd.TimeToLive(gctx, id)
		if err != nil && !isLeaseNotFound(err) {
			return 0, nil, nil, fmt.Errorf("look up lease %x: %w", resume, wrapErr(err))
		}
		if err != nil || ttl.TTL <= 0 {
			id = 0
		}
	}
	if id == 0 {
		resp, err := s.client.etcd.Grant(gctx, int64(s.cfg.TTL/time.Second))
		if err != nil {
			return 0, nil, nil, fmt.Errorf("grant lease: %w", wrapErr(err))
		}
		id = resp.ID
	}
	kctx, stop := context.WithCancel(ctx)
	ka, err := s.client.etcd.KeepAlive(kctx, id)
	if err != nil {
		stop()
		return 0, nil, nil, fmt.Errorf("keep lease %x alive: %w", id, wrapErr(err))
	}
	return LeaseID(id), ka, stop, nil
}

// keepAlive drains keepalive answers until the lease is lost, re-writing
// keys that were owned on an older lease when poked.
func (s *Session) keepAlive(ctx context.Context, lease LeaseID, ka <-chan *clientv3.LeaseKeepAliveResponse) {
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ka:
			if !ok {
				s.lost(lease, fmt.Errorf("lease %x expired or was revoked", int64(lease)))
				return
			}
		case <-s.kick:
			s.mu.Lock()
			if s.state.Lease != lease {
				s.mu.Unlock()
				return
			}
			keys := make(map[string]string, len(s.pending))
			for k := range s.pending {
				keys[k] = s.owned[k]
			}
			clear(s.pending)
			s.reasserting++
			s.mu.Unlock()
			err := s.reassert(ctx, lease, keys)
			s.reasserted()
			if err != nil {
				s.lost(lease, err)
				return
			}
		}
	}
}

func (s *Session) reasserted() {
	s.mu.Lock()
	s.reasserting--
	s.mu.Unlock()
}

// reassertBatch is how many puts go into one transaction.
const reassertBatch = 128

// reassert writes keys on lease, in transactions of reassertBatch puts.
func (s *Session) reassert(ctx context.Context, lease LeaseID, keys map[string]string) error {
	ops := make([]clientv3.Op, 0, min(len(keys), reassertBatch))
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		rctx, cancel := context.WithTimeout(ctx, s.client.cfg.RequestTimeout)
		defer cancel()
		_, err := s.client.etcd.Txn(rctx).Then(ops...).Commit()
		ops = ops[:0]
		if err != nil {
			return fmt.Errorf("re-assert owned keys: %w", wrapErr(err))
		}
		return nil
	}
	for k, v := range keys {
		ops = append(ops, clientv3.OpPut(k, v, clientv3.WithLease(clientv3.LeaseID(lease))))
		if len(ops) == reassertBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func (s *Session) setErr(err error) {
	s.mu.Lock()
	s.state.Err = err
	s.mu.Unlock()
	s.notify()
}

func isLeaseNotFound(err error) bool {
	return err != nil && (errors.Is(err, rpctypes.ErrLeaseNotFound) || errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) ||
		errors.Is(rpctypes.Error(err), rpctypes.ErrLeaseNotFound))
}

// IsLeaseNotFound reports whether err says a write named a lease that is gone.
func IsLeaseNotFound(err error) bool { return isLeaseNotFound(err) }
