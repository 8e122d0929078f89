package nodeagent

import (
	"net"

	"github.com/meshplane/meshplane/bpf"
)

// endpointValue is an endpoint's entry in the endpoints map.
func endpointValue(ep *Endpoint) bpf.EndpointValue {
	v := bpf.EndpointValue{EndpointID: ep.ID, IfIndex: ep.IfIndex, Identity: uint32(ep.Identity)}
	if hw, err := net.ParseMAC(ep.MAC); err == nil {
		v.PodMAC, _ = bpf.MAC(hw)
	}
	if hw, err := net.ParseMAC(ep.NodeMAC); err == nil {
		v.NodeMAC, _ = bpf.MAC(hw)
	}
	return v
}

// mapSizeFlags are mesh-agent's flags for the map sizes, which a full
// map's error tells the operator to raise.
var mapSizeFlags = bpf.SizeNames{
	IPCache: "--bpf-ipcache-max", Endpoints: "--bpf-endpoints-max", Policy: "--bpf-policy-max",
	Services: "--bpf-services-max", Backends: "--bpf-backends-max", CIDR: "--bpf-cidr-max",
}
