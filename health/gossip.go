package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

// Errors of Gossip's methods.
var (
	// ErrClosed is returned by calls after Close.
	ErrClosed = errors.New("gossip: closed")
	// ErrLeft is returned by calls that would rejoin after Leave: a member
	// that left comes back as a new Gossip.
	ErrLeft = errors.New("gossip: this member left the cluster")
)

// State is a member's state as this member sees it.
type State int

// States of a member (doc.go, "States"). Dead and Left members are gone
// (State.Down); Alive, Suspect, Unresponsive and Restarting ones are in
// the cluster, and what depends on them stays.
const (
	// Alive: the member answers probes, or refuted the last suspicion.
	Alive State = iota + 1
	// Suspect: this member's probe of it failed; memberlist declares it
	// dead unless it refutes within the suspicion timeout. Informational.
	Suspect
	// Dead: memberlist declared it dead (it did not refute a suspicion)
	// and the direct check confirmed it: its node refused the connection
	// (nothing listens: the agent is gone) or did not answer at all; or
	// it announced a restart and did not come back in time.
	Dead
	// Left: it left for good (Leave).
	Left
	// Unresponsive: memberlist declared it dead, but its node completes a
	// TCP handshake on its gossip port: the node is up and the process
	// holds its sockets, only it does not gossip (paused, starved of CPU,
	// hung). It is checked again until it refutes (Alive) or its node
	// stops answering (Dead).
	Unresponsive
	// Restarting: it announced a restart (AnnounceRestart) and has not
	// come back yet. It turns Dead after Timing.RestartGrace, or sooner if
	// its node stops answering TCP at all (the node went down).
	Restarting
)

// Down reports whether a member in state s is gone: Dead or Left. The
// routes and services that depend on a member should go only then.
func (s State) Down() bool { return s == Dead || s == Left }

func (s State) String() string {
	switch s {
	case Alive:
		return "alive"
	case Suspect:
		return "suspect"
	case Dead:
		return "dead"
	case Left:
		return "left"
	case Unresponsive:
		return "unresponsive"
	case Restarting:
		return "restarting"
	}
	return "unknown(" + strconv.Itoa(int(s)) + ")"
}

// Member is one member of the cluster as this member sees it.
type Member struct {
	Name string
	// Addr is the gossip address the member advertises.
	Addr  netip.AddrPort
	State State
	// Meta is what the member advertises; empty if it did not decode (see
	// Stats.MetaErrors).
	Meta Meta
	// Since is when this member saw it enter State (local clock).
	Since time.Time
}

// Stats are counts for gauges and for meshctl.
type Stats struct {
	// Members by state, this member included.
	Alive, Suspect, Dead, Left, Unresponsive, Restarting int
	// MetaErrors counts metas received that did not decode: their members
	// are tracked with an empty Meta.
	MetaErrors uint64
	// UnconfirmedDeaths counts deaths memberlist declared that the direct
	// check did not confirm (the member became Unresponsive instead of
	// Dead): each one a removal that did not happen.
	UnconfirmedDeaths uint64
	// HealthScore is memberlist's Lifeguard awareness of this member's own
	// health: 0 is healthy; each point stretches its probe interval by one
	// more ProbeInterval, because it is likely the slow one.
	HealthScore int
}

// Gossip is one member of a cluster's gossip (memberlist, SWIM with the
// Lifeguard extensions): it probes other members, spreads what it learns,
// and reports every member's state. Its methods may be called
// concurrently. See doc.go for the goroutines and the tuning.
type Gossip struct {
	cfg   Config
	ml    *memberlist.Memberlist // set once in New (under mu)
	ring  *memberlist.Keyring    // nil when Insecure
	local netip.AddrPort
	log   *slog.Logger

	wake      chan struct{} // capacity 1: changes are queued for Notify
	checkWake chan struct{} // capacity 1: a check is wanted
	done      chan struct{} // closed by Close: stops run, checker and checks
	wg        sync.WaitGroup
	once      sync.Once

	// lifeMu guards closed. Calls that use memberlist hold it for reading,
	// so that Close (which takes it for writing) never shuts memberlist down
	// under them: memberlist panics on Leave after Shutdown.
	lifeMu sync.RWMutex
	closed bool

	// mu guards the fields below. memberlist's callbacks take it (with
	// memberlist's own lock held): nothing under mu calls into memberlist.
	mu          sync.Mutex
	members     map[string]*entry
	queue       []string        // names whose change Notify has not seen, oldest first
	queued      map[string]bool // the names in queue
	self        Meta            // this member's meta
	flags       byte            // flagLeaving after Leave, flagRestarting after AnnounceRestart
	meta        []byte          // self encoded with flags
	left        bool
	metaErrors  uint64
	unconfirmed uint64
	checking    int // checks under way
}

