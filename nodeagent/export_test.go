package nodeagent

import "net/netip"

// SetStepHook sets the hook called after each durable step of an
// endpoint's add and remove (steps.go), for the crash test's child.
func SetStepHook(f func(step, owner string, ip netip.Addr)) { stepHook = f }
