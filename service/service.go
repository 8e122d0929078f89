// Package service is the model of a load-balanced service as the control
// plane writes it to etcd (services/<namespace>/<name>) and the agent
// mirrors it into the datapath: frontends (a ClusterIP and port) and the
// backends behind each. It is pure: no I/O.
package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid service")

// Protocol is a transport protocol.
type Protocol string

// The protocols a frontend may use.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// Number is the IP protocol number (6, 17, 132), or 0 for an unknown one.
func (p Protocol) Number() uint8 {
	switch p {
	case TCP:
		return 6
	case UDP:
		return 17
	case SCTP:
		return 132
	}
	return 0
}

// Service is the value of services/<namespace>/<name>.
type Service struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	Frontends []Frontend `json:"frontends"`
}

// Frontend is one address clients connect to, and its backends.
type Frontend struct {
	Address  netip.AddrPort `json:"address"`
	Protocol Protocol       `json:"protocol"`
	Backends []Backend      `json:"backends,omitempty"`
}

// Backend is one endpoint behind a frontend.
type Backend struct {
	Address netip.AddrPort `json:"address"`
	// Node is the node that hosts the backend: when gossip declares it
	// dead, agents stop sending new connections to the backend.
	Node string `json:"node,omitempty"`
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Validate checks a service: DNS-label names, valid addresses and nonzero
// ports, known protocols, no duplicate frontend, backends of the
// frontend's family.
func (s Service) Validate() error {
	if !nameRE.MatchString(s.Namespace) {
		return fmt.Errorf("%w: namespace %q: use a DNS label (lowercase letters, digits, '-')", ErrInvalid, s.Namespace)
	}
	if !nameRE.MatchString(s.Name) {
		return fmt.Errorf("%w: %s: name %q: use a DNS label (lowercase letters, digits, '-')", ErrInvalid, s.Namespace, s.Name)
	}
	type fkey struct {
		a netip.AddrPort
		p Protocol
	}
	seen := make(map[fkey]bool, len(s.Frontends))
	for i, f := range s.Frontends {
		where := fmt.Sprintf("%s/%s: frontends[%d]", s.Namespace, s.Name, i)
		if !f.Address.IsValid() || f.Address.Port() == 0 || f.Address.Addr().Zone() != "" {
			return fmt.Errorf("%w: %s: address %q needs an IP and a port 1-65535", ErrInvalid, where, f.Address)
		}
		if f.Protocol.Number() == 0 {
			return fmt.Errorf("%w: %s: protocol %q: use TCP, UDP or SCTP", ErrInvalid, where, f.Protocol)
		}
		k := fkey{f.Address, f.Protocol}
		if seen[k] {
			return fmt.Errorf("%w: %s: %s %s appears twice", ErrInvalid, where, f.Protocol, f.Address)
		}
		seen[k] = true
		for j, b := range f.Backends {
			if !b.Address.IsValid() || b.Address.Port() == 0 {
				return fmt.Errorf("%w: %s.backends[%d]: address %q needs an IP and a port 1-65535", ErrInvalid, where, j, b.Address)
			}
			if b.Address.Addr().Unmap().Is4() != f.Address.Addr().Unmap().Is4() {
				return fmt.Errorf("%w: %s.backends[%d]: %s is not of the frontend's family", ErrInvalid, where, j, b.Address)
			}
			if strings.ContainsAny(b.Node, "/ \n") {
				return fmt.Errorf("%w: %s.backends[%d]: node %q is not a node name", ErrInvalid, where, j, b.Node)
			}
		}
	}
	return nil
}

// Decode parses and validates the value of services/<namespace>/<name>;
// key ("<namespace>/<name>") names the value in errors. That the key names
// the value is checked by the store's codec (kvstore.ServiceCodec), once
// for every model.
func Decode(key string, value []byte) (Service, error) {
	var s Service
	if err := json.Unmarshal(value, &s); err != nil {
		return s, fmt.Errorf("%w: service %s: %w", ErrInvalid, key, err)
	}
	if err := s.Validate(); err != nil {
		return s, err
	}
	return s, nil
}

// Encode returns the stored form of a valid service (JSON), which Decode
// reads back.
func (s Service) Encode() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(s)
}

// Key is the key of s relative to the services/ prefix.
func (s Service) Key() string { return s.Namespace + "/" + s.Name }
