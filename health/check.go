package health

import (
	"errors"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
	"golang.org/x/sys/unix"
)

// The direct check (doc.go, "Confirmation"): when memberlist declares a
// member dead, this member opens a TCP connection to the member's gossip
// port itself before it reports anything. The kernel of the member's node
// completes the handshake whenever a socket listens there, however busy or
// stopped the process that holds it; it resets the connection when
// nothing listens (the process is gone); and nothing answers when the
// node or the path to it is gone.

// checkResult is what a check found.
type checkResult int

const (
	// checkUnknown: this member could not check (out of file
	// descriptors, shutting down): no evidence either way.
	checkUnknown checkResult = iota
	// checkUp: the handshake completed: the node is up and a process
	// holds the port.
	checkUp
	// checkRefused: the node reset the connection: it is up, but nothing
	// listens on the port.
	checkRefused
	// checkNoAnswer: no handshake within the timeout, or the node is
	// unreachable: the node or the path to it is gone.
	checkNoAnswer
)

func (r checkResult) String() string {
	switch r {
	case checkUp:
		return "up"
	case checkRefused:
		return "refused"
	case checkNoAnswer:
		return "no answer"
	}
	return "unknown"
}

// maxChecks bounds the checks under way at once; more wait for the next
// round (a tenth of the cluster crashing at once in a cluster of 5,000
// takes a few rounds).
const maxChecks = 64

// checkPoll is the longest a check sleeps before it looks at its socket
// and at Close again.
const checkPoll = 50 * time.Millisecond

// check is the check state of a member. A state change replaces it (a new
// generation), so the result of a check started before is dropped.
type check struct {
	gen      uint64
	want     bool      // a check is due now: memberlist declared a death
	inFlight bool      // a check of this generation is under way
	next     time.Time // when an Unresponsive or Restarting member is checked again
	backoff  time.Duration
	misses   int  // checks in a row that found no answer (Restarting)
	answered bool // a check of this declared death found the node up: it has refuteGrace to refute
	wanted   bool // the death was declared while the member was in the cluster (counts if unconfirmed)
}

// refuteGrace is how long a member memberlist declared dead, but whose
// node answered the check, has to refute the death itself before it is
// Unresponsive: the dead message reaches it within a gossip round or two
// and its alive comes back as fast. Without the grace a false death that
// memberlist repairs at once shows as Unresponsive for a moment: stale
// gossip about a restarted member's previous life (the dead message for
// its old incarnation still being retransmitted when it rejoins under
// its name), or an ack lost under load.
func (g *Gossip) refuteGrace() time.Duration {
	return g.cfg.ProbeInterval + 2*g.cfg.GossipInterval
}

// wantCheckLocked asks the checker to check e at once.
func (g *Gossip) wantCheckLocked(e *entry) {
	e.check.want = true
	select {
	case g.checkWake <- struct{}{}:
	default:
	}
}

// checker is the goroutine that starts checks: at once when a death is
// declared, and every ProbeInterval for members due for a check again.
// Each check runs in a goroutine of its own, tracked by wg, at most
// maxChecks at a time.
func (g *Gossip) checker() {
	defer g.wg.Done()
	tick := time.NewTicker(g.cfg.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-g.done:
			return
		case <-g.checkWake:
		case <-tick.C:
		}
		g.startChecks(time.Now())
	}
}

// startChecks starts the checks that are due.
func (g *Gossip) startChecks(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, e := range g.members {
		if g.checking >= maxChecks {
			return
		}
		c := &e.check
		again := e.m.State == Unresponsive || e.m.State == Restarting || c.answered
		due := c.want || (e.mlDown && again && !now.Before(c.next))
		if !due || c.inFlight || !e.m.Addr.IsValid() {
			continue
		}
		c.inFlight = true
		g.checking++
		g.wg.Add(1)
		go g.runCheck(name, e.m.Addr, c.gen)
	}
}

// runCheck checks one member and hands the result to checked.
func (g *Gossip) runCheck(name string, addr netip.AddrPort, gen uint64) {
	defer g.wg.Done()
	label := ""
	if g.cfg.Meta.Cluster != "" {
		label = labelPrefix + g.cfg.Meta.Cluster
	}
	res := dialCheck(g.done, addr, label, g.cfg.CheckTimeout)
	g.checked(name, gen, res, time.Now())
}