// entry is a member in the table.
type entry struct {
	m          Member
	leaving    bool      // its last meta announced a leave
	restarting bool      // its last meta announced a restart
	mlDown     bool      // memberlist declared it dead or left, and it has not come back
	changed    time.Time // last change of state or address after the first
	delivered  Member    // what Notify last got (State zero: nothing yet)
	check      check
}

// New starts a member: it binds the UDP and TCP sockets and starts probing
// (nobody, until Join). Binding errors wrap the syscall error (errors.Is
// with syscall.EADDRINUSE works).
func New(cfg Config) (*Gossip, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	cfg.Meta = cfg.Meta.Clone()
	keys := make([][]byte, len(cfg.Keys))
	for i, k := range cfg.Keys {
		keys[i] = bytes.Clone(k)
	}
	cfg.Keys = keys
	meta, err := cfg.Meta.encode(0)
	if err != nil {
		return nil, err
	}
	if cfg.BindPort != 0 {
		if err := checkBind(cfg.BindAddr, cfg.BindPort); err != nil {
			return nil, err
		}
	}
	g := &Gossip{
		cfg:       cfg,
		log:       cfg.Logger,
		wake:      make(chan struct{}, 1),
		checkWake: make(chan struct{}, 1),
		done:      make(chan struct{}),
		members:   make(map[string]*entry),
		queued:    make(map[string]bool),
		self:      cfg.Meta,
		meta:      meta,
	}
	if !cfg.Insecure {
		if g.ring, err = memberlist.NewKeyring(keys[1:], keys[0]); err != nil {
			return nil, fmt.Errorf("gossip: keyring: %w", err)
		}
	}
	ml, err := memberlist.Create(g.memberlistConfig())
	if err != nil {
		return nil, fmt.Errorf("gossip: start memberlist on %s: %w", net.JoinHostPort(cfg.BindAddr, strconv.Itoa(cfg.BindPort)), err)
	}
	g.mu.Lock()
	g.ml = ml // under mu for suspected, which memberlist may call already
	g.mu.Unlock()
	g.local = addrPort(ml.LocalNode())
	g.wg.Add(2)
	go g.run()
	go g.checker()
	return g, nil
}

func (g *Gossip) memberlistConfig() *memberlist.Config {
	c := g.cfg
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.Name
	mc.BindAddr, mc.BindPort = c.BindAddr, c.BindPort
	mc.AdvertiseAddr, mc.AdvertisePort = c.AdvertiseAddr, c.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = c.BindPort // memberlist replaces it when BindPort is 0
	}
	mc.ProbeInterval = c.ProbeInterval
	mc.ProbeTimeout = c.ProbeTimeout
	mc.GossipInterval = c.GossipInterval
	mc.SuspicionMult = c.SuspicionMult
	mc.SuspicionMaxTimeoutMult = c.SuspicionMaxTimeoutMult
	mc.AwarenessMaxMultiplier = c.AwarenessMaxMultiplier
	mc.RetransmitMult = retransmitMult
	mc.PushPullInterval = pushPullInterval
	// memberlist compresses every packet (LZW, with a fresh 16 KB table each
	// time), pings and acks included, which seldom shrinks them: off, a
	// member uses about a third less CPU (see doc.go). Members with either
	// setting understand each other.
	mc.EnableCompression = false
	// A member declared dead may come back at once on another address (a
	// node recreated with a new IP, a test on a new port). memberlist's
	// default (0) keeps the old address until the member is forgotten.
	mc.DeadNodeReclaimTime = time.Millisecond
	if g.ring != nil {
		mc.Keyring = g.ring
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	}
	if c.Meta.Cluster != "" {
		mc.Label = labelPrefix + c.Meta.Cluster
	}
	d := delegate{g}
	mc.Delegate, mc.Events, mc.Alive = d, d, d
	mc.Logger = log.New(&logWriter{log: g.log, suspect: g.suspected}, "", 0)
	return mc
}

