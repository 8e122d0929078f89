package k8s

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/policy"
	"github.com/meshplane/meshplane/service"
)

// PodFrom converts a Kubernetes pod to the metadata the agent on its node
// needs. ok is false for a pod that gets none: one not yet scheduled (no
// nodeName), one that has finished (Succeeded or Failed: its IP is
// released), and a host-network pod (it shares its node's network and
// identity and never gets a CNI ADD). The ports are every container's,
// sidecars' (init containers that keep running) included. The result is
// validated: err says why a pod cannot be written (a label our identities
// cannot hold, say).
func PodFrom(p *corev1.Pod) (v pod.Pod, ok bool, err error) {
	if p.Spec.NodeName == "" || p.Spec.HostNetwork ||
		p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return pod.Pod{}, false, nil
	}
	v = pod.Pod{
		Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), Node: p.Spec.NodeName,
		Labels: maps.Clone(p.Labels), ServiceAccount: p.Spec.ServiceAccountName,
	}
	add := func(cs []corev1.Container) {
		for _, c := range cs {
			for _, cp := range c.Ports {
				v.Ports = append(v.Ports, pod.Port{Name: cp.Name, Port: uint16(cp.ContainerPort), Protocol: protocolNumber(cp.Protocol)})
			}
		}
	}
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			add([]corev1.Container{c})
		}
	}
	add(p.Spec.Containers)
	if err := v.Validate(); err != nil {
		return pod.Pod{}, true, err
	}
	return v, true, nil
}

func protocolNumber(p corev1.Protocol) uint8 {
	switch p {
	case corev1.ProtocolTCP, "":
		return pod.ProtoTCP
	case corev1.ProtocolUDP:
		return pod.ProtoUDP
	case corev1.ProtocolSCTP:
		return pod.ProtoSCTP
	}
	return 0 // Validate reports it
}

// NamespaceFrom converts a Kubernetes namespace (its name and labels, which
// policies' namespace selectors match).
func NamespaceFrom(n *corev1.Namespace) (pod.Namespace, error) {
	v := pod.Namespace{Name: n.Name, Labels: maps.Clone(n.Labels)}
	if err := v.Validate(); err != nil {
		return pod.Namespace{}, err
	}
	return v, nil
}

// ServiceNameLabel is the EndpointSlice label that names its Service.
const ServiceNameLabel = discoveryv1.LabelServiceName

// ServiceFrom converts a Kubernetes Service and the EndpointSlices labelled
// with its name to a service.Service, through service.Build (the one
// translation every source uses). ok is false for a service that has no
// frontends to load-balance: an ExternalName service. A headless service
// (clusterIP None) is written without frontends, like one whose
// ClusterIPs are not yet assigned.
func ServiceFrom(s *corev1.Service, eps []*discoveryv1.EndpointSlice) (v service.Service, ok bool, err error) {
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return service.Service{}, false, nil
	}
	spec, err := ServiceSpec(s)
	if err != nil {
		return service.Service{}, true, err
	}
	v, err = service.Build(spec, Endpoints(eps))
	return v, true, err
}

// ServiceSpec converts a Service's spec: every ClusterIP (one per
// family), every port with its node port, the session affinity and the
// traffic policies.
func ServiceSpec(s *corev1.Service) (service.Spec, error) {
	spec := service.Spec{Namespace: s.Namespace, Name: s.Name}
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if ip == "" || ip == corev1.ClusterIPNone {
			continue
		}
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return spec, fmt.Errorf("service %s/%s: clusterIP %q: %w", s.Namespace, s.Name, ip, err)
		}
		spec.ClusterIPs = append(spec.ClusterIPs, a)
	}
	for _, p := range s.Spec.Ports {
		spec.Ports = append(spec.Ports, service.Port{
			Name: p.Name, Protocol: service.Protocol(p.Protocol), Port: uint16(p.Port), NodePort: uint16(p.NodePort),
		})
	}
	if s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		spec.SessionAffinity = service.AffinityClientIP
		if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			spec.AffinityTimeout = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	if p := s.Spec.InternalTrafficPolicy; p != nil && *p == corev1.ServiceInternalTrafficPolicyLocal {
		spec.InternalTrafficPolicy = service.TrafficLocal
	}
	if s.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
		spec.ExternalTrafficPolicy = service.TrafficLocal
	}
	return spec, nil
}

