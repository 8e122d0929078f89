package kvstore

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// RepairReason says what was wrong with an owned key the session wrote
// back.
type RepairReason string

// The reasons for a repair.
const (
	// RepairDeleted: the key was deleted behind the session's back.
	RepairDeleted RepairReason = "deleted"
	// RepairChanged: the key holds a value the session did not write.
	RepairChanged RepairReason = "changed"
	// RepairLease: the key holds the session's value, but not on the
	// session's lease (a hand-made put of the same value, with no lease or
	// another one): it would outlive the agent, or die with someone else.
	RepairLease RepairReason = "lease"
)

// Repair describes an owned key the session wrote back on its lease.
type Repair struct {
	Key    string
	Reason RepairReason
	// Found is the value the key held (nil if it was deleted), and
	// FoundLease its lease (0: none).
	Found      []byte
	FoundLease LeaseID
	// Next is the least time before the session repairs this key again,
	// should it be changed again: it doubles while someone keeps changing
	// the key.
	Next time.Duration
}

// observation is the state of an owned key as etcd last reported it.
type observation struct {
	exists bool
	value  []byte
	lease  int64
	modRev int64 // 0 when the key does not exist
	rev    int64 // the revision the observation is from, to order them
}

// guardKey is what the guard knows of one owned key.
type guardKey struct {
	obs     observation
	checkAt time.Time // zero: nothing to check
	// delay is the least time between two repairs; it doubles while
	// repairs keep coming (see check).
	delay      time.Duration
	lastRepair time.Time
}

// guard repairs a session's owned keys under the prefixes of
// SessionConfig.Guard. One goroutine per prefix watches it and records
// observations of owned keys; one goroutine (the repairer) checks the keys
// that look wrong and writes them back, each no more often than its
// backoff allows. Both are children of the session, stopped by Close and
// Detach.
//
// The races it must not lose:
//   - The session's own writes: Put marks the key as being written until
//     the new value is owned (Session.Writing does the same for a caller's
//     transaction), and a key being written is not repaired, so an event
//     of the new value seen before Own never brings the old value back.
//     Nor is any key while a re-assert runs (after a lease loss etcd
//     deletes the old lease's keys; the re-assert, not a repair, puts
//     them back), or a key written on a lease already lost (pending).
//   - A repair racing a newer change: the repair is a transaction that
//     compares the key's mod revision with the observed one, so it never
//     overwrites a change it has not seen; the newer change is observed
//     and judged on its own.
//   - A repair racing the caller's own delete (Session.Delete disowns,
//     then deletes): a repair that went in after the key was disowned is
//     deleted again, compared on the repair's revision, so a disowned key
//     is never re-created.
type guard struct {
	s *Session

	mu   sync.Mutex // mu guards keys
	keys map[string]*guardKey
	wake chan struct{} // 1-buffered: a key's check time came forward
}

func newGuard(s *Session) *guard {
	return &guard{s: s, keys: make(map[string]*guardKey), wake: make(chan struct{}, 1)}
}

// run watches every prefix and repairs until ctx ends.
func (g *guard) run(ctx context.Context) {
	eg, ectx := errgroup.WithContext(ctx)
	for _, p := range g.s.cfg.Guard {
		eg.Go(func() error { g.watch(ectx, p); return nil })
	}
	eg.Go(func() error { g.repairer(ectx); return nil })
	_ = eg.Wait()
}

func (g *guard) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// watch follows one prefix: it reads the owned keys under it, then
// watches from that revision; after a compaction or a broken watch it
// reads them again.
func (g *guard) watch(ctx context.Context, prefix string) {
	c := g.s.client
	pause := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-c.etcd.Ctx().Done():
			return false
		case <-time.After(g.s.cfg.RetryInterval):
			return true
		}
	}
	for ctx.Err() == nil && c.etcd.Ctx().Err() == nil {
		rev, err := g.verify(ctx, prefix)
		if err != nil {
			if !pause() {
				return
			}
			continue
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := c.etcd.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for resp := range wch {
			if resp.CompactRevision != 0 || resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				o := observation{rev: ev.Kv.ModRevision}
				if ev.Type == mvccpb.PUT {
					o.exists, o.value, o.lease, o.modRev = true, ev.Kv.Value, ev.Kv.Lease, ev.Kv.ModRevision
				}
				g.observe(string(ev.Kv.Key), o)
			}
		}
		cancel()
		if !pause() {
			return
		}
	}
}

