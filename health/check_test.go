package health

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"golang.org/x/sys/unix"
)

// TestDialCheck checks the direct check against what a node's kernel
// answers: a handshake where a socket listens (even one whose process
// never accepts), a reset where none does, nothing where the listener's
// queue is full (as for a node that is gone: the SYN is dropped), and an
// early end on Close.
func TestDialCheck(t *testing.T) {
	t.Parallel()
	never := make(chan struct{})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	up := netip.MustParseAddrPort(ln.Addr().String())
	if got := dialCheck(never, up, "meshplane/test", time.Second); got != checkUp {
		t.Errorf("a listening port (never accepted): %s, want up", got)
	}

	closed := freePort(t)
	if got := dialCheck(never, closed, "", time.Second); got != checkRefused {
		t.Errorf("a closed port: %s, want refused", got)
	}

	full := fullListener(t)
	start := time.Now()
	if got := dialCheck(never, full, "", 300*time.Millisecond); got != checkNoAnswer {
		t.Errorf("a listener with a full queue: %s, want no answer", got)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("no answer after %s, before the timeout", took)
	}

	done := make(chan struct{})
	close(done)
	if got := dialCheck(done, full, "", time.Minute); got != checkUnknown {
		t.Errorf("after Close: %s, want unknown", got)
	}
}

// freePort returns a loopback address where nothing listens.
func freePort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return a
}

// fullListener returns the address of a listening socket whose accept
// queue (backlog 0: one connection) is full, so that the kernel drops
// further SYNs.
func fullListener(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	for range 2 { // the queue holds backlog+1
		c, err := net.DialTimeout("tcp", addr.String(), 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	return addr
}

// TestCheckedStates drives the check's state machine with results: a
// declared death becomes Unresponsive on a handshake after the refute
// grace (a refute in it ends the check) and Dead on a reset;
// a restarting member stays through resets and one missed answer, and is
// Dead after two; a stale result is dropped.
func TestCheckedStates(t *testing.T) {
	t.Parallel()
	g := start(t, Config{Name: "checked-a", Insecure: true})
	addr := freePort(t)
	put := func(name string, st State) {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.members[name] = &entry{m: Member{Name: name, Addr: addr, State: st, Since: time.Now()}, mlDown: true, check: check{gen: 7, want: st != Restarting}}
	}
	apply := func(name string, gen uint64, res checkResult) State {
		g.mu.Lock()
		g.checking++ // as startChecks does
		g.mu.Unlock()
		g.checked(name, gen, res, time.Now())
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.members[name].m.State
	}
	gen := func(name string) uint64 {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.members[name].check.gen
	}

	put("paused", Suspect)
	if st := apply("paused", 7, checkUp); st != Suspect {
		t.Errorf("declared dead, handshake: %s, want suspect until the refute grace is over", st)
	}
	g.mu.Lock()
	if c := g.members["paused"].check; !c.answered || c.want || time.Until(c.next) <= 0 {
		t.Errorf("after the first handshake: %+v, want a check due after the refute grace", c)
	}
	g.mu.Unlock()
	if st := apply("paused", 7, checkUp); st != Unresponsive {
		t.Errorf("declared dead, handshake after the grace: %s, want unresponsive", st)
	}
	if st := apply("paused", gen("paused"), checkUp); st != Unresponsive {
		t.Errorf("unresponsive, handshake again: %s", st)
	}
	if st := apply("paused", gen("paused"), checkRefused); st != Dead {
		t.Errorf("unresponsive, then refused: %s, want dead", st)
	}
	if s := g.Stats(); s.UnconfirmedDeaths != 1 {
		t.Errorf("unconfirmed deaths %d, want 1", s.UnconfirmedDeaths)
	}

	// A refute within the grace (memberlist's alive: a new generation)
	// leaves it in the cluster, never Unresponsive.
	put("refuted", Alive)
	if st := apply("refuted", 7, checkUp); st != Alive {
		t.Errorf("declared dead, handshake: %s, want alive", st)
	}
	meta, err := Meta{}.encode(0)
	if err != nil {
		t.Fatal(err)
	}
	g.observe(&memberlist.Node{Name: "refuted", Addr: addr.Addr().AsSlice(), Port: addr.Port(), Meta: meta}, Alive) // NotifyJoin
	if m, _ := g.Member("refuted"); m.State != Alive {
		t.Errorf("refuted: %s", m.State)
	}
	if st := apply("refuted", 7, checkUp); st != Alive {
		t.Errorf("refuted, then the grace's check: %s, want alive (the result is stale)", st)
	}

	put("crashed", Alive)
	if st := apply("crashed", 6, checkRefused); st != Alive {
		t.Errorf("a stale result changed the state: %s", st)
	}
	if st := apply("crashed", 7, checkUnknown); st != Alive {
		t.Errorf("no evidence changed the state: %s", st)
	}
	if st := apply("crashed", 7, checkRefused); st != Dead {
		t.Errorf("declared dead, refused: %s, want dead", st)
	}

	put("restarting", Restarting)
	for i, res := range []checkResult{checkRefused, checkNoAnswer, checkUp, checkNoAnswer, checkRefused} {
		if st := apply("restarting", 7, res); st != Restarting {
			t.Fatalf("restarting, result %d (%s): %s, want restarting", i, res, st)
		}
	}
	if st := apply("restarting", 7, checkNoAnswer); st != Restarting {
		t.Fatalf("restarting, one miss: %s", st)
	}
	if st := apply("restarting", 7, checkNoAnswer); st != Dead {
		t.Errorf("restarting, two misses in a row: %s, want dead", st)
	}
	g.mu.Lock()
	if g.checking != 0 {
		t.Errorf("%d checks counted under way", g.checking)
	}
	g.mu.Unlock()
}