// checkBind binds the address once, so that a port in use is a clear error
// (memberlist's own error does not wrap the cause).
func checkBind(addr string, port int) error {
	hp := net.JoinHostPort(addr, strconv.Itoa(port))
	ln, err := net.Listen("tcp", hp)
	if err == nil {
		_ = ln.Close() // a probe: memberlist binds for real next
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", hp); err == nil {
			_ = pc.Close()
		}
	}
	var errno syscall.Errno
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("gossip: bind %s: %w: another agent or program holds the port; use another port", hp, syscall.EADDRINUSE)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("gossip: bind %s: %w: the bind address must be an address of this host", hp, syscall.EADDRNOTAVAIL)
	case errors.As(err, &errno):
		return fmt.Errorf("gossip: bind %s: %w", hp, errno)
	}
	return fmt.Errorf("gossip: bind %s: %w", hp, err)
}

// Join contacts seeds ("host:port", such as the gossip addresses in the
// node records) in random order, three at a time, until three answered or
// all were tried, and returns how many answered. This member's own address
// is skipped; joining nobody (no seeds) is fine for the first member of a
// cluster. It fails if seeds were given and none answered (a member
// without the cluster's key never does). ctx is checked between rounds;
// a round that is under way finishes in the background within memberlist's
// TCP timeout (10 s), and Close waits for it.
func (g *Gossip) Join(ctx context.Context, seeds []string) (int, error) {
	const perRound, enough = 3, 3
	todo := make([]string, 0, len(seeds))
	for _, s := range seeds {
		if s != g.local.String() && !slices.Contains(todo, s) {
			todo = append(todo, s)
		}
	}
	rand.Shuffle(len(todo), func(i, j int) { todo[i], todo[j] = todo[j], todo[i] })
	joined := 0
	var errs []error
	for len(todo) > 0 && joined < enough {
		if err := ctx.Err(); err != nil {
			return joined, fmt.Errorf("gossip join: %w", err)
		}
		round := todo[:min(perRound, len(todo))]
		todo = todo[len(round):]
		results := make(chan error, len(round))
		g.lifeMu.RLock()
		if g.closed {
			g.lifeMu.RUnlock()
			return joined, ErrClosed
		}
		g.wg.Add(len(round))
		g.lifeMu.RUnlock()
		for _, seed := range round {
			go func() {
				defer g.wg.Done()
				results <- g.joinOne(seed)
			}()
		}
		for range round {
			select {
			case err := <-results:
				if err == nil {
					joined++
				} else {
					errs = append(errs, err)
				}
			case <-ctx.Done():
				return joined, fmt.Errorf("gossip join: %w", ctx.Err())
			}
		}
	}
	if joined == 0 && len(errs) > 0 {
		return 0, fmt.Errorf("gossip join: no seed answered: %w", errors.Join(errs...))
	}
	return joined, nil
}

func (g *Gossip) joinOne(seed string) error {
	g.lifeMu.RLock()
	defer g.lifeMu.RUnlock()
	if g.closed {
		return ErrClosed
	}
	g.mu.Lock()
	left := g.left
	g.mu.Unlock()
	if left {
		return ErrLeft
	}
	if _, err := g.ml.Join([]string{seed}); err != nil {
		// memberlist returns a go-multierror, whose text spans lines; its
		// parts already name the seed.
		if me, ok := err.(interface{ WrappedErrors() []error }); ok {
			return errors.Join(me.WrappedErrors()...)
		}
		return err
	}
	return nil
}