// verify reads the owned keys under prefix and records what it finds. It
// returns the revision of the first read, from which the watch starts (a
// later read's findings are newer; events replayed from before them are
// ignored by revision).
func (g *guard) verify(ctx context.Context, prefix string) (int64, error) {
	g.s.mu.Lock()
	var keys []string
	for k := range g.s.owned {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	g.s.mu.Unlock()
	first := int64(0)
	// The prefix itself is read too, so that even with no owned key the
	// read has a revision.
	keys = append([]string{prefix}, keys...)
	for len(keys) > 0 {
		n := min(len(keys), reassertBatch)
		ops := make([]clientv3.Op, n)
		for i, k := range keys[:n] {
			ops[i] = clientv3.OpGet(k)
		}
		rctx, cancel := context.WithTimeout(ctx, g.s.client.cfg.RequestTimeout)
		resp, err := g.s.client.etcd.Txn(rctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return 0, fmt.Errorf("read owned keys under %s: %w", prefix, wrapErr(err))
		}
		if first == 0 {
			first = resp.Header.Revision
		}
		for i, k := range keys[:n] {
			o := observation{rev: resp.Header.Revision}
			if kvs := resp.Responses[i].GetResponseRange().Kvs; len(kvs) == 1 {
				kv := kvs[0]
				o = observation{exists: true, value: kv.Value, lease: kv.Lease, modRev: kv.ModRevision, rev: resp.Header.Revision}
			}
			g.observe(k, o)
		}
		keys = keys[n:]
	}
	return first, nil
}

// observe records the state of key and schedules a check if it does not
// match what the session owns.
func (g *guard) observe(key string, o observation) {
	s := g.s
	s.mu.Lock()
	value, owned := s.owned[key]
	lease := s.state.Lease
	busy := s.writing[key] > 0
	s.mu.Unlock()
	g.mu.Lock()
	defer g.mu.Unlock()
	gk := g.keys[key]
	if !owned {
		delete(g.keys, key)
		return
	}
	if gk == nil {
		gk = &guardKey{delay: s.cfg.RepairBackoff}
		g.keys[key] = gk
	}
	if o.rev < gk.obs.rev {
		return // older than what is known (a replayed event)
	}
	gk.obs = o
	if !busy && mismatch(o, value, lease) == "" {
		return
	}
	if gk.checkAt.IsZero() {
		gk.checkAt = time.Now()
		g.poke()
	}
}

// mismatch says why an observation is not the owned value on the lease,
// or "" if it is.
func mismatch(o observation, value string, lease LeaseID) RepairReason {
	switch {
	case !o.exists:
		return RepairDeleted
	case !bytes.Equal(o.value, []byte(value)):
		return RepairChanged
	case o.lease != int64(lease):
		return RepairLease
	}
	return ""
}

// repairer checks the keys that are due, then sleeps until the next one
// is, or until a key is scheduled.
func (g *guard) repairer(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		var due []string
		next := time.Time{}
		g.mu.Lock()
		for k, gk := range g.keys {
			switch {
			case gk.checkAt.IsZero():
			case !gk.checkAt.After(now):
				due = append(due, k)
				gk.checkAt = time.Time{}
			case next.IsZero() || gk.checkAt.Before(next):
				next = gk.checkAt
			}
		}
		g.mu.Unlock()
		for _, k := range due {
			if ctx.Err() != nil {
				return
			}
			g.check(ctx, k)
		}
		if len(due) > 0 {
			continue // checks may have scheduled keys again
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-g.wake:
		case <-t.C:
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
	}
}

// schedule makes key due at at, unless it is due earlier.
func (g *guard) schedule(key string, at time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gk := g.keys[key]; gk != nil && (gk.checkAt.IsZero() || at.Before(gk.checkAt)) {
		gk.checkAt = at
	}
}

// busyRecheck is how soon a key that is being written is checked again.
const busyRecheck = 50 * time.Millisecond

// check compares a key's latest observation with what the session owns
// and, if they differ and the key's backoff allows, writes the owned
// value back on the session's lease.
func (g *guard) check(ctx context.Context, key string) {
	s := g.s
	s.mu.Lock()
	value, owned := s.owned[key]
	lease := s.state.Lease
	_, stale := s.pending[key]
	busy := s.writing[key] > 0 || s.reasserting > 0 || stale
	s.mu.Unlock()
	g.mu.Lock()
	gk := g.keys[key]
	if gk == nil || !owned {
		delete(g.keys, key)
		g.mu.Unlock()
		return
	}
	o := gk.obs
	now := time.Now()
	reason := mismatch(o, value, lease)
	switch {
	case busy:
		// The session is writing the key (or re-asserting keys after a
		// lease loss): look again once it is done.
		g.mu.Unlock()
		g.schedule(key, now.Add(busyRecheck))
		return
	case reason == "" || lease == 0:
		// Right, or there is no lease: the next lease re-asserts every
		// owned key anyway.
		g.mu.Unlock()
		return
	case !gk.lastRepair.IsZero() && now.Before(gk.lastRepair.Add(gk.delay)):
		at := gk.lastRepair.Add(gk.delay)
		g.mu.Unlock()
		g.schedule(key, at)
		return
	}
	g.mu.Unlock()

	rctx, cancel := context.WithTimeout(ctx, s.client.cfg.RequestTimeout)
	resp, err := s.client.etcd.Txn(rctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", o.modRev)).
		Then(clientv3.OpPut(key, value, clientv3.WithLease(clientv3.LeaseID(lease)))).
		Commit()
	cancel()
	switch {
	case isLeaseNotFound(err):
		s.lost(lease, err) // the re-assert on the next lease writes it
		return
	case err != nil:
		if ctx.Err() == nil {
			g.schedule(key, time.Now().Add(s.cfg.RetryInterval))
		}
		return
	case !resp.Succeeded:
		return // changed again since: that change is observed and judged
	}

	g.mu.Lock()
	// A key left alone for RepairBackoffMax after its backoff ran out
	// starts again at RepairBackoff.
	if gk.lastRepair.IsZero() || now.Sub(gk.lastRepair) >= gk.delay+s.cfg.RepairBackoffMax {
		gk.delay = s.cfg.RepairBackoff
	} else {
		gk.delay = min(2*gk.delay, s.cfg.RepairBackoffMax)
	}
	gk.lastRepair = now
	next := gk.delay
	g.mu.Unlock()

	s.mu.Lock()
	_, stillOwned := s.owned[key]
	s.mu.Unlock()
	if !stillOwned {
		// Disowned while the repair was in flight: the caller's delete
		// may have run before it, so undo the repair.
		dctx, cancel := context.WithTimeout(ctx, s.client.cfg.RequestTimeout)
		_ = s.client.DeleteIf(dctx, key, resp.Header.Revision)
		cancel()
		return
	}
	s.repairs.Add(1)
	if s.cfg.OnRepair != nil {
		r := Repair{Key: key, Reason: reason, FoundLease: LeaseID(o.lease), Next: next}
		if o.exists {
			r.Found = o.value
		}
		s.cfg.OnRepair(r)
	}
}
