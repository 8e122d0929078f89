package podip

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshplane/meshplane/ipam"
)

// Defaults for the zero values of Config.
const (
	DefaultQuarantine   = 30 * time.Second
	DefaultSyncInterval = 100 * time.Millisecond
)

// Errors of the API. Errors about CIDRs wrap ErrInvalidCIDR, errors about
// owners ErrInvalidOwner, and a damaged journal is a *CorruptJournalError.
var (
	// ErrFull means every CIDR of the family is full (or the node has
	// none yet): the caller claims another CIDR for the node and adds it
	// with AddCIDR.
	ErrFull = errors.New("pod CIDRs full: claim another CIDR for this node and add it with AddCIDR")
	// ErrClosed is returned by calls that change state after Close.
	ErrClosed = errors.New("pod IP allocator closed")
	// ErrLocked means another Allocator (in this process or another)
	// has the state directory open.
	ErrLocked = errors.New("pod IP state directory in use")
	// ErrConfig is wrapped by Config.Validate's errors.
	ErrConfig = errors.New("invalid pod IP allocator configuration")
)

// Clock tells the time; tests pass a fake one. The Allocator calls Now
// with its lock held, so Now must not call back into the Allocator.
type Clock interface {
	Now() time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// Config configures an Allocator.
type Config struct {
	// Dir is the node's state directory for pod IPs, created 0700 when
	// missing. The journal is Dir/podip.journal (0600) and Dir/podip.lock
	// keeps a second Allocator out. Required.
	Dir string
	// Quarantine is how long a released address is kept from being handed
	// out again, so that traffic still in flight to the old pod does not
	// reach a new one. Zero means DefaultQuarantine (30s); a negative value
	// disables the quarantine. It is counted from the release time stored
	// in the journal, so it survives a restart.
	Quarantine time.Duration
	// SyncInterval is how often a background goroutine fsyncs the journal
	// (group commit): records younger than this may be lost on a power
	// loss, never on a crash of the process. Zero means
	// DefaultSyncInterval (100ms); negative is an error.
	SyncInterval time.Duration
	// Clock tells the time for quarantines and records. Nil means the
	// wall clock.
	Clock Clock
}

// Validate reports what is wrong with c, if anything.
func (c Config) Validate() error {
	if c.Dir == "" {
		return fmt.Errorf("%w: Dir is empty: give the node's state directory", ErrConfig)
	}
	if c.SyncInterval < 0 {
		return fmt.Errorf("%w: SyncInterval %s is negative: use a positive interval, or zero for %s", ErrConfig, c.SyncInterval, DefaultSyncInterval)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Quarantine == 0 {
		c.Quarantine = DefaultQuarantine
	}
	if c.SyncInterval == 0 {
		c.SyncInterval = DefaultSyncInterval
	}
	if c.Clock == nil {
		c.Clock = wallClock{}
	}
	return c
}

// Allocator hands out pod IPs from the node's pod CIDRs. It is safe for
// concurrent use.
type Allocator struct {
	cfg   Config
	dir   string
	path  string
	lock  *os.File
	stop  chan struct{}
	kick  chan struct{} // asks the background goroutine to compact
	wg    sync.WaitGroup
	clock Clock

	mu sync.Mutex
	// mu guards everything below.
	f       *os.File // the journal, opened O_APPEND
	size    int64    // bytes in f
	records int      // records in f after the header
	dirty   bool     // records written since the last fsync
	closed  bool
	err     error // sticky: a failed fsync or an unrecoverable write
	buf     []byte
	seq     uint64 // order of decisions, for snapshots and cursors

	cidrs   [2][]*cidr // per family index
	owners  map[string]*ownerState
	nallocs int                   // addresses held, orphans included
	orphans map[netip.Addr]string // allocations outside every allocatable range
	// quarantine holds released addresses in release order from qhead on.
	quarantine []held
	qhead      int

	compactQueued  bool
	compacting     bool   // a snapshot is being written: appends also go to pending
	pending        []byte // records appended since the snapshot was taken
	pendingRecords int
	compactions    int
	compactErr     error
	compactRetryAt int   // do not compact again before this many records
	dropped        int64 // bytes of torn tail that Open cut off
}

// ownerState is what one owner holds, per family index.
type ownerState struct {
	addrs [2]netip.Addr
	since [2]int64 // Unix nanoseconds
	seq   [2]uint64
}

// held is a quarantined address.
type held struct {
	addr  netip.Addr
	owner string // the last owner, kept for snapshots and debugging
	since time.Time
	seq   uint64
	c     *cidr // nil when no CIDR's allocatable range covers addr
	off   uint32
}

// Open loads the journal in cfg.Dir (creating it when absent) and returns
// an Allocator for the node's pod CIDRs, which must be valid and must not
// overlap. It starts the goroutine that fsyncs and compacts the journal;
// Close stops it.
func Open(cfg Config, cidrs []netip.Prefix) (*Allocator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	for i, p := range cidrs {
		if err := checkCIDR(p); err != nil {
			return nil, fmt.Errorf("open pod IP allocator: %w", err)
		}
		for _, q := range cidrs[:i] {
			if p.Overlaps(q) {
				return nil, fmt.Errorf("open pod IP allocator: %w: %s and %s overlap: give each CIDR once", ErrInvalidCIDR, q, p)
			}
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("open pod IP allocator: %w", err)
	}
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("open pod IP allocator: %w", err)
	}
	a, err := open(cfg, cidrs, lock)
	if err != nil {
		_ = lock.Close() // releases the lock; nothing was written through it
		return nil, fmt.Errorf("open pod IP allocator: %w", err)
	}
	a.wg.Add(1)
	go a.run()
	a.mu.Lock()
	a.maybeCompactLocked()
	a.mu.Unlock()
	return a, nil
}

func open(cfg Config, cidrs []netip.Prefix, lock *os.File) (*Allocator, error) {
	a := &Allocator{
		cfg:     cfg,
		dir:     cfg.Dir,
		path:    filepath.Join(cfg.Dir, journalFile),
		lock:    lock,
		stop:    make(chan struct{}),
		kick:    make(chan struct{}, 1),
		clock:   cfg.Clock,
		owners:  make(map[string]*ownerState),
		orphans: make(map[netip.Addr]string),
	}
	// A compaction that a crash interrupted before its rename leaves a
	// temporary file; the journal itself is complete.
	if err := os.Remove(filepath.Join(a.dir, tempFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	data, err := os.ReadFile(a.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	st, err := parseJournal(a.path, data)
	if err != nil {
		return nil, err
	}
	for _, p := range cidrs {
		c := newCIDR(p)
		a.cidrs[c.fam] = append(a.cidrs[c.fam], c)
	}
	a.restore(st, a.clock.Now())

	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	a.f, a.size, a.records, a.dropped = f, st.validLen, st.records, st.dropped
	if err := a.repair(st); err != nil {
		_ = f.Close() // the error that matters is repair's
		return nil, err
	}
	return a, nil
}

// repair writes a new journal's header, or cuts a torn tail off, so that
// appends start after the last valid record; then it makes that durable.
func (a *Allocator) repair(st *journalState) error {
	switch {
	case st.fresh:
		if err := a.f.Truncate(0); err != nil {
			return err
		}
		if _, err := a.f.WriteString(journalHeader); err != nil {
			return err
		}
		a.size = int64(len(journalHeader))
		if err := a.f.Sync(); err != nil {
			return err
		}
		return syncDir(a.dir) // the new file's name
	case st.dropped > 0:
		if err := a.f.Truncate(st.validLen); err != nil {
			return err
		}
		return a.f.Sync()
	}
	return nil
}

// restore builds the in-memory state from a replayed journal.
func (a *Allocator) restore(st *journalState, now time.Time) {
	a.seq = uint64(st.records) + 1 // records are numbered by line
	// Each CIDR's cursor goes back to its latest live allocation, or, when
	// it has none, to its latest release.
	last := make(map[*cidr]uint64)
	mark := func(c *cidr, off uint32, seq uint64) {
		if seq >= last[c] {
			last[c], c.cursor = seq, off
		}
	}
	for addr, e := range st.allocs {
		o := a.owners[e.owner]
		if o == nil {
			o = &ownerState{}
			a.owners[e.owner] = o
		}
		fi := addrIndex(addr)
		o.addrs[fi], o.since[fi], o.seq[fi] = addr, e.time, e.seq
		a.nallocs++
		if c, off := a.findLocked(addr); c != nil {
			c.set(off)
			c.used++
			mark(c, off, e.seq)
		} else {
			a.orphans[addr] = e.owner
		}
	}
	if a.cfg.Quarantine < 0 {
		return
	}
	for _, e := range st.quarantine {
		// Count the quarantine on this boot's monotonic clock from now on;
		// a release time in the future (the wall clock stepped back) counts
		// as now.
		elapsed := max(now.Sub(time.Unix(0, e.time)), 0)
		if elapsed >= a.cfg.Quarantine {
			continue
		}
		h := held{addr: e.addr, owner: e.owner, since: now.Add(-elapsed), seq: e.seq}
		if c, off := a.findLocked(e.addr); c != nil {
			c.set(off)
			c.quarantined++
			h.c, h.off = c, off
			if c.used == 0 {
				mark(c, off, e.seq)
			}
		}
		a.quarantine = append(a.quarantine, h)
	}
	slices.SortFunc(a.quarantine, func(x, y held) int {
		return cmp.Or(x.since.Compare(y.since), cmp.Compare(x.seq, y.seq))
	})
}

// findLocked returns the CIDR whose allocatable range holds addr, and
// addr's offset in it.
func (a *Allocator) findLocked(addr netip.Addr) (*cidr, uint32) {
	for _, c := range a.cidrs[addrIndex(addr)] {
		if off, ok := c.allocatable(addr); ok {
			return c, off
		}
	}
	return nil, 0
}

// AddCIDR adds a pod CIDR that the node claimed, for example after
// Allocate returned ErrFull. Adding a CIDR the allocator already has is a
// no-op; one that overlaps another is an error. CIDRs are not recorded in
// the journal: Open is given the node's CIDRs each time.
func (a *Allocator) AddCIDR(p netip.Prefix) error {
	if err := checkCIDR(p); err != nil {
		return fmt.Errorf("add pod CIDR: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usableLocked(); err != nil {
		return fmt.Errorf("add pod CIDR %s: %w", p, err)
	}
	fi := addrIndex(p.Addr())
	for _, c := range a.cidrs[fi] {
		if c.prefix == p {
			return nil
		}
		if c.prefix.Overlaps(p) {
			return fmt.Errorf("add pod CIDR: %w: %s overlaps %s, which the allocator already has", ErrInvalidCIDR, p, c.prefix)
		}
	}
	c := newCIDR(p)
	// Adopt what the new CIDR covers, so that it is never handed out.
	for addr := range a.orphans {
		if off, ok := c.allocatable(addr); ok {
			c.set(off)
			c.used++
			delete(a.orphans, addr)
		}
	}
	for i := a.qhead; i < len(a.quarantine); i++ {
		h := &a.quarantine[i]
		if h.c != nil {
			continue
		}
		if off, ok := c.allocatable(h.addr); ok {
			c.set(off)
			c.quarantined++
			h.c, h.off = c, off
		}
	}
	a.cidrs[fi] = append(a.cidrs[fi], c)
	return nil
}

// Allocate returns an address of family f for owner: the one the owner
// already holds, or a new one. It returns an error wrapping ErrFull when
// every CIDR of the family is full. The allocation is in the journal (in
// the kernel's page cache, see the package documentation) when Allocate
// returns.
func (a *Allocator) Allocate(owner string, f ipam.Family) (netip.Addr, error) {
	fi, err := familyIndex(f)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("allocate pod IP for %q: %w", owner, err)
	}
	var want [2]bool
	want[fi] = true
	got, err := a.allocate(owner, want)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("allocate %s pod IP for %q: %w", f, owner, err)
	}
	return got[fi], nil
}

// AllocateDual returns an IPv4 and an IPv6 address for owner, like two
// calls to Allocate, but all or nothing: when either family is full,
// neither address is allocated. New allocations go into the journal in one
// write.
func (a *Allocator) AllocateDual(owner string) (v4, v6 netip.Addr, err error) {
	got, err := a.allocate(owner, [2]bool{true, true})
	if err != nil {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("allocate dual-stack pod IPs for %q: %w", owner, err)
	}
	return got[0], got[1], nil
}

func (a *Allocator) allocate(owner string, want [2]bool) ([2]netip.Addr, error) {
	var out [2]netip.Addr
	if err := checkOwner(owner); err != nil {
		return out, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usableLocked(); err != nil {
		return out, err
	}
	o := a.owners[owner]
	var (
		pick  [2]*cidr
		offs  [2]uint32
		now   time.Time
		fresh int
	)
	for fi := range 2 {
		if !want[fi] {
			continue
		}
		if o != nil && o.addrs[fi].IsValid() {
			out[fi] = o.addrs[fi] // CNI ADD retried: same owner, same address
			continue
		}
		if fresh == 0 {
			now = a.clock.Now()
			a.expireLocked(now)
		}
		c, off, err := a.pickLocked(fi)
		if err != nil {
			return [2]netip.Addr{}, err
		}
		pick[fi], offs[fi] = c, off
		fresh++
	}
	if fresh == 0 {
		return out, nil
	}
	// Write first, then change the state: a failed write allocates nothing.
	a.buf = a.buf[:0]
	for fi, c := range pick {
		if c != nil {
			out[fi] = c.addr(offs[fi])
			a.buf = appendRecord(a.buf, record{kind: kindAlloc, time: now.UnixNano(), addr: out[fi], owner: owner})
		}
	}
	if err := a.appendLocked(a.buf, fresh); err != nil {
		return [2]netip.Addr{}, err
	}
	if o == nil {
		o = &ownerState{}
		a.owners[owner] = o
	}
	for fi, c := range pick {
		if c == nil {
			continue
		}
		c.set(offs[fi])
		c.used++
		c.cursor = offs[fi]
		a.seq++
		o.addrs[fi], o.since[fi], o.seq[fi] = out[fi], now.UnixNano(), a.seq
		a.nallocs++
	}
	a.maybeCompactLocked()
	return out, nil
}

// pickLocked picks the next free address of family index fi.
func (a *Allocator) pickLocked(fi int) (*cidr, uint32, error) {
	for _, c := range a.cidrs[fi] {
		if off, ok := c.next(); ok {
			return c, off, nil
		}
	}
	if len(a.cidrs[fi]) == 0 {
		return nil, 0, fmt.Errorf("the node has no %s pod CIDR: %w", families[fi], ErrFull)
	}
	var b strings.Builder
	quarantined := 0
	for i, c := range a.cidrs[fi] {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %d allocated, %d quarantined", c.prefix, c.used, c.quarantined)
		quarantined += c.quarantined
	}
	if quarantined > 0 {
		fmt.Fprintf(&b, " (released addresses stay quarantined for %s)", a.cfg.Quarantine)
	}
	return nil, 0, fmt.Errorf("%s: %w", b.String(), ErrFull)
}

// Release releases the addresses owner holds, in every family. Releasing
// an owner that holds none is not an error (CNI DEL is idempotent). The
// addresses are quarantined for Config.Quarantine.
func (a *Allocator) Release(owner string) error {
	if err := checkOwner(owner); err != nil {
		return fmt.Errorf("release pod IPs: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usableLocked(); err != nil {
		return fmt.Errorf("release pod IPs of %q: %w", owner, err)
	}
	o := a.owners[owner]
	if o == nil {
		return nil
	}
	now := a.clock.Now()
	a.buf = a.buf[:0]
	n := 0
	for _, addr := range o.addrs {
		if addr.IsValid() {
			a.buf = appendRecord(a.buf, record{kind: kindRelease, time: now.UnixNano(), addr: addr, owner: owner})
			n++
		}
	}
	if err := a.appendLocked(a.buf, n); err != nil {
		return fmt.Errorf("release pod IPs of %q: %w", owner, err)
	}
	delete(a.owners, owner)
	for _, addr := range o.addrs {
		if addr.IsValid() {
			a.seq++
			a.freeLocked(addr, owner, now, a.seq)
		}
	}
	a.maybeCompactLocked()
	return nil
}

// freeLocked takes addr out of the allocated state, into the quarantine.
func (a *Allocator) freeLocked(addr netip.Addr, owner string, now time.Time, seq uint64) {
	a.nallocs--
	var c *cidr
	var off uint32
	if _, ok := a.orphans[addr]; ok {
		delete(a.orphans, addr)
	} else {
		c, off = a.findLocked(addr)
		c.used--
	}
	if a.cfg.Quarantine < 0 {
		if c != nil {
			c.clear(off)
		}
		return
	}
	if c != nil {
		c.quarantined++
	}
	a.quarantine = append(a.quarantine, held{addr: addr, owner: owner, since: now, seq: seq, c: c, off: off})
}

// expireLocked ends the quarantines that have lasted long enough.
func (a *Allocator) expireLocked(now time.Time) {
	for a.qhead < len(a.quarantine) {
		h := &a.quarantine[a.qhead]
		if now.Sub(h.since) < a.cfg.Quarantine {
			break
		}
		if h.c != nil {
			h.c.clear(h.off)
			h.c.quarantined--
		}
		*h = held{}
		a.qhead++
	}
	switch {
	case a.qhead == len(a.quarantine):
		a.quarantine, a.qhead = a.quarantine[:0], 0
	case a.qhead >= 1024 && 2*a.qhead >= len(a.quarantine):
		n := copy(a.quarantine, a.quarantine[a.qhead:])
		clear(a.quarantine[n:])
		a.quarantine, a.qhead = a.quarantine[:n], 0
	}
}

// appendLocked appends records to the journal in one write(2). After a
// failed write it cuts the file back to its last record, so that the next
// record does not follow a partial one.
func (a *Allocator) appendLocked(b []byte, records int) error {
	n, err := a.f.Write(b)
	if err != nil {
		if n > 0 {
			if terr := a.f.Truncate(a.size); terr != nil {
				a.err = fmt.Errorf("journal %s holds a partial record that could not be cut off (%w): restart the agent", a.path, terr)
			}
		}
		return fmt.Errorf("write journal %s: %w", a.path, err)
	}
	a.size += int64(n)
	a.records += records
	a.dirty = true
	if a.compacting {
		a.pending = append(a.pending, b...)
		a.pendingRecords += records
	}
	return nil
}

func (a *Allocator) usableLocked() error {
	if a.closed {
		return ErrClosed
	}
	return a.err
}

// Close stops the background goroutine, fsyncs and closes the journal and
// releases the state directory. It is idempotent; calls that change state
// fail with ErrClosed afterwards, Lookup, Allocations and Stats still
// answer.
func (a *Allocator) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()

	close(a.stop)
	a.wg.Wait()

	a.mu.Lock()
	defer a.mu.Unlock()
	errs := []error{a.err}
	if a.dirty {
		if err := a.f.Sync(); err != nil {
			errs = append(errs, fmt.Errorf("fsync journal %s: %w", a.path, err))
		}
		a.dirty = false
	}
	if err := a.f.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close journal %s: %w", a.path, err))
	}
	if err := a.lock.Close(); err != nil {
		errs = append(errs, fmt.Errorf("unlock %s: %w", a.dir, err))
	}
	return errors.Join(errs...)
}
