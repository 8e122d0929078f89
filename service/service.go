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
	"time"
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
//
// Every field added after the first layout is optional with a zero value
// that means what a value written before it meant (no affinity, Cluster
// traffic policies, no node port), so Decode reads values already in etcd.
type Service struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	Frontends []Frontend `json:"frontends"`
	// SessionAffinity is None (or empty) or ClientIP: a client's
	// connections go to the same backend for AffinityTimeout.
	SessionAffinity SessionAffinity `json:"sessionAffinity,omitempty"`
	// AffinityTimeout is the ClientIP affinity's idle timeout; set only
	// with ClientIP, at most MaxAffinityTimeout. Zero with ClientIP means
	// DefaultAffinityTimeout.
	AffinityTimeout time.Duration `json:"affinityTimeout,omitempty"`
	// InternalTrafficPolicy is Cluster (or empty) or Local: with Local,
	// traffic from pods reaches only backends on the client's node.
	InternalTrafficPolicy TrafficPolicy `json:"internalTrafficPolicy,omitempty"`
	// ExternalTrafficPolicy is Cluster (or empty) or Local, for traffic
	// that arrives on a node port: with Local, only the node's own
	// backends serve it (and the client's address is kept).
	ExternalTrafficPolicy TrafficPolicy `json:"externalTrafficPolicy,omitempty"`
}

// SessionAffinity is a service's session affinity.
type SessionAffinity string

// The session affinities.
const (
	AffinityNone     SessionAffinity = "None"
	AffinityClientIP SessionAffinity = "ClientIP"
)

// Affinity timeouts: Kubernetes' default and maximum.
const (
	DefaultAffinityTimeout = 3 * time.Hour
	MaxAffinityTimeout     = 24 * time.Hour
)

// TrafficPolicy says which backends serve a frontend's traffic.
type TrafficPolicy string

// The traffic policies.
const (
	TrafficCluster TrafficPolicy = "Cluster"
	TrafficLocal   TrafficPolicy = "Local"
)

// Frontend is one address clients connect to, and its backends.
type Frontend struct {
	Address  netip.AddrPort `json:"address"`
	Protocol Protocol       `json:"protocol"`
	// Name is the service port's name ("" for a service's only port).
	Name string `json:"name,omitempty"`
	// NodePort, if nonzero, is the port on every node's addresses that
	// also leads to Backends (a NodePort or LoadBalancer service).
	NodePort uint16    `json:"nodePort,omitempty"`
	Backends []Backend `json:"backends,omitempty"`
}

// Backend is one endpoint behind a frontend.
type Backend struct {
	Address netip.AddrPort `json:"address"`
	// Node is the node that hosts the backend: when gossip declares it
	// dead, agents stop sending new connections to the backend.
	Node string `json:"node,omitempty"`
	// Terminating says the backend is shutting down but still serving: it
	// is listed only because the frontend has no ready backend (see
	// Build), so agents may prefer any other.
	Terminating bool `json:"terminating,omitempty"`
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
	switch s.SessionAffinity {
	case "", AffinityNone:
		if s.AffinityTimeout != 0 {
			return fmt.Errorf("%w: %s/%s: affinityTimeout is set without ClientIP session affinity: drop it or set sessionAffinity ClientIP", ErrInvalid, s.Namespace, s.Name)
		}
	case AffinityClientIP:
		if s.AffinityTimeout < 0 || s.AffinityTimeout > MaxAffinityTimeout {
			return fmt.Errorf("%w: %s/%s: affinityTimeout %s: use 0 (the default, %s) up to %s", ErrInvalid, s.Namespace, s.Name, s.AffinityTimeout, DefaultAffinityTimeout, MaxAffinityTimeout)
		}
	default:
		return fmt.Errorf("%w: %s/%s: sessionAffinity %q: use None or ClientIP", ErrInvalid, s.Namespace, s.Name, s.SessionAffinity)
	}
	for _, tp := range []struct {
		field string
		p     TrafficPolicy
	}{{"internalTrafficPolicy", s.InternalTrafficPolicy}, {"externalTrafficPolicy", s.ExternalTrafficPolicy}} {
		if tp.p != "" && tp.p != TrafficCluster && tp.p != TrafficLocal {
			return fmt.Errorf("%w: %s/%s: %s %q: use Cluster or Local", ErrInvalid, s.Namespace, s.Name, tp.field, tp.p)
		}
	}
	type fkey struct {
		a netip.AddrPort
		p Protocol
	}
	type nkey struct {
		port uint16
		p    Protocol
		is4  bool
	}
	seen := make(map[fkey]bool, len(s.Frontends))
	nodePorts := map[nkey]bool{}
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
		if f.NodePort != 0 {
			nk := nkey{f.NodePort, f.Protocol, f.Address.Addr().Unmap().Is4()}
			if nodePorts[nk] {
				return fmt.Errorf("%w: %s: node port %s %d appears twice", ErrInvalid, where, f.Protocol, f.NodePort)
			}
			nodePorts[nk] = true
		}
		if strings.ContainsAny(f.Name, "/ \n") {
			return fmt.Errorf("%w: %s: port name %q is not a port name", ErrInvalid, where, f.Name)
		}
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
