package nodeagent

import (
	"net"
	"net/netip"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/identity"
)

// Conversions between the agent's model and the maps' layouts.

func ipcacheValue(id identity.ID, nodeIP netip.Addr, flags bpf.IPCacheFlags) bpf.IPCacheValue {
	return bpf.IPCacheValueFor(uint32(id), nodeIP, flags)
}

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

func serviceKey(fe netip.AddrPort, proto uint8, slot uint16) bpf.ServiceKey {
	return bpf.ServiceKeyFor(fe, proto, slot)
}

func serviceMaster(count int, serviceID uint16) bpf.ServiceValue {
	return bpf.ServiceEntry(uint32(serviceID), uint16(count))
}

func serviceSlot(backendID uint32, serviceID uint16) bpf.ServiceValue {
	return bpf.BackendSlot(uint32(serviceID), backendID)
}

func frontendOf(k bpf.ServiceKey) (netip.AddrPort, uint8, uint16) {
	return k.AddrPort(), k.Proto, k.Slot
}

func serviceIDOf(v bpf.ServiceValue) uint32 { return v.ServiceID }

func backendKey(id uint32) bpf.BackendKey { return bpf.BackendKey{ID: id} }

func backendIDOf(k bpf.BackendKey) uint32 { return k.ID }

func backendValue(ap netip.AddrPort, proto uint8) bpf.BackendValue {
	return bpf.BackendValueFor(ap, proto, 0)
}

func backendOf(v bpf.BackendValue) (netip.AddrPort, uint8) { return v.AddrPort(), v.Proto }
