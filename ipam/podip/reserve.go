package podip

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// ErrInvalidAddr is wrapped by Reserve's errors about the address itself.
var ErrInvalidAddr = errors.New("invalid pod IP")

// ErrConflict is wrapped by a *ConflictError.
var ErrConflict = errors.New("pod IP conflict")

// ConflictError is Reserve's answer when the allocator's state contradicts
// the reservation. Nothing was changed: the address stays with whoever
// holds it.
type ConflictError struct {
	Addr  netip.Addr // the address Reserve was asked for
	Owner string     // the owner Reserve was asked for
	// Holder is the owner that holds Addr. When Holder is Owner itself,
	// Addr is held by nobody, but Owner holds Held, another address of
	// Addr's family, and an owner holds at most one address per family.
	Holder string
	Held   netip.Addr
}

func (e *ConflictError) Error() string {
	if e.Holder == e.Owner {
		return fmt.Sprintf("%s: %q holds %s, not %s", ErrConflict, e.Owner, e.Held, e.Addr)
	}
	return fmt.Sprintf("%s: %s is held by %q, not %q", ErrConflict, e.Addr, e.Holder, e.Owner)
}

func (e *ConflictError) Unwrap() error { return ErrConflict }

// Reserve records that owner holds addr: an allocation made before that
// the journal does not have, because its record was lost (a power loss
// takes the records younger than the last fsync) or the journal was moved
// away. The agent calls it on start for every address its other records
// (endpoint state files, its entries in etcd) give a pod, before it hands
// out any address; see the package documentation.
//
// Reserve is journaled like an allocation (it is in the kernel's page
// cache when Reserve returns) and is a no-op when owner already holds
// addr. An address in quarantine is taken out of it; an address that no
// CIDR's allocatable range covers becomes an orphan (see Stats.Orphans),
// held all the same. When another owner holds addr, or owner holds another
// address of addr's family, Reserve changes nothing and returns a
// *ConflictError: the caller reports it, and must never resolve it by
// handing the address to a second owner.
func (a *Allocator) Reserve(owner string, addr netip.Addr) error {
	if err := checkOwner(owner); err != nil {
		return fmt.Errorf("reserve pod IP: %w", err)
	}
	if !addr.IsValid() || addr.Zone() != "" || addr.Is4In6() || addr.IsUnspecified() {
		return fmt.Errorf("reserve pod IP for %q: %w: %v: give a unicast address without zone, IPv4 in IPv4 form", owner, ErrInvalidAddr, addr)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usableLocked(); err != nil {
		return fmt.Errorf("reserve pod IP %s for %q: %w", addr, owner, err)
	}
	fi := addrIndex(addr)
	o := a.owners[owner]
	if o != nil && o.addrs[fi] == addr {
		return nil
	}
	now := a.clock.Now()
	a.expireLocked(now)
	c, off := a.findLocked(addr)
	q := a.quarantinedLocked(addr)
	if holder, ok := a.holderLocked(addr, c, off, q); ok {
		return &ConflictError{Addr: addr, Owner: owner, Holder: holder, Held: addr}
	}
	if o != nil && o.addrs[fi].IsValid() {
		return &ConflictError{Addr: addr, Owner: owner, Holder: owner, Held: o.addrs[fi]}
	}
	// Write first, then change the state: a failed write reserves nothing.
	a.buf = appendRecord(a.buf[:0], record{kind: kindAlloc, time: now.UnixNano(), addr: addr, owner: owner})
	if err := a.appendLocked(a.buf, 1); err != nil {
		return fmt.Errorf("reserve pod IP %s for %q: %w", addr, owner, err)
	}
	if q >= 0 {
		if h := a.quarantine[q]; h.c != nil {
			h.c.quarantined--
		}
		a.quarantine = slices.Delete(a.quarantine, q, q+1)
	}
	if c != nil {
		c.set(off)
		c.used++
	} else {
		a.orphans[addr] = owner
	}
	if o == nil {
		o = &ownerState{}
		a.owners[owner] = o
	}
	a.seq++
	o.addrs[fi], o.since[fi], o.seq[fi] = addr, now.UnixNano(), a.seq
	a.nallocs++
	a.maybeCompactLocked()
	return nil
}

// quarantinedLocked returns addr's index in the quarantine, or -1. It
// scans the quarantine: Reserve is for the agent's start, not per pod.
func (a *Allocator) quarantinedLocked(addr netip.Addr) int {
	for i := a.qhead; i < len(a.quarantine); i++ {
		if a.quarantine[i].addr == addr {
			return i
		}
	}
	return -1
}

// holderLocked returns the owner that holds addr, if any; c and off are
// where addr lies (nil when outside every allocatable range), q its index
// in the quarantine.
func (a *Allocator) holderLocked(addr netip.Addr, c *cidr, off uint32, q int) (string, bool) {
	if c == nil {
		owner, ok := a.orphans[addr]
		return owner, ok
	}
	if !c.isSet(off) || q >= 0 {
		return "", false
	}
	// Allocated: find the owner. This walks every owner, but only for an
	// address held by someone else, which is a conflict.
	fi := addrIndex(addr)
	for owner, o := range a.owners {
		if o.addrs[fi] == addr {
			return owner, true
		}
	}
	return "", false // not reached: a set bit that is neither reserved nor quarantined is allocated
}
