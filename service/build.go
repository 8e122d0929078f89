package service

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Spec is a service as its owner declares it (a Kubernetes Service, or a
// service of the lab's topology): what Build turns into a Service.
type Spec struct {
	Namespace string
	Name      string
	// ClusterIPs are the service's virtual addresses, one per IP family at
	// most. None (a headless service) gives a Service without frontends.
	ClusterIPs []netip.Addr
	Ports      []Port
	// SessionAffinity, AffinityTimeout and the traffic policies are copied
	// into the Service: see there.
	SessionAffinity       SessionAffinity
	AffinityTimeout       time.Duration
	InternalTrafficPolicy TrafficPolicy
	ExternalTrafficPolicy TrafficPolicy
}

// Port is one port of a Spec.
type Port struct {
	// Name names the port; Endpoint.Ports is keyed by it ("" for a
	// service's only, unnamed port).
	Name     string
	Protocol Protocol
	// Port is the port clients connect to on each ClusterIP.
	Port uint16
	// NodePort, if nonzero, is the port on every node's addresses.
	NodePort uint16
}

// Endpoint is one pod (or other address) behind a service, as an
// EndpointSlice lists it.
type Endpoint struct {
	IP   netip.Addr
	Node string
	// Ports maps a service port's name to the endpoint's port number for
	// it (a target port resolved, named ports included). A port missing
	// here is one the endpoint does not serve.
	Ports map[string]uint16
	// Ready, Serving and Terminating are the EndpointSlice conditions:
	// Ready is Serving and not Terminating.
	Ready       bool
	Serving     bool
	Terminating bool
}

// Build is the one translation from a service's spec and its endpoints to
// the Service the control plane writes (production and the lab call it, so
// the lab cannot drift): a frontend per ClusterIP and port, in the spec's
// order; behind each, the ready endpoints of the frontend's family that
// serve the port, sorted by address. When a frontend has no ready
// endpoint, its serving terminating ones stand in, marked Terminating
// (Kubernetes' rule for graceful termination); endpoints neither ready
// nor serving are never backends. The result is validated; eps is only
// read.
func Build(spec Spec, eps []Endpoint) (Service, error) {
	svc := Service{
		Namespace:             spec.Namespace,
		Name:                  spec.Name,
		SessionAffinity:       spec.SessionAffinity,
		AffinityTimeout:       spec.AffinityTimeout,
		InternalTrafficPolicy: spec.InternalTrafficPolicy,
		ExternalTrafficPolicy: spec.ExternalTrafficPolicy,
	}
	names := make(map[string]bool, len(spec.Ports))
	for _, port := range spec.Ports {
		if names[port.Name] {
			return Service{}, fmt.Errorf("%w: build service %s/%s: port name %q is used twice: name every port of a service with several, each differently (endpoints are matched to ports by name)",
				ErrInvalid, spec.Namespace, spec.Name, port.Name)
		}
		names[port.Name] = true
	}
	if svc.SessionAffinity == AffinityClientIP && svc.AffinityTimeout == 0 {
		svc.AffinityTimeout = DefaultAffinityTimeout
	}
	for _, ip := range spec.ClusterIPs {
		for _, port := range spec.Ports {
			fe := Frontend{
				Address:  netip.AddrPortFrom(ip, port.Port),
				Protocol: port.Protocol,
				Name:     port.Name,
				NodePort: port.NodePort,
			}
			fe.Backends = backends(ip.Unmap().Is4(), port.Name, eps)
			svc.Frontends = append(svc.Frontends, fe)
		}
	}
	if err := svc.Validate(); err != nil {
		return Service{}, fmt.Errorf("build service %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	return svc, nil
}

// backends are the endpoints behind one frontend (see Build).
func backends(is4 bool, port string, eps []Endpoint) []Backend {
	var ready, terminating []Backend
	for _, ep := range eps {
		n, ok := ep.Ports[port]
		if !ok || n == 0 || !ep.IP.IsValid() || ep.IP.Unmap().Is4() != is4 {
			continue
		}
		b := Backend{Address: netip.AddrPortFrom(ep.IP, n), Node: ep.Node}
		switch {
		case ep.Ready:
			ready = append(ready, b)
		case ep.Serving && ep.Terminating:
			b.Terminating = true
			terminating = append(terminating, b)
		}
	}
	out := ready
	if len(out) == 0 {
		out = terminating
	}
	slices.SortFunc(out, func(a, b Backend) int { return a.Address.Compare(b.Address) })
	return slices.CompactFunc(out, func(a, b Backend) bool { return a.Address == b.Address })
}
