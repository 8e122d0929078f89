// Package podip hands out pod IPs on a node, from the node's pod CIDRs,
// with no etcd round trip per pod, and keeps them across an agent crash.
//
// The node's CIDRs (IPv4, IPv6 or both) are claimed in etcd by
// kvstore/nodecidr; the agent passes them to Open and, when Allocate
// returns ErrFull, claims another and passes it to AddCIDR. CIDRs are not
// stored here: they are given again on every Open. An allocation has an
// owner (the CNI arguments, such as "namespace/pod/containerID"), so CNI
// ADD and DEL are idempotent: the same owner gets the same address back,
// and releasing an owner that holds nothing is not an error.
//
// # Invariants
//
//   - An address is held by at most one owner, and an owner holds at most
//     one address per family. This holds across crashes: see below.
//   - Never handed out: a CIDR's network address (for IPv6 also the
//     subnet-router anycast address), its gateway (the first address after
//     it, see Gateway) and, for IPv4, its broadcast address.
//   - A CIDR must be at most /29 (IPv4) or /125 (IPv6), the limits
//     package ipam sets for node CIDRs: anything smaller leaves too few
//     addresses for pods once three are reserved.
//   - Only the first MaxRange (65,536) addresses of a CIDR are handed out,
//     so the bitmap stays at 8 KiB whatever the size (an IPv6 /64 is
//     common). This applies to IPv4 CIDRs larger than /16 too.
//   - A released address is quarantined for Config.Quarantine (30s by
//     default), counted from the release time in the journal, so a restart
//     does not shorten it. Besides, allocation takes the first free address
//     after the one allocated last (round robin), so a freed address is
//     the last to come back even without a quarantine.
//   - An allocation from the journal that no current CIDR covers (the
//     node's CIDRs changed), or that falls on an address reserved in a
//     current CIDR, is an orphan: still held by its owner, returned by
//     Lookup and Allocate for that owner, listed in Stats.Orphans, never
//     handed out to anyone else, adopted by AddCIDR when a new CIDR covers
//     it, and gone only when its owner releases it.
//
// # The journal
//
// State lives in Config.Dir: podip.journal (0600; the directory is made
// 0700), and podip.lock, on which Open takes an exclusive flock(2), so
// that two allocators, in one process or two, never share a journal. The
// journal is text, one record per line, after a header line "meshplane
// podip journal v1":
//
//	<crc> <kind> <time> <addr> <owner>
//
// where crc is the CRC-32C of the rest of the line in 8 lowercase hex
// digits, time is in Unix nanoseconds, addr is in canonical form, and the
// owner runs to the end of the line (owners may hold spaces, but no control
// characters, and are at most MaxOwnerLen bytes). Kinds:
//
//	A  owner was given addr at time
//	R  owner released addr at time (its quarantine starts then)
//	Q  addr, last held by owner, is quarantined since time (compacted journals)
//
// Open replays the records and checks each against the state before it:
// an address allocated twice, a second address of one family for one
// owner, or a release by an owner that does not hold the address make the
// journal corrupt.
//
// # Crash safety without an fsync per pod
//
// Every Allocate, AllocateDual and Release that changes state appends its
// records with a single write(2) before it changes the in-memory state and
// before it returns, under the allocator's lock, so the order of the
// records is the order of the decisions. It does not fsync. A background
// goroutine fsyncs every SyncInterval (100ms by default) if anything was
// written: one fsync covers every record of that interval (group commit).
//
//   - Process crash (kill -9, a panic, the OOM killer). A write(2) that
//     returned has put the record into the kernel's page cache, which
//     belongs to the kernel, not the process: the file holds the record
//     whatever happens to the process, and the restarted agent reads it
//     back. An address an owner was told about is therefore never handed
//     out again. A write cut short by the kill (Linux checks for a fatal
//     signal between pages of a write) leaves a torn last record; its
//     call never returned, nobody uses its address, and Open drops it.
//   - Power loss or kernel crash. Records younger than the last fsync may be
//     lost: at most SyncInterval of them, plus the duration of a compaction
//     in progress (see below). The journal alone cannot make that safe: the
//     caller's other records of the same pods (the agent's endpoint state
//     files, fsynced at once, and its entries in etcd) survive, and the
//     agent restores those pods with their addresses, which a journal that
//     lost their records would hand out again. See "The journal is not the
//     only record" below.
//
// A torn tail is told apart from corruption by the checksum: after the
// last valid record, lines whose checksum fails (a record cut short, a
// missing newline, zeros a file system left in unwritten blocks after a
// power loss) are dropped, counted in Stats.Journal.DroppedBytes, and cut
// off the file before anything is appended. A line whose checksum fails but
// which is followed by a valid line is damage in the middle, and a line
// whose checksum holds but whose content is wrong was written that way: in
// both cases Open fails with a *CorruptJournalError that names the file,
// the line and its byte offset. Open never guesses which addresses are in
// use; its error tells the operator to move the file away and restart the
// agent, which opens an empty journal and rebuilds the allocations from
// its other records with Reserve (below). (A file system that, after a
// power loss, left zeros in unsynced blocks followed by blocks it did
// write would also be reported this way; file systems such as ext4 write
// an append-only file back in order, so this is not expected.)
//
// # The journal is not the only record
//
// Records can be lost (a power loss, a dropped torn tail, a journal moved
// away), so a caller that keeps other records of who holds which address
// must give them back to the allocator after Open and before it hands out
// anything: Reserve(owner, addr) for each. Reserve is journaled like an
// allocation and is a no-op when the owner holds the address already; it
// takes an address out of quarantine, makes one that no CIDR covers an
// orphan, and changes nothing, returning a *ConflictError, when another
// owner holds the address or the owner holds another of its family. The
// agent does this on every start (nodeagent/reconcile_ips.go), from its
// endpoint state files and its entries in etcd. Together, Open and these
// reserves guarantee that an address any surviving record gives an owner
// is never handed to another: an acknowledged allocation is never given to
// anyone else, whatever happened to the journal. Conflicts are the
// caller's to report; the allocator never resolves one by handing out an
// address twice. Allocations that no other record references (an owner
// whose pod's records a crash cut short) stay held; releasing them is the
// caller's garbage collection.
//
// A write error (a full disk) allocates nothing: the partial record, if
// any, is cut off and the call fails. An fsync error is sticky: Linux may
// have dropped the unwritten pages, so the allocator refuses to change
// state (Stats.Journal.Err says why) until the agent restarts and reads
// the journal again.
//
// # Compaction
//
// When the journal holds more than 4 records per live entry (an allocation
// or a quarantined address) and more than 8,192 records, the background
// goroutine replaces it with a snapshot of the live state, without holding
// the lock while it writes or fsyncs:
//
//  1. under the lock: copy the live state; from now on appends are also
//     kept in memory (pending);
//  2. write the snapshot to podip.journal.tmp, in decision order, and fsync
//     it;
//  3. under the lock: append pending to it, rename it over podip.journal,
//     and append to it from now on;
//  4. fsync the directory, then the new journal.
//
// A crash before the rename leaves the old journal, complete, and a
// temporary file that Open removes. After the rename the new journal holds
// every record. On a power loss: what was fsynced before step 1 is in the
// fsynced snapshot; the rename and pending are as durable as records
// waiting for their group commit, since no fsync of the journal happens
// between steps 1 and 4. A failed compaction leaves the old journal in use
// and is retried after 8,192 more records (Stats.Journal.CompactError).
//
// # Goroutines
//
// Open starts one goroutine, which owns the fsyncs (group commit) and the
// compactions, so the two never overlap and the journal file it swaps is
// never in use by another fsync. Close stops it and waits for it (a
// compaction in progress finishes), then fsyncs and closes the journal and
// releases the lock. All methods are safe for concurrent use; one mutex
// guards the state, held for the bitmap search, the formatting of a record
// and its write(2) (about 1µs), and by a compaction while it copies the live
// state, but never for an fsync (except Close's last one, when nothing can
// change state any more).
//
// # Performance
//
// On a 2-core VM with the journal on ext4, BenchmarkAllocate hands out
// about 300,000 addresses a second with a release per allocation and 30,000
// addresses in quarantine, p99 about 4µs; Open reads a journal of 50,000
// allocations (3 MB) in about 60ms.
package podip
