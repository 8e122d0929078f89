// Package labels is the security-label model: the labels that describe a
// workload, the canonical label set a security identity is allocated for,
// and the filter that drops labels which do not describe the workload. It
// is pure code: no I/O, no goroutines, no logging.
//
// # Labels
//
// A Label has a source (who asserted it: k8s, container, reserved, ...), a
// key and a value. Its text form is
//
//	<source>:<key>=<value>    k8s:app=web, k8s:app.kubernetes.io/name=web
//	<source>:<key>            reserved:host (empty value)
//
// Parse splits at the first ':' (end of the source) and the first '=' (end
// of the key); "k8s:app=" is read as an empty value but is always printed
// as "k8s:app", so Parse(l.String()) == l for every valid label.
//
// # Validation
//
//   - Source: required (never defaulted), 1-32 characters of a-z, 0-9 and
//     '-', starting with a letter.
//   - Key: a Kubernetes label key, [<prefix>/]<name>. The name is 1-63
//     characters of letters, digits, '-', '_' and '.', with a letter or
//     digit at both ends. The optional prefix is a DNS-1123 subdomain of at
//     most 253 characters (dot-separated parts of a-z, 0-9 and '-', each
//     with a letter or digit at both ends). At most one '/'.
//   - Value: empty, or the same rule as a key name.
//
// So ',', ':' and '=' never occur inside a key or a value, which is what
// makes the text forms unambiguous. Every validation error wraps
// ErrInvalid, names the offending input and says how to fix it.
//
// # Sets
//
// A Set is immutable and canonical: sorted by (Source, Key) in byte order,
// at most one label per (Source, Key). Its String is the labels' text forms
// joined by ',', e.g. "k8s:app=web,k8s:tier=front"; two Sets are Equal
// exactly when their Strings are equal, whatever order they were built in.
// Hash is the lowercase hex of the first 16 bytes of the SHA-256 of String,
// a stable, key-safe name for the set. The zero Set is the empty set; it is
// allowed as a value (NewSet()), but ParseSet rejects the empty string
// because a workload needs at least one label. A Set is safe to copy and to
// share between goroutines.
//
// # Limits
//
// A set holds at most MaxSetLabels (128) labels and its canonical form is
// at most MaxSetBytes (16 KiB): NewSet, FromMap and ParseSet refuse a
// larger one with an error wrapping ErrTooLarge and ErrInvalid that names
// the limit. Every agent keeps every identity's set in memory and etcd
// stores each twice, so one oversized pod must not cost the whole cluster.
// The limits apply before the filter: they bound what a caller may send.
//
// # Filter
//
// A Filter excludes labels by exact key or key prefix, optionally limited
// to one source. DefaultFilterPatterns lists the labels Kubernetes
// controllers put on pods that change per pod, rollout or job run
// (pod-template-hash, controller-revision-hash, statefulset pod names, job
// UIDs, ...); left in, they would allocate an identity per pod instead of
// per workload.
package labels
