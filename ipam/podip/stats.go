package podip

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Allocation is an address held by an owner.
type Allocation struct {
	Owner string
	Addr  netip.Addr
	Since time.Time // when it was allocated
}

// Stats describes the allocator's state.
type Stats struct {
	CIDRs []CIDRStats
	// Owners is the number of owners holding addresses; Allocated the
	// number of addresses they hold, orphans included.
	Owners, Allocated int
	// Orphans are allocations from the journal that no CIDR's allocatable
	// range covers (the node's CIDRs changed, or the address is reserved
	// in a CIDR given now). They stay allocated until released, are never
	// handed out to another owner, and are adopted by AddCIDR when a new
	// CIDR covers them.
	Orphans []Allocation
	Journal JournalStats
}

// CIDRStats describes one pod CIDR.
type CIDRStats struct {
	CIDR    netip.Prefix
	Gateway netip.Addr
	// Size is the number of addresses the allocator manages: the CIDR's,
	// capped at MaxRange. Size = Reserved + Used + Quarantined + Free.
	Size, Reserved, Used, Quarantined, Free int
}

// JournalStats describes the journal.
type JournalStats struct {
	Path    string
	Bytes   int64
	Records int // after the header
	// Compactions counts compactions since Open; CompactError is the
	// last one's error, if it failed (compaction is retried later; the
	// journal stays correct, only larger).
	Compactions  int
	CompactError error
	// DroppedBytes is the size of the torn tail Open dropped: the end of
	// records that a crash interrupted before their write(2) returned.
	DroppedBytes int64
	// Err is the error that stopped the allocator, if any (a failed fsync:
	// the page cache may have lost records, so the allocator refuses to
	// change state until the agent restarts and re-reads the journal).
	Err error
}

// Lookup returns the addresses owner holds, IPv4 first, or nil.
func (a *Allocator) Lookup(owner string) []netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	o := a.owners[owner]
	if o == nil {
		return nil
	}
	var out []netip.Addr
	for _, addr := range o.addrs {
		if addr.IsValid() {
			out = append(out, addr)
		}
	}
	return out
}

// Allocations returns every allocation, sorted by owner and address, for
// a reconcile against the pods that exist (the journal keeps owners for
// this) and for inspection.
func (a *Allocator) Allocations() []Allocation {
	a.mu.Lock()
	out := make([]Allocation, 0, a.nallocs)
	for owner, o := range a.owners {
		for fi, addr := range o.addrs {
			if addr.IsValid() {
				out = append(out, Allocation{Owner: owner, Addr: addr, Since: time.Unix(0, o.since[fi])})
			}
		}
	}
	a.mu.Unlock()
	sortAllocations(out)
	return out
}

func sortAllocations(s []Allocation) {
	slices.SortFunc(s, func(x, y Allocation) int {
		return cmp.Or(strings.Compare(x.Owner, y.Owner), x.Addr.Compare(y.Addr))
	})
}

// Stats returns a snapshot of the allocator's state.
func (a *Allocator) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expireLocked(a.clock.Now())
	s := Stats{
		Owners:    len(a.owners),
		Allocated: a.nallocs,
		Journal: JournalStats{
			Path:         a.path,
			Bytes:        a.size,
			Records:      a.records,
			Compactions:  a.compactions,
			CompactError: a.compactErr,
			DroppedBytes: a.dropped,
			Err:          a.err,
		},
	}
	for _, cs := range a.cidrs {
		for _, c := range cs {
			s.CIDRs = append(s.CIDRs, CIDRStats{
				CIDR: c.prefix, Gateway: Gateway(c.prefix),
				Size: int(c.n), Reserved: c.reserved, Used: c.used, Quarantined: c.quarantined, Free: c.free(),
			})
		}
	}
	for addr, owner := range a.orphans {
		o := a.owners[owner]
		s.Orphans = append(s.Orphans, Allocation{Owner: owner, Addr: addr, Since: time.Unix(0, o.since[addrIndex(addr)])})
	}
	sortAllocations(s.Orphans)
	return s
}
