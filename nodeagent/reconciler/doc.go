// Package reconciler mirrors desired state into kernel maps: the agent's
// watch caches write a Table, and a Reconciler makes a Target (a pinned
// eBPF map, bpf.Map) equal to it, writing only the difference.
//
// Reconcilers are level-triggered. They do not replay events; they compare
// what the table wants with what the map holds and write what differs.
// A key changed ten times between two rounds is written once, with its
// last value; a key changed and changed back is not written at all.
//
// # Algorithm
//
// The Table keeps the desired entries and, once ready, the set of keys
// changed since the Reconciler last looked (each with its latest state).
// A writer that makes that set non-empty wakes the Reconciler through a
// 1-buffered channel, without blocking.
//
// The Reconciler keeps a shadow of the map: what it read at the last
// full compare, kept up to date by its own writes. It runs:
//
//  1. Wait for Table.MarkReady. Until then it reads and writes nothing.
//  2. Full compare: read the whole map into the shadow (Target.Iterate),
//     copy the table, and write the difference: all puts (missing or
//     different entries) first, then all deletes (entries the table does
//     not hold). Synced is closed once this has gone through.
//  3. On each wake: take the changed keys, compare each with the shadow,
//     skip those that match, and write the rest, puts first, in batches
//     of Config.BatchSize.
//  4. Every Config.PruneInterval: the full compare again, which repairs
//     drift (entries that something else wrote, changed or deleted).
//
// A failed call stops that kind of write for the round; its keys and the
// ones not yet tried go to a retry set, written again after a pause that
// doubles from Config.RetryMin to Config.RetryMax (jittered) and starts
// over after a retry succeeds. Fresh changes are not held behind the
// pause: a key changed again leaves the retry set and is written in the
// next round. Deletes run even after failed puts, so a full map gets room
// back; what fitted stays written. Every failure is counted in Status,
// with the last error's text, and reported to Config.Observer. If the map
// cannot be read, nothing is written until a full compare succeeds.
//
// # Invariants
//
//   - Nothing is written, and above all nothing deleted, before
//     MarkReady. After an agent restart the pinned map still holds
//     entries the tables have not loaded yet; they keep serving traffic.
//   - The map is never flushed. A key the table wants is never deleted,
//     and within a round every put precedes every delete, so no desired
//     entry present in the map is missing from it at any moment of a
//     resync, and an LPM lookup never falls through to a less specific
//     prefix that is about to go.
//   - A resync of a map that already equals the table writes nothing.
//   - When etcd is unreachable the watch caches keep their content, the
//     tables do not change, and the map keeps its last state.
//   - A Table feeds one Reconciler (New enforces it): its set of changed
//     keys can be handed out only once.
//
// # Knowing a change is installed
//
// Table.Seq counts the table's changes; Status.Applied is the Seq up to
// which every change is in the Target (it advances after a round that
// left nothing to retry). A writer that must know when its change is in
// the kernel (the agent publishing which policy revision it enforces)
// reads Seq after the change and waits until Applied reaches it.
//
// # Goroutines
//
// The package starts no goroutine. Reconciler.Run runs on its caller's
// goroutine, which owns the shadow, the retry set and every call to the
// Target, and returns when its context ends. Table methods are safe from
// any number of goroutines; their lock is held for a few map operations,
// or by the Reconciler to swap out the changed keys (constant time) and,
// at each full compare, to copy the table (about a millisecond for
// 100,000 entries). Status and Synced are safe from any goroutine. The
// Observer is called from Run's goroutine.
//
// The package never logs: state comes back through Status and the
// Observer.
package reconciler
