package kvstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// DefaultElectionTTL is the lease TTL of a candidate when
// ElectionConfig.TTL is zero. It bounds both how long a crashed leader
// holds the office and how long a leader cut off from etcd takes to
// notice; 5s suits a control plane whose work (translating Kubernetes
// objects, GC) tolerates a few seconds without a leader.
const DefaultElectionTTL = 5 * time.Second

// ErrLeadershipLost is the cause of a Leadership's Context when the
// office was lost: the lease expired or was revoked, etcd was unreachable
// for longer than the TTL, or someone deleted the leader key.
var ErrLeadershipLost = errors.New("kvstore: leadership lost")

// ErrResigned is the cause of a Leadership's Context after Resign.
var ErrResigned = errors.New("kvstore: leadership resigned")

// ErrNoLeader is returned by Leader when no candidate holds the office.
var ErrNoLeader = errors.New("kvstore: no leader elected")

// ElectionConfig configures a candidate.
type ElectionConfig struct {
	// Value is what the leader key holds while this candidate leads: who
	// it is (a pod name, a host and port), as Leader reports it. Required.
	Value string
	// TTL is the TTL of the candidate's own lease (see
	// DefaultElectionTTL). Zero means DefaultElectionTTL; it must be at
	// least 2s and a whole number of seconds is used (etcd's unit).
	TTL time.Duration
}

// Leadership is the office won by Campaign, held until Done is closed.
//
// It rests on etcd's concurrency.Election with a lease of its own, never
// the agent-style Session: that session silently re-grants a lost lease,
// and a leader must instead learn that it lost. Done is closed, and
// Context cancelled, as soon as the lease is no longer being kept alive
// (it expired, it was revoked, etcd was unreachable past the TTL) or the
// leader key is deleted.
//
// Done is not a fence: a leader cut off from etcd learns of the loss up to
// a round trip after etcd expired its lease, and a successor may already
// lead by then. Every write a leader makes must therefore carry
// WithCondition(l.Condition()), which etcd checks in the write's own
// transaction.
//
// Goroutines: one watches the leader key and the lease until the office
// ends; with it, etcd's session keeps the lease alive. Resign stops both
// and must be called (also after a loss) to release them.
type Leadership struct {
	client *Client
	sess   *concurrency.Session
	key    string // this candidate's leader key
	rev    int64  // its create revision
	value  string

	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the watch goroutine returns

	releaseOnce sync.Once
	releaseErr  error
}

// Campaign runs for the office of the election under prefix (Keys.Leader)
// and blocks until it wins or ctx ends. A candidate whose lease is lost
// while it waits campaigns again with a new one. The returned Leadership
// does not end with ctx: Resign ends it.
func Campaign(ctx context.Context, c *Client, prefix string, cfg ElectionConfig) (*Leadership, error) {
	if cfg.Value == "" {
		return nil, fmt.Errorf("%w: an election candidate needs a value that names it", ErrConfig)
	}
	if prefix == "" {
		return nil, fmt.Errorf("%w: an election needs a key prefix (Keys.Leader)", ErrConfig)
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultElectionTTL
	}
	if cfg.TTL < 2*time.Second {
		return nil, fmt.Errorf("%w: election TTL %s is under the 2s etcd accepts reliably", ErrConfig, cfg.TTL)
	}
	for {
		l, err := campaignOnce(ctx, c, prefix, cfg)
		if l != nil || err != nil {
			return l, err
		}
		// The lease was lost while waiting: run again.
	}
}

