package health

import (
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate receives memberlist's callbacks. They run on memberlist's
// goroutines, some with memberlist's node lock held: each takes g.mu
// briefly, updates the table, queues the member for Notify and returns.
// None blocks or calls into memberlist.
type delegate struct{ g *Gossip }

var (
	_ memberlist.Delegate      = delegate{}
	_ memberlist.EventDelegate = delegate{}
	_ memberlist.AliveDelegate = delegate{}
)

// NodeMeta is this member's meta, validated to fit limit (512) when set.
func (d delegate) NodeMeta(limit int) []byte {
	d.g.mu.Lock()
	defer d.g.mu.Unlock()
	return d.g.meta
}

func (delegate) NotifyMsg([]byte)                  {}
func (delegate) GetBroadcasts(_, _ int) [][]byte   { return nil }
func (delegate) LocalState(bool) []byte            { return nil }
func (delegate) MergeRemoteState(_ []byte, _ bool) {}

// NotifyJoin: a new member, or one back from dead or left.
func (d delegate) NotifyJoin(n *memberlist.Node) { d.g.observe(n, Alive) }

// NotifyUpdate: a new meta or address; memberlist marks the member alive
// first.
func (d delegate) NotifyUpdate(n *memberlist.Node) { d.g.observe(n, Alive) }

// NotifyLeave: dead or left. memberlist does not say which (Node.State is
// never set, hashicorp/memberlist#266): the leave flag in the meta does.
func (d delegate) NotifyLeave(n *memberlist.Node) { d.g.observe(n, Dead) }

// NotifyAlive sees every alive message before memberlist checks it, stale
// ones included. It never rejects one.
func (d delegate) NotifyAlive(n *memberlist.Node) error {
	d.g.heardAlive(n)
	return nil
}

// observe records what an event delegate callback said about n: Alive
// for a join or an update, Dead for memberlist's death or leave.
func (g *Gossip) observe(n *memberlist.Node, st State) {
	var (
		meta    Meta
		flags   byte
		metaErr error
	)
	if st != Dead {
		meta, flags, metaErr = decodeMeta(n.Meta)
	} else if _, f, err := decodeMeta(n.Meta); err == nil {
		flags = f // the announcement may come with the death
	}
	now := time.Now()
	g.mu.Lock()
	e := g.entryLocked(n.Name)
	if addr := addrPort(n); e.m.Addr != addr {
		if e.m.Addr.IsValid() {
			e.changed = now
		}
		e.m.Addr = addr
	}
	switch {
	case st == Dead:
		// n.Meta is the last meta memberlist had, already recorded.
		e.mlDown = true
		e.leaving = e.leaving || flags&flagLeaving != 0
		e.restarting = e.restarting || flags&flagRestarting != 0
		switch {
		case e.leaving:
			st = Left
		case e.restarting:
			st = Restarting
		case e.m.State == 0 || e.m.State.Down():
			// Never seen in the cluster, or gone already: nothing to check.
			st = Dead
		default:
			// A death memberlist declared: Dead only once the check
			// confirms it; until then the member keeps its state.
			g.wantCheckLocked(e)
			g.mu.Unlock()
			return
		}
	case metaErr != nil:
		g.metaErrors++
		e.m.Meta, e.leaving, e.restarting, e.mlDown = Meta{}, false, false, false
		e.check = check{gen: e.check.gen + 1}
	default:
		e.m.Meta, e.mlDown = meta, false
		e.leaving, e.restarting = flags&flagLeaving != 0, flags&flagRestarting != 0
		e.check = check{gen: e.check.gen + 1} // back: no check under way applies
		if e.restarting {
			st = Restarting // the announcement: it is about to stop
		}
	}
	g.setStateLocked(e, st, now)
	g.queueLocked(n.Name)
	g.mu.Unlock()
	if metaErr != nil {
		g.log.Warn("gossip member meta undecodable; tracking it with an empty meta", "member", n.Name, "addr", addrPort(n), "err", metaErr)
	}
}

// heardAlive handles an alive message about n, which may be stale. It ends
// a suspicion this member holds (memberlist sends no event when a suspect
// refutes), and turns a death (declared, or being checked) into Left or
// Restarting when the message is the announcement that arrived after it.
func (g *Gossip) heardAlive(n *memberlist.Node) {
	addr := addrPort(n)
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.members[n.Name]
	if e == nil || e.m.Addr != addr {
		return // new, or on another address: NotifyJoin follows if accepted
	}
	_, flags, err := decodeMeta(n.Meta)
	if err != nil {
		flags = 0
	}
	now := time.Now()
	switch {
	case e.mlDown && flags&flagLeaving != 0:
		e.leaving = true
		g.setStateLocked(e, Left, now)
		g.queueLocked(n.Name)
	case e.mlDown && flags&flagRestarting != 0 && e.m.State != Restarting:
		e.restarting = true
		g.setStateLocked(e, Restarting, now)
		g.queueLocked(n.Name)
	case !e.mlDown && e.m.State == Suspect:
		g.setStateLocked(e, Alive, now)
		g.queueLocked(n.Name)
	}
}

// suspected is called when this member's probe of name failed, just
// before memberlist marks it suspect (see logWriter). The line names the
// member but not its address or incarnation: a probe that started before
// the member came back (restarted, or refuted) fails against the old one,
// and memberlist ignores that suspicion. So a member that changed within
// the probe's duration (the probe interval, stretched by this member's
// health score) is not marked.
func (g *Gossip) suspected(name string) {
	g.mu.Lock()
	ml := g.ml
	g.mu.Unlock()
	score := g.cfg.AwarenessMaxMultiplier - 1
	if ml != nil {
		score = ml.GetHealthScore()
	}
	window := g.cfg.ProbeInterval*time.Duration(score+1) + g.cfg.ProbeTimeout
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.members[name]; e != nil && e.m.State == Alive && !e.mlDown && now.Sub(e.changed) > window {
		g.setStateLocked(e, Suspect, now)
		g.queueLocked(name)
	}
}

func (g *Gossip) entryLocked(name string) *entry {
	e := g.members[name]
	if e == nil {
		e = &entry{m: Member{Name: name}}
		g.members[name] = e
	}
	return e
}

// setStateLocked moves e to st. A member seen for the first time keeps a
// zero changed time: no probe of it can predate it.
//
// A change ends the check under way, if any (its result is dropped), and
// starts the checks of the new state afresh.
func (g *Gossip) setStateLocked(e *entry, st State, now time.Time) {
	if e.m.State != st {
		if e.m.State != 0 {
			e.changed = now
		}
		e.m.State, e.m.Since = st, now
		e.check = check{gen: e.check.gen + 1}
	}
}

// queueLocked queues name for Notify, once however often it changes.
func (g *Gossip) queueLocked(name string) {
	if !g.queued[name] {
		g.queued[name] = true
		g.queue = append(g.queue, name)
	}
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// run is the goroutine Gossip owns: it calls Notify with queued changes and,
// every second, ends stale suspicions and forgets long-dead members.
func (g *Gossip) run() {
	defer g.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-g.done:
			return
		case <-g.wake:
		case now := <-tick.C:
			g.sweep(now)
		}
		for {
			m, ok := g.next()
			if !ok {
				break
			}
			if g.cfg.Notify != nil {
				g.cfg.Notify(m)
			}
			select {
			case <-g.done:
				return
			default:
			}
		}
	}
}