// Endpoints converts EndpointSlices to service endpoints: one per address,
// with the slice's ports by name and the endpoint's conditions read as
// Kubernetes defines them (ready unset means ready, serving unset means
// ready, terminating unset means not). FQDN slices carry no addresses and
// are skipped.
func Endpoints(es []*discoveryv1.EndpointSlice) []service.Endpoint {
	var out []service.Endpoint
	for _, s := range es {
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ports := make(map[string]uint16, len(s.Ports))
		for _, p := range s.Ports {
			if p.Port == nil {
				continue // "all ports": not something a frontend can use
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			ports[name] = uint16(*p.Port)
		}
		for _, e := range s.Endpoints {
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			serving := ready
			if e.Conditions.Serving != nil {
				serving = *e.Conditions.Serving
			}
			terminating := e.Conditions.Terminating != nil && *e.Conditions.Terminating
			node := ""
			if e.NodeName != nil {
				node = *e.NodeName
			}
			for _, a := range e.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					continue // the apiserver validates addresses; nothing to route to
				}
				out = append(out, service.Endpoint{
					IP: ip, Node: node, Ports: ports,
					Ready: ready && !terminating, Serving: serving, Terminating: terminating,
				})
			}
		}
	}
	return out
}

// PolicyError is a NetworkPolicy that fails meshplane's validation: it is
// not written (what etcd holds for it stays), and the control plane
// reports it, as an Event on the object for one.
type PolicyError struct {
	// Kind is NetworkPolicy or MeshNetworkPolicy; empty means
	// NetworkPolicy.
	Kind            string
	Namespace, Name string
	// FieldErrors are the problems policy.Parse found, each naming the
	// field and what to do.
	FieldErrors []*policy.FieldError
	// Err is Parse's error.
	Err error
}

func (e *PolicyError) Error() string {
	kind := e.Kind
	if kind == "" {
		kind = "NetworkPolicy"
	}
	return fmt.Sprintf("%s %s/%s: %v", kind, e.Namespace, e.Name, e.Err)
}

func (e *PolicyError) Unwrap() error { return e.Err }

// PolicyFrom converts a NetworkPolicy by handing its manifest (apiVersion,
// kind, name, namespace and spec, as JSON) to policy.Parse: the one parser
// of policies. A policy Parse rejects is returned as a *PolicyError.
func PolicyFrom(np *networkingv1.NetworkPolicy) (*policy.Policy, error) {
	manifest := struct {
		APIVersion string                         `json:"apiVersion"`
		Kind       string                         `json:"kind"`
		Metadata   map[string]string              `json:"metadata"`
		Spec       networkingv1.NetworkPolicySpec `json:"spec"`
	}{"networking.k8s.io/v1", "NetworkPolicy", map[string]string{"name": np.Name, "namespace": np.Namespace}, np.Spec}
	b, err := json.Marshal(manifest)
	if err != nil {
		return nil, fmt.Errorf("NetworkPolicy %s/%s: %w", np.Namespace, np.Name, err)
	}
	ps, err := policy.Parse(b)
	if err != nil {
		return nil, &PolicyError{Namespace: np.Namespace, Name: np.Name, FieldErrors: fieldErrors(err), Err: err}
	}
	if len(ps) != 1 {
		return nil, fmt.Errorf("NetworkPolicy %s/%s: parsed to %d policies", np.Namespace, np.Name, len(ps))
	}
	return ps[0], nil
}

// fieldErrors collects the *policy.FieldError of a (joined) Parse error.
func fieldErrors(err error) []*policy.FieldError {
	if fe, ok := err.(*policy.FieldError); ok { //nolint:errorlint // Parse returns them unwrapped, or joined
		return []*policy.FieldError{fe}
	}
	var out []*policy.FieldError
	if j, ok := err.(interface{ Unwrap() []error }); ok { //nolint:errorlint // walking errors.Join's list
		for _, e := range j.Unwrap() {
			out = append(out, fieldErrors(e)...)
		}
	}
	return out
}

// Node is what the control plane takes from a Kubernetes Node: its name
// and addresses, for the node membership.
type Node struct {
	Name        string
	InternalIPs []netip.Addr
	ExternalIPs []netip.Addr
}

// NodeFrom converts a Kubernetes Node: its InternalIP and ExternalIP
// addresses, in the order the node reports them.
func NodeFrom(n *corev1.Node) Node {
	v := Node{Name: n.Name}
	for _, a := range n.Status.Addresses {
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		switch a.Type {
		case corev1.NodeInternalIP:
			v.InternalIPs = append(v.InternalIPs, ip)
		case corev1.NodeExternalIP:
			v.ExternalIPs = append(v.ExternalIPs, ip)
		}
	}
	return v
}

// Equal reports whether n and o are the same.
func (n Node) Equal(o Node) bool {
	return n.Name == o.Name && slices.Equal(n.InternalIPs, o.InternalIPs) && slices.Equal(n.ExternalIPs, o.ExternalIPs)
}
