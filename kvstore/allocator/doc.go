// Package allocator allocates security identities in etcd: a 24-bit number
// (see package identity) per canonical label set (see package labels).
//
// # Algorithm
//
// An Allocator serves one node. A label set the node already references is
// answered from memory (about 250ns, no etcd round trip). A new one joins a
// queue; one batcher goroutine commits everything queued while the previous
// transaction was in flight as one etcd transaction (a group commit), with a
// nested transaction per label set:
//
//	if labels/<hash> and id/<candidate> are both absent:
//	    create id/<candidate>, labels/<hash> and refs/<hash>/<node> (on the lease)
//	else if labels/<hash> exists:          -- another node won the race
//	    put refs/<hash>/<node> (on the lease) and read labels/<hash>
//	else:                                  -- the candidate ID is taken
//	    read id/<candidate>; retry with another candidate
//
// So a new label set costs one round trip whether the node wins or loses the
// race, no locks are taken, and when hundreds of nodes race for the same
// labels, etcd's serial transactions let exactly one create it. References
// are keyed by the label hash rather than the ID for this reason: the loser
// writes its reference before it knows the winner's ID. Candidates are
// picked at random among IDs absent from the local cache, so racing nodes
// rarely collide.
//
// # Invariants
//
//   - An ID key and its index key are created and deleted together.
//   - A node's reference exists while it holds the label set and its lease
//     lives; a dead node's references go with its lease, and the session
//     re-writes them after a lease loss.
//   - GC deletes an identity only in a transaction that checks that no
//     reference key exists and that neither key changed since it was seen
//     unreferenced, GracePeriod earlier. A referenced ID is never deleted.
//   - If a held identity is deleted anyway (the node's lease was lost and GC
//     ran before the references were re-written), the allocator re-creates
//     it, with the same ID when that is still free. Callers are not told
//     when the ID had to change (a known gap, see docs/kvstore.md).
//
// # Goroutines
//
// Run owns the identity watch cache and the batcher and returns after both
// exit. Allocate, AllocateBatch and Release are safe for concurrent use.
// GC is for one goroutine: one collector per cluster.
package allocator