// Members returns every member this one knows, itself included, sorted by
// name: those in the cluster (alive, suspect, unresponsive, restarting),
// and dead and left ones for DeadRetention after their last change.
func (g *Gossip) Members() []Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pruneLocked(time.Now())
	ms := make([]Member, 0, len(g.members))
	for _, e := range g.members {
		ms = append(ms, cloneMember(e.m))
	}
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return ms
}

// Member returns the member of that name, as Members would.
func (g *Gossip) Member(name string) (Member, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pruneLocked(time.Now())
	e, ok := g.members[name]
	if !ok {
		return Member{}, false
	}
	return cloneMember(e.m), true
}

// LocalAddr is the address this member advertises: what the others (and
// Join's seeds) use to reach it.
func (g *Gossip) LocalAddr() netip.AddrPort { return g.local }

// Name is this member's name.
func (g *Gossip) Name() string { return g.cfg.Name }

// UpdateMeta replaces this member's meta and broadcasts it, waiting up to
// timeout (positive) for the broadcast to go out. On a timeout error the
// new meta is in place and still spreads. Meta.Cluster cannot change.
func (g *Gossip) UpdateMeta(m Meta, timeout time.Duration) error {
	if timeout <= 0 {
		return fmt.Errorf("gossip: update meta: timeout %s: use a positive timeout", timeout)
	}
	if m.Cluster != g.cfg.Meta.Cluster {
		return fmt.Errorf("gossip: update meta: cluster %q: the cluster is %q and cannot change", m.Cluster, g.cfg.Meta.Cluster)
	}
	b, err := m.encode(0)
	if err != nil {
		return fmt.Errorf("gossip: update meta: %w", err)
	}
	g.lifeMu.RLock()
	defer g.lifeMu.RUnlock()
	if g.closed {
		return ErrClosed
	}
	g.mu.Lock()
	if g.left {
		g.mu.Unlock()
		return ErrLeft
	}
	g.self, g.meta = m.Clone(), b
	g.mu.Unlock()
	if err := g.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("gossip: update meta: %w", err)
	}
	return nil
}

// AnnounceRestart tells the others that this member is about to stop and
// will come back under the same name (an agent's graceful shutdown: a
// restart or an upgrade), and leaves memberlist's cluster: the others
// report it Restarting instead of Left or Dead and keep what depends on it
// for their Timing.RestartGrace. It waits up to timeout (positive) for the
// announcement and the leave to go out; Close should follow. Like Leave,
// it ends this Gossip's membership (later calls return ErrLeft).
//
// The announcement is a meta carrying a restart flag, and the leave is
// memberlist's, sent only once memberlist has retransmitted the meta in
// full: memberlist queues one message per member, so the leave would
// replace a meta still being retransmitted, and a member that missed the
// meta would read a plain departure. The leave (rather than a silent stop)
// spares the others the probes and suspicions of a member that is gone,
// and lets it come back at once even on another address (memberlist
// refuses a live member's new address until it is declared dead).
func (g *Gossip) AnnounceRestart(timeout time.Duration) error {
	if timeout <= 0 {
		return fmt.Errorf("gossip: announce restart: timeout %s: use a positive timeout", timeout)
	}
	metaErr, err := g.depart(flagRestarting, timeout, timeout*2/3, ErrLeft)
	if err := errors.Join(metaErr, err); err != nil {
		return fmt.Errorf("gossip: announce restart: %w", err)
	}
	return nil
}

// depart announces flags in this member's meta, waiting up to metaWait for
// the broadcast to be sent in full (metaErr: it was not, but still
// spreads), then runs memberlist's leave until timeout is up (err). A
// member that already departed gets again (nil for Leave, ErrLeft for
// AnnounceRestart).
func (g *Gossip) depart(flags byte, timeout, metaWait time.Duration, again error) (metaErr, err error) {
	g.lifeMu.RLock()
	defer g.lifeMu.RUnlock()
	if g.closed {
		return nil, ErrClosed
	}
	g.mu.Lock()
	if g.left {
		g.mu.Unlock()
		return nil, again
	}
	g.left = true
	g.flags = flags
	g.meta, _ = g.self.encode(g.flags) // encoded before: cannot fail
	g.mu.Unlock()
	deadline := time.Now().Add(timeout)
	metaErr = g.ml.UpdateNode(metaWait)
	return metaErr, g.ml.Leave(max(time.Until(deadline), time.Millisecond))
}

