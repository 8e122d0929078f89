package nodeagent

// podMTU is the MTU of local pods' veths, which AddEndpoint returns to the
// CNI plugin; 0 leaves the kernel's default.
func (a *Agent) podMTU() int { return 0 }
