// Package ipcache is the model of the cluster's IP-to-identity mapping as
// agents publish it in etcd (endpoints/<ip>): which security identity an
// IP has and which node hosts it. The agent mirrors it, together with the
// nodes' own addresses and pod CIDRs, into the ipcache eBPF map. It is
// pure: no I/O.
package ipcache

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/meshplane/meshplane/identity"
)

// ErrInvalid is wrapped by every decoding error.
var ErrInvalid = errors.New("invalid ipcache entry")

// Entry is the value of endpoints/<ip>.
type Entry struct {
	IP       netip.Addr  `json:"ip"`
	Identity identity.ID `json:"identity"`
	// Node is the name of the node that hosts the IP.
	Node string `json:"node"`
	// Namespace and Pod name the workload, for display.
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	// Ports are the pod's named container ports: a policy's named egress
	// port resolves against those of every pod.
	Ports []NamedPort `json:"ports,omitempty"`
}

// NamedPort is a named container port.
type NamedPort struct {
	Name string `json:"name"`
	Port uint16 `json:"port"`
	// Protocol is the IP protocol number (6 TCP, 17 UDP, 132 SCTP).
	Protocol uint8 `json:"protocol"`
}

// KeyOf is the key of ip relative to the endpoints/ prefix.
func KeyOf(ip netip.Addr) string { return ip.String() }

// Decode parses the value of endpoints/<ip>; key is the IP (the key's last
// segment), which the value must match.
func Decode(key string, value []byte) (Entry, error) {
	var e Entry
	ip, err := netip.ParseAddr(key)
	if err != nil || ip.Zone() != "" {
		return e, fmt.Errorf("%w: key %q is not an IP address", ErrInvalid, key)
	}
	if err := json.Unmarshal(value, &e); err != nil {
		return e, fmt.Errorf("%w: %s: %w", ErrInvalid, key, err)
	}
	if e.IP != ip {
		return e, fmt.Errorf("%w: key %s holds IP %s", ErrInvalid, key, e.IP)
	}
	if e.Identity == 0 {
		return e, fmt.Errorf("%w: %s: no identity", ErrInvalid, key)
	}
	if e.Node == "" || strings.ContainsAny(e.Node, "/ \n") {
		return e, fmt.Errorf("%w: %s: node %q is not a node name", ErrInvalid, key, e.Node)
	}
	for _, p := range e.Ports {
		if p.Name == "" || p.Port == 0 || p.Protocol == 0 {
			return e, fmt.Errorf("%w: %s: named port %+v: want a name, a port and a protocol", ErrInvalid, key, p)
		}
	}
	return e, nil
}

// Encode returns the value of e's key.
func (e Entry) Encode() []byte {
	b, _ := json.Marshal(e)
	return b
}