// campaignOnce campaigns on a new lease. It returns nil, nil when the
// lease was lost before the office was won.
func campaignOnce(ctx context.Context, c *Client, prefix string, cfg ElectionConfig) (*Leadership, error) {
	ttl := int64(cfg.TTL / time.Second)
	gctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	grant, err := c.etcd.Grant(gctx, ttl)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("campaign %s: grant lease: %w", prefix, wrapErr(err))
	}
	// The session (its keepalive) outlives ctx; only Resign or a loss
	// ends it.
	sctx, scancel := context.WithCancel(context.WithoutCancel(ctx))
	sess, err := concurrency.NewSession(c.etcd, concurrency.WithLease(grant.ID), concurrency.WithTTL(int(ttl)), concurrency.WithContext(sctx))
	if err != nil {
		scancel()
		revoke(c, grant.ID)
		return nil, fmt.Errorf("campaign %s: keep lease alive: %w", prefix, wrapErr(err))
	}
	l := &Leadership{client: c, sess: sess, value: cfg.Value, done: make(chan struct{})}
	fail := func() {
		_ = l.release(context.Background())
		scancel()
	}
	// Stop waiting when the lease goes: the key we wait with is gone.
	cctx, ccancel := context.WithCancel(ctx)
	stop := context.AfterFunc(sess.Ctx(), ccancel)
	e := concurrency.NewElection(sess, prefix)
	err = e.Campaign(cctx, cfg.Value)
	stop()
	ccancel()
	if err != nil {
		fail()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("campaign %s: %w", prefix, ctx.Err())
		}
		if sess.Ctx().Err() != nil {
			return nil, nil
		}
		return nil, fmt.Errorf("campaign %s: %w", prefix, wrapErr(err))
	}
	// Campaign returns once every older candidate's key is gone, even if
	// ours went with them (the lease expired meanwhile): check it is there.
	l.key, l.rev = e.Key(), e.Rev()
	rev, ok, err := l.held(ctx)
	if err != nil || !ok {
		fail()
		return nil, err
	}
	l.ctx, l.cancel = context.WithCancelCause(sctx)
	go func() {
		defer scancel()
		l.watch(rev + 1)
	}()
	return l, nil
}

// held reports whether the leader key still exists with its create
// revision, and the revision of the answer.
func (l *Leadership) held(ctx context.Context) (int64, bool, error) {
	gctx, cancel := context.WithTimeout(ctx, l.client.cfg.RequestTimeout)
	defer cancel()
	resp, err := l.client.etcd.Get(gctx, l.key)
	if err != nil {
		return 0, false, fmt.Errorf("check leader key %s: %w", l.key, wrapErr(err))
	}
	ok := len(resp.Kvs) == 1 && resp.Kvs[0].CreateRevision == l.rev
	return resp.Header.Revision, ok, nil
}

// watch ends the office when the lease goes or the leader key is deleted.
func (l *Leadership) watch(from int64) {
	defer close(l.done)
	defer func() {
		// On a loss, stop keeping the lease alive at once (a deleted key
		// leaves it alive); Resign releases it itself, with its ctx.
		if !errors.Is(context.Cause(l.ctx), ErrResigned) {
			_ = l.release(context.Background())
		}
	}()
	// live ends with the office, the lease's keepalive or the client: every
	// etcd call below runs under it, so none of them (a Watch reconnecting,
	// a Get to an unreachable etcd) outlasts the lease.
	live, stopLive := context.WithCancel(l.ctx)
	defer stopLive()
	go func() {
		select {
		case <-l.sess.Done():
		case <-l.client.etcd.Ctx().Done():
		case <-live.Done():
		}
		stopLive()
	}()
	const minPause, maxPause = 50 * time.Millisecond, 2 * time.Second
	pause := minPause
	for live.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(live))
		wch := l.client.etcd.Watch(wctx, l.key, clientv3.WithRev(from))
		broken := false
		for !broken {
			select {
			case <-live.Done():
				cancel()
				l.lost()
				return
			case resp, ok := <-wch:
				if !ok || resp.Err() != nil || resp.CompactRevision != 0 {
					broken = true
					break
				}
				pause = minPause
				for _, ev := range resp.Events {
					if ev.Type == clientv3.EventTypeDelete {
						cancel()
						l.cancel(fmt.Errorf("%w: the leader key %s was deleted", ErrLeadershipLost, l.key))
						return
					}
					from = ev.Kv.ModRevision + 1
				}
			}
		}
		cancel()
		// The watch broke (compaction, no raft leader, a reconnect): look
		// at the key, then watch again from that answer.
		rev, ok, err := l.held(live)
		switch {
		case live.Err() != nil:
		case err == nil && !ok:
			l.cancel(fmt.Errorf("%w: the leader key %s is gone", ErrLeadershipLost, l.key))
			return
		case err == nil:
			from = rev + 1
		}
		select {
		case <-live.Done():
		case <-time.After(pause):
		}
		pause = min(2*pause, maxPause)
	}
	l.lost()
}