// checked applies a check's result.
//
//   - A declared death: a handshake gives the member refuteGrace to
//     refute; a second handshake after it, with the death still standing,
//     makes it Unresponsive (a death memberlist declared that did not
//     happen, and that the member does not repair). A reset or no answer
//     makes it Dead.
//   - Unresponsive: the same, checked again later and later (up to
//     maxRecheck): every check leaves a connection in the stalled
//     process's accept queue until it runs again.
//   - Restarting: a handshake or a reset means its node is up (the agent
//     restarts, or is back and about to rejoin); no answer twice in a row
//     means the node went down (Dead).
func (g *Gossip) checked(name string, gen uint64, res checkResult, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.checking--
	e := g.members[name]
	if e == nil || e.check.gen != gen {
		return // forgotten, or its state changed since: the result is stale
	}
	c := &e.check
	c.inFlight = false
	if res == checkUnknown || !e.mlDown {
		return // no evidence; a wanted check is tried again next round
	}
	wanted := c.want || c.wanted
	c.want = false
	switch {
	case e.m.State == Restarting:
		if res == checkNoAnswer {
			c.misses++
			if c.misses >= 2 {
				g.setStateLocked(e, Dead, now)
				g.queueLocked(name)
				return
			}
			c.next = now.Add(g.cfg.ProbeInterval)
			return
		}
		c.misses = 0
	case res == checkUp && e.m.State != Unresponsive && !c.answered:
		c.answered, c.wanted = true, wanted
		c.next = now.Add(g.refuteGrace())
		return
	case res == checkUp:
		if e.m.State != Unresponsive {
			if wanted {
				g.unconfirmed++
			}
			g.setStateLocked(e, Unresponsive, now)
			g.queueLocked(name)
			c = &e.check // a new generation
		}
	default:
		g.setStateLocked(e, Dead, now)
		g.queueLocked(name)
		return
	}
	c.backoff = min(max(2*c.backoff, g.cfg.ProbeInterval), maxRecheck)
	c.next = now.Add(c.backoff)
}

// dialCheck opens a TCP connection to addr and reports what the node's
// kernel answered within timeout; done (closed by Close) ends it early
// with checkUnknown. It reads the socket's state from the kernel after
// each wait, so a slow or starved checker never mistakes a handshake that
// completed in time for a timeout. After a handshake it sends the
// cluster's stream label and closes: memberlist's listener, whenever it
// gets to the connection, reads the label and an empty stream, and drops
// it without a log line.
func dialCheck(done <-chan struct{}, addr netip.AddrPort, label string, timeout time.Duration) checkResult {
	var (
		sa     unix.Sockaddr
		family = unix.AF_INET
	)
	a := addr.Addr().Unmap()
	if a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: a.As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: a.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return checkUnknown
	}
	defer func() { _ = unix.Close(fd) }()
	deadline := time.Now().Add(timeout)
	res := connectResult(unix.Connect(fd, sa))
	for res == checkPending && time.Now().Before(deadline) {
		select {
		case <-done:
			return checkUnknown
		default:
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		wait := min(time.Until(deadline), checkPoll)
		_, _ = unix.Poll(fds, int(wait.Milliseconds())+1)
		res = socketState(fd)
	}
	if res == checkPending {
		// One more look past the deadline: the kernel may have completed
		// the handshake while this process was not running.
		if res = socketState(fd); res == checkPending {
			res = checkNoAnswer
		}
	}
	if res == checkUp && label != "" {
		if hdr, err := memberlist.AddLabelHeaderToPacket(nil, label); err == nil {
			_, _ = unix.Write(fd, hdr) // best effort: a few bytes into an empty buffer
		}
	}
	return res
}

// checkPending is a connection not yet decided; dialCheck never returns it.
const checkPending checkResult = -1

// connectResult interprets connect(2) on a non-blocking socket.
func connectResult(err error) checkResult {
	switch {
	case err == nil:
		return checkUp // loopback may complete at once
	case errors.Is(err, unix.EINPROGRESS), errors.Is(err, unix.EINTR):
		return checkPending
	}
	return errnoResult(err)
}

// socketState reads a connecting socket's state from the kernel.
func socketState(fd int) checkResult {
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return checkUnknown
	}
	if soErr != 0 {
		return errnoResult(unix.Errno(soErr))
	}
	_, err = unix.Getpeername(fd)
	switch {
	case err == nil:
		return checkUp
	case errors.Is(err, unix.ENOTCONN):
		return checkPending
	}
	return checkUnknown
}

// errnoResult maps a connection's error: a reset is refused; a timeout or
// an unreachable host or network is no answer; anything else is not
// evidence about the member.
func errnoResult(err error) checkResult {
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		return checkRefused
	case errors.Is(err, unix.ETIMEDOUT), errors.Is(err, unix.EHOSTUNREACH), errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTDOWN):
		return checkNoAnswer
	}
	return checkUnknown
}