// SetKeys replaces the keyring at run time: keys[0] becomes the primary,
// the others are accepted. A rotation runs in three steps, each on every
// member before the next: add the new key ([old, new]), make it primary
// ([new, old]), drop the old one ([new]).
func (g *Gossip) SetKeys(keys [][]byte) error {
	if g.ring == nil {
		return errors.New("gossip: set keys: this member runs without a keyring (insecure)")
	}
	if len(keys) == 0 {
		return errors.New("gossip: set keys: no keys")
	}
	for i, k := range keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return fmt.Errorf("gossip: set keys: key %d is %d bytes: use an AES key of 16, 24 or 32 bytes", i, len(k))
		}
	}
	for _, k := range keys {
		if err := g.ring.AddKey(bytes.Clone(k)); err != nil {
			return fmt.Errorf("gossip: set keys: %w", err)
		}
	}
	if err := g.ring.UseKey(keys[0]); err != nil {
		return fmt.Errorf("gossip: set keys: %w", err)
	}
	for _, old := range slices.Clone(g.ring.GetKeys()) {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, old) }) {
			if err := g.ring.RemoveKey(old); err != nil {
				return fmt.Errorf("gossip: set keys: %w", err)
			}
		}
	}
	return nil
}

// Leave leaves the cluster gracefully: it announces the leave, so that the
// others report this member Left rather than Dead, and waits up to timeout
// (positive) for the announcement to go out. The member keeps answering
// until Close. Calling it again does nothing.
func (g *Gossip) Leave(timeout time.Duration) error {
	if timeout <= 0 {
		return fmt.Errorf("gossip: leave: timeout %s: use a positive timeout", timeout)
	}
	// memberlist's own leave (a death announced by the member itself) looks
	// to the others like any death; the meta carrying flagLeaving, sent
	// first, tells them apart. Best effort: a member that hears of the
	// death first still turns it into Left when the meta arrives.
	if _, err := g.depart(flagLeaving, timeout, timeout/2, nil); err != nil {
		return fmt.Errorf("gossip: leave: %w", err)
	}
	return nil
}

// Close stops the member without leaving: to the others it looks like a
// crash, and they declare it dead once their check finds its port closed,
// unless AnnounceRestart came first (then it is Restarting). It returns
// after its goroutines, its checks under way and any Notify call have
// returned (memberlist's own goroutines stop shortly
// after: memberlist offers no way to wait for them). Calling it again does
// nothing.
func (g *Gossip) Close() error {
	var err error
	g.once.Do(func() {
		g.lifeMu.Lock()
		g.closed = true
		g.lifeMu.Unlock()
		err = g.ml.Shutdown()
		close(g.done)
		g.wg.Wait()
	})
	return err
}

// Stats counts the members by state.
func (g *Gossip) Stats() Stats {
	score := g.ml.GetHealthScore()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pruneLocked(time.Now())
	s := Stats{MetaErrors: g.metaErrors, UnconfirmedDeaths: g.unconfirmed, HealthScore: score}
	for _, e := range g.members {
		switch e.m.State {
		case Alive:
			s.Alive++
		case Suspect:
			s.Suspect++
		case Dead:
			s.Dead++
		case Left:
			s.Left++
		case Unresponsive:
			s.Unresponsive++
		case Restarting:
			s.Restarting++
		}
	}
	return s
}

func cloneMember(m Member) Member {
	m.Meta = m.Meta.Clone()
	return m
}

func addrPort(n *memberlist.Node) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(n.Addr)
	return netip.AddrPortFrom(ip.Unmap(), n.Port)
}
