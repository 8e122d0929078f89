package nodeagent

// podMTU is the MTU the CNI plugin gives a pod's interfaces: Config.MTU if
// set, else the underlay's (the MTU of the interface that holds the node's
// address), less TunnelOverhead in tunnel mode, where every packet to
// another node carries VXLAN's headers. 0 means unknown (RoutingNone, or
// the underlay not found): the plugin then leaves the kernel's default.
func (a *Agent) podMTU() int {
	if a.cfg.MTU != 0 {
		return a.cfg.MTU
	}
	if a.routing == nil {
		return 0
	}
	u := int(a.routing.underlayMTU.Load())
	if u == 0 {
		return 0
	}
	if a.cfg.RoutingMode == RoutingTunnel {
		return u - TunnelOverhead
	}
	return u
}
