package podip

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// compactMinRecords is the smallest journal that is compacted: below it a
// compaction's two fsyncs cost more than the bytes they save.
const compactMinRecords = 8192

// run is the background goroutine: it fsyncs the journal every
// SyncInterval when records were written (group commit) and compacts it
// when asked. It is the only goroutine that fsyncs or replaces the journal
// until Close, which waits for it to return.
func (a *Allocator) run() {
	defer a.wg.Done()
	tick := time.NewTicker(a.cfg.SyncInterval)
	defer tick.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-tick.C:
			a.syncJournal()
		case <-a.kick:
			a.compact()
		}
	}
}

// syncJournal fsyncs the journal if records were written since the last
// fsync. The fsync runs without the lock, so allocations go on meanwhile;
// a record written during the fsync marks the journal dirty again.
func (a *Allocator) syncJournal() {
	a.mu.Lock()
	if !a.dirty || a.err != nil {
		a.mu.Unlock()
		return
	}
	f := a.f
	a.dirty = false
	a.mu.Unlock()
	if err := f.Sync(); err != nil {
		a.fail(fmt.Errorf("fsync journal %s: %w: records may not survive a power loss; restart the agent", a.path, err))
	}
}

// fail makes err sticky: state changes fail with it from now on. After a
// failed fsync Linux may have dropped the dirty pages, so only re-reading
// the journal (a restart) tells what it holds.
func (a *Allocator) fail(err error) {
	a.mu.Lock()
	if a.err == nil {
		a.err = err
	}
	a.mu.Unlock()
}

// compactDueLocked reports whether the journal holds more than four
// records per live entry (allocation or quarantined address).
func (a *Allocator) compactDueLocked() bool {
	live := a.nallocs + len(a.quarantine) - a.qhead
	return !a.compacting && a.records > compactMinRecords && a.records > 4*live && a.records >= a.compactRetryAt
}

// maybeCompactLocked asks the background goroutine to compact when due.
func (a *Allocator) maybeCompactLocked() {
	if a.compactQueued || !a.compactDueLocked() {
		return
	}
	a.compactQueued = true
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// snapRecord is a record of a snapshot with its place in decision order.
type snapRecord struct {
	seq uint64
	r   record
}

// compact replaces the journal with a snapshot of the live state:
//
//  1. under the lock, copy the live state (allocations and quarantined
//     addresses) and start copying every appended record to pending;
//  2. without the lock, write the snapshot to podip.journal.tmp and fsync
//     it;
//  3. under the lock, append pending to the temporary file, rename it over
//     the journal and append to it from now on;
//  4. fsync the directory, then the new journal.
//
// A crash before the rename leaves the old journal, complete, and a
// temporary file that Open removes; after it, the new journal holds
// everything. On a power loss, the rename and pending are as durable as
// any record not yet fsynced; what was fsynced before step 1 is in the
// fsynced snapshot. No fsync of the journal happens between steps 1 and 4
// (this goroutine does them all), so a record counts as durable only after
// step 4.
func (a *Allocator) compact() {
	a.mu.Lock()
	a.compactQueued = false
	if a.closed || a.err != nil || !a.compactDueLocked() {
		a.mu.Unlock()
		return
	}
	a.expireLocked(a.clock.Now())
	snap := a.snapshotLocked()
	a.compacting = true
	a.pending, a.pendingRecords = a.pending[:0], 0
	a.mu.Unlock()

	tmp, size, err := a.writeSnapshot(snap)

	a.mu.Lock()
	if err == nil {
		err = a.swapLocked(tmp, size, len(snap))
	}
	a.compacting = false
	if cap(a.pending) > 1<<20 {
		a.pending = nil
	}
	if err != nil {
		a.compactErr = fmt.Errorf("compact journal %s: %w", a.path, err)
		a.compactRetryAt = a.records + compactMinRecords
		a.mu.Unlock()
		if tmp != nil {
			_ = tmp.Close() // the error that matters is err
			_ = os.Remove(tmp.Name())
		}
		return
	}
	a.compactErr = nil
	a.compactions++
	a.mu.Unlock()

	if err := syncDir(a.dir); err != nil {
		a.fail(fmt.Errorf("compact journal %s: fsync directory: %w: restart the agent", a.path, err))
		return
	}
	a.syncJournal()
}

// snapshotLocked copies the live state as records.
func (a *Allocator) snapshotLocked() []snapRecord {
	snap := make([]snapRecord, 0, a.nallocs+len(a.quarantine)-a.qhead)
	for owner, o := range a.owners {
		for fi, addr := range o.addrs {
			if addr.IsValid() {
				snap = append(snap, snapRecord{o.seq[fi], record{kind: kindAlloc, time: o.since[fi], addr: addr, owner: owner}})
			}
		}
	}
	for _, h := range a.quarantine[a.qhead:] {
		snap = append(snap, snapRecord{h.seq, record{kind: kindQuarantine, time: h.since.UnixNano(), addr: h.addr, owner: h.owner}})
	}
	return snap
}

// writeSnapshot writes a new journal to the temporary file, in decision
// order (which Open uses to put the cursors back), and fsyncs it. It
// returns the open file, for appends, and its size.
func (a *Allocator) writeSnapshot(snap []snapRecord) (*os.File, int64, error) {
	slices.SortFunc(snap, func(x, y snapRecord) int { return cmp.Compare(x.seq, y.seq) })
	f, err := os.OpenFile(filepath.Join(a.dir, tempFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, 0, err
	}
	buf := make([]byte, 0, 256<<10)
	buf = append(buf, journalHeader...)
	size := int64(0)
	for i, s := range snap {
		buf = appendRecord(buf, s.r)
		if len(buf) > 240<<10 || i == len(snap)-1 {
			n, err := f.Write(buf)
			size += int64(n)
			if err != nil {
				return f, 0, err
			}
			buf = buf[:0]
		}
	}
	if len(snap) == 0 {
		n, err := f.Write(buf)
		size += int64(n)
		if err != nil {
			return f, 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return f, 0, err
	}
	return f, size, nil
}

// swapLocked completes the temporary file with the records appended since
// the snapshot and renames it over the journal.
func (a *Allocator) swapLocked(tmp *os.File, size int64, records int) error {
	if len(a.pending) > 0 {
		if _, err := tmp.Write(a.pending); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp.Name(), a.path); err != nil {
		return err
	}
	old := a.f
	a.f = tmp
	a.size = size + int64(len(a.pending))
	a.records = records + a.pendingRecords
	a.dirty = true
	// The old file is unlinked and everything in it is in the new one;
	// an error closing it changes nothing.
	_ = old.Close()
	return nil
}

// syncDir fsyncs a directory, making creations and renames in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// lockDir takes an exclusive flock(2) on Dir/podip.lock, so that two
// allocators never append to one journal (they would hand out the same
// addresses). The kernel releases it when the process dies, however it
// dies; closing the file releases it too.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close() // the lock error is the one to report
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is locked by another allocator: is another agent running on this node?", ErrLocked, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}
