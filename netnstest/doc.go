// Package netnstest builds network topologies for tests out of real
// network namespaces, as httptest builds servers: namespaces with unique
// names that the test's cleanup deletes, veth pairs between them,
// addresses, routes and neighbor entries, and sockets and commands inside
// a namespace.
//
// # Threads and namespaces
//
// A network namespace belongs to an OS thread, not to a goroutine. Do runs
// a function on a locked thread that it switches into the namespace and
// that exits afterwards, so no other goroutine ever runs in a namespace by
// accident. A socket keeps the namespace it was created in, so Listen,
// ListenPacket and Dial create their sockets inside Do and the caller uses
// them from any goroutine. Configuration goes through a netlink handle
// bound to the namespace (Netlink), with no thread switching.
//
// # Names and cleanup
//
// Namespaces are named "mpt-<pid>-<n>" and bind-mounted under /run/netns,
// where `ip netns` sees them (`ip netns exec mpt-... ip addr` while a test
// is paused). Interfaces live inside namespaces, so their names only need
// to be unique per namespace. Cleanup deletes each namespace after
// whatever the test registered later (listeners first); the kernel then
// removes its interfaces, veth peers in other namespaces included.
//
// The package needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); Require skips
// a test without it, or fails it when MESHPLANE_REQUIRE_NETNS is set. It
// starts no goroutines that outlive a call.
package netnstest
