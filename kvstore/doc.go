// Package kvstore is meshplane's etcd layer: the only package (with its
// subpackages) that imports the etcd client.
//
// It provides:
//
//   - Client: a connection to etcd (endpoints, TLS, user and password,
//     dial timeout). Endpoints are required: a config without them is an
//     ErrConfig error telling the operator to pass --etcd-endpoints, never
//     a private etcd started on the quiet. The one-machine etcd (meshctl
//     --etcd-embedded, the demo, the lab, tests) is package
//     kvstore/embedded, which the daemons do not link. New proves that etcd answers within the dial timeout and
//     turns failures into errors that wrap ErrUnavailable, ErrAuth or
//     ErrConfig and say what to check. Before the etcd client dials, New
//     connects to each endpoint once itself (preflight), so that what no
//     retry fixes is reported at once: nothing listening, a failed TLS
//     handshake (told apart by the crypto/tls and crypto/x509 error types),
//     http:// to an etcd that speaks TLS and https:// to one that does not.
//     Without a user it reads one key, as etcdctl endpoint health does, so
//     an etcd with auth on says so. A password (Password, PasswordFile, or
//     one inside an endpoint URL, which Validate refuses) never appears in
//     an error or in Config.String (RedactEndpoint).
//   - Session: one lease per agent with keepalive. Keys the agent owns ride
//     on it; when the lease is lost, a new one is granted and every owned
//     key is written again, in transactions of up to 128 puts. Under the
//     prefixes it guards, an owned key that someone else changes, deletes
//     or re-puts without the lease is written back, with a per-key backoff.
//   - Cache: a typed mirror of a prefix: list, then watch from the list's
//     revision; after a compaction, list again and hand handlers only the
//     difference. Handlers run on their own goroutines behind coalescing
//     queues, so they never block the watch. A value the decoder rejects
//     never removes or replaces a valid one: the last good value stays in
//     force and the key is listed by Cache.Invalid until it is fixed or
//     deleted; keys that were never valid reach handlers that implement
//     InvalidHandler, so that they can fail closed.
//   - Session.Txn: a transaction built on the session's current lease
//     (LeaseTxn), rebuilt on the new lease when etcd says the lease is
//     gone, whose owned keys the session records on success; the
//     allocators use it instead of the raw client and the session's
//     bookkeeping hooks.
//   - Store: a typed view of a prefix through a Codec (Decode, Encode,
//     Key; CheckKey makes a decoder refuse a value that its key does not
//     name). PutAll and Txn are one transaction, all or nothing, of at
//     most MaxTxnOps operations (ErrTooManyOps); List returns undecodable
//     values with Item.Err set. PolicyStore and ServiceStore (and their
//     codecs) are the stores of the models kvstore writes.
//   - Create, Swap, DeleteIf: compare-and-create and compare-and-swap
//     transactions; a lost race is ErrConflict with the stored value.
//   - WithCondition: a precondition checked in a write's own transaction
//     (ErrConditionFailed when false, nothing written); a leader fences its
//     writes with Leadership.Condition.
//   - Campaign: leader election on etcd's concurrency.Election with a lease
//     of its own (DefaultElectionTTL). The Leadership's Done and Context end
//     as soon as the office is lost; Resign hands it over; Leader reads who
//     holds it.
//   - EnsureCluster, GetCluster: the cluster record (package cluster: the
//     cluster's name and ID), created once by whoever comes first in a
//     create-if-absent transaction and compared by everybody else; a
//     record that disagrees with the caller's name or ID is a
//     *cluster.MismatchError, and nothing is written.
//   - Keys: the etcd key layout, in one place.
//
// # Keys
//
// Everything of a cluster lives under /meshplane/v1/<cluster>/:
//
//	cluster                         cluster record (JSON) created by the first of meshctl, the control plane, an agent (EnsureCluster); no lease; never rewritten
//	identities/id/<id>              canonical label set   written by the allocating agent; no lease; deleted only by identity GC
//	identities/labels/<hash>        <id>                  written with the id key in the same transaction; no lease
//	identities/refs/<hash>/<node>   "" (empty)            written by each node that uses the label set; on that node's session lease
//	policies/<namespace>/<name>     policy (JSON)         written by meshctl policy apply (or the control plane); no lease; durable until deleted
//	leader/<name>/<lease>           candidate's value     written by each election candidate (Campaign); on the candidate's own election lease
//
// Keys (keys.go) has the full layout; docs/kvstore.md is the operator's
// copy of it.
//
// # Goroutines
//
// A Leadership owns one goroutine (it watches the leader key and the
// lease) besides etcd's session keepalive; Resign stops both, and a loss
// stops them on its own. A Session owns one goroutine (grant, re-assert, keepalive) and, with
// guarded prefixes, one watch goroutine per prefix and one repairer, all
// stopped by Close and Detach. A Cache's Run owns its watch goroutine and one delivery goroutine
// per handler, and returns after all of them exit. The package never logs:
// state comes back through return values, Stats and callbacks.
package kvstore
