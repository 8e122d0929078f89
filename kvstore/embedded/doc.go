// Package embedded runs an etcd server inside the process, on loopback, for
// the one-machine cases: meshctl --etcd-embedded and meshctl demo, the
// lab's per-cluster etcd (meshctl lab etcd), and tests (kvstore/etcdtest).
//
// It is the only package besides etcdtest that imports etcd's server
// (go.etcd.io/etcd/server, some 40 packages). The daemons (mesh-agent and
// the control plane) never import it, and deps_test.go holds that line: a
// daemon given no etcd endpoints is misconfigured, and must say so rather
// than quietly create a private cluster of one (kvstore.Config.Validate).
//
// A server holds a lock on <dir>/etcd.lock while it runs, so a second server
// on the same directory fails at once (an error wrapping kvstore.ErrConfig)
// instead of hanging on etcd's own database lock. Data lives in <dir>/etcd
// and survives Close; Start on the same directory (and ports) is a restart.
//
// The server's own goroutines belong to etcd; Close stops them and returns
// after they exit.
package embedded