// lost ends the office with the reason live ended for: Resign (the office
// already ended), the lease, or a closed client.
func (l *Leadership) lost() {
	if l.ctx.Err() != nil {
		return // resigned, or ended already
	}
	// A closed client ends the session's keepalive too: name the cause,
	// not its effect.
	if l.client.etcd.Ctx().Err() != nil {
		l.cancel(fmt.Errorf("%w: the etcd client of %s was closed", ErrLeadershipLost, l.key))
		return
	}
	select {
	case <-l.ctx.Done():
	case <-l.sess.Done():
		l.cancel(fmt.Errorf("%w: the lease %x of %s expired or was revoked (or etcd was unreachable for longer than its TTL)",
			ErrLeadershipLost, int64(l.sess.Lease()), l.key))
	default:
		// Closed client: no keepalive will reach etcd again, so the lease
		// is as good as gone; do not wait out its TTL.
		l.cancel(fmt.Errorf("%w: the etcd client of %s was closed", ErrLeadershipLost, l.key))
	}
}

// release stops keeping the lease alive and revokes it, which deletes the
// leader key. It runs once.
func (l *Leadership) release(ctx context.Context) error {
	l.releaseOnce.Do(func() {
		lease := l.sess.Lease()
		l.sess.Orphan()
		rctx, cancel := context.WithTimeout(ctx, l.client.cfg.RequestTimeout)
		defer cancel()
		if _, err := l.client.etcd.Revoke(rctx, lease); err != nil && !isLeaseNotFound(err) {
			l.releaseErr = fmt.Errorf("revoke election lease %x: %w", int64(lease), wrapErr(err))
		}
	})
	return l.releaseErr
}

func revoke(c *Client, id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
	defer cancel()
	_, _ = c.etcd.Revoke(ctx, id)
}

// Done is closed when the office ends: lost, or resigned.
func (l *Leadership) Done() <-chan struct{} { return l.ctx.Done() }

// Context is cancelled when the office ends; context.Cause says why
// (ErrLeadershipLost or ErrResigned). Run the leader's work under it.
// It carries the values of Campaign's ctx, not its cancellation.
func (l *Leadership) Context() context.Context { return l.ctx }

// Err is nil while the office is held, then why it ended (wrapping
// ErrLeadershipLost or ErrResigned).
func (l *Leadership) Err() error {
	if l.ctx.Err() == nil {
		return nil
	}
	return context.Cause(l.ctx)
}

// Key returns this leader's key in etcd (the election prefix, '/', its
// lease in hex).
func (l *Leadership) Key() string { return l.key }

// Value returns the value the leader key holds (ElectionConfig.Value).
func (l *Leadership) Value() string { return l.value }

// Condition is the fence of this leadership: true while this candidate's
// leader key exists with the create revision it won with. Pass it with
// WithCondition on every write the leader makes; once the office is lost
// (the key expired with the lease, or was deleted, even if a successor
// re-created it) the write changes nothing and fails with
// ErrConditionFailed.
func (l *Leadership) Condition() Condition {
	c := KeyCreatedAt(l.key, l.rev)
	c.desc = fmt.Sprintf("leadership of %s (leader key created at revision %d)", l.key, l.rev)
	return c
}

// Resign ends the office at once: Context is cancelled (cause
// ErrResigned) before the leader key is deleted, so that the leader's
// work stops before a successor starts; then the lease is revoked, which
// deletes the key and lets the next candidate win. It waits for the
// Leadership's goroutine and is idempotent; after a loss it only releases
// what is left. The error is the revoke's, which ctx bounds.
func (l *Leadership) Resign(ctx context.Context) error {
	l.cancel(ErrResigned)
	<-l.done
	return l.release(ctx)
}

// Leader returns the value of the current leader of the election under
// prefix, or an error wrapping ErrNoLeader when there is none.
func Leader(ctx context.Context, c *Client, prefix string) (string, error) {
	resp, err := c.etcd.Get(ctx, prefix+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("leader of %s: %w", prefix, wrapErr(err))
	}
	if len(resp.Kvs) == 0 {
		return "", fmt.Errorf("leader of %s: %w", prefix, ErrNoLeader)
	}
	return string(resp.Kvs[0].Value), nil
}
