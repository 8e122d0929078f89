package nodeagent

import "net/netip"

// stepHook, when set, is called after each durable step of an endpoint's
// add and remove: a journal record, an etcd write, a state file written or
// renamed or removed. Only the crash test sets it (export_test.go), in a
// child process that kills itself at one of these steps; in production it
// is nil and costs a nil check.
var stepHook func(step, owner string, ip netip.Addr)

func afterStep(step, owner string, ip netip.Addr) {
	if stepHook != nil {
		stepHook(step, owner, ip)
	}
}