// next pops the oldest queued change that Notify has not seen yet.
func (g *Gossip) next() (Member, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for len(g.queue) > 0 {
		name := g.queue[0]
		g.queue[0] = ""
		g.queue = g.queue[1:]
		delete(g.queued, name)
		e := g.members[name]
		if e == nil {
			continue // forgotten
		}
		d := e.delivered
		if d.State == e.m.State && d.Addr == e.m.Addr && d.Meta.Equal(e.m.Meta) {
			continue // changed and changed back
		}
		e.delivered = cloneMember(e.m)
		return cloneMember(e.m), true
	}
	g.queue = nil // drop the drained backing array
	return Member{}, false
}

// sweep ends suspicions that outlived memberlist's longest suspicion
// timeout (the member was not declared dead, so it refuted and the alive
// message that said so was missed), ends restarts that outlived
// RestartGrace (Dead), and forgets dead and left members after
// DeadRetention.
func (g *Gossip) sweep(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pruneLocked(now)
	limit := g.maxSuspicionLocked()
	for name, e := range g.members {
		switch {
		case e.m.State == Suspect && !e.mlDown && now.Sub(e.m.Since) > limit:
			g.setStateLocked(e, Alive, now)
			g.queueLocked(name)
		case e.m.State == Restarting && e.mlDown && now.Sub(e.m.Since) > g.cfg.RestartGrace:
			g.setStateLocked(e, Dead, now)
			g.queueLocked(name)
		}
	}
}

func (g *Gossip) pruneLocked(now time.Time) {
	for name, e := range g.members {
		if (e.m.State == Dead || e.m.State == Left) && now.Sub(e.m.Since) > g.cfg.DeadRetention {
			delete(g.members, name)
		}
	}
}

// maxSuspicionLocked is memberlist's longest suspicion timeout at the
// current size, plus two probe intervals for the last probe and gossip.
func (g *Gossip) maxSuspicionLocked() time.Duration {
	_, longest := g.cfg.SuspicionTimeouts(len(g.members))
	return longest + 2*g.cfg.ProbeInterval
}
