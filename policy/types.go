package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Kinds of policy, as written in a document's kind field.
const (
	KindNetworkPolicy     = "NetworkPolicy"
	KindMeshNetworkPolicy = "MeshNetworkPolicy"
)

// API versions of the two kinds.
const (
	APIVersionNetworkPolicy     = "networking.k8s.io/v1"
	APIVersionMeshNetworkPolicy = "meshplane.io/v1alpha1"
)

// DefaultNamespace is the namespace of a policy whose metadata names none,
// as kubectl assumes.
const DefaultNamespace = "default"

// ClustersAll in a peer's clusters list means every cluster of the mesh.
const ClustersAll = "*"

// Policy is one NetworkPolicy or MeshNetworkPolicy. Policies returned by
// Parse and Decode are valid and defaulted: Namespace is set, PolicyTypes
// is explicit, every port has a protocol, and empty lists and maps are nil,
// so two policies that mean the same are equal with reflect.DeepEqual
// exactly when their Encode output is equal.
type Policy struct {
	// Kind is KindNetworkPolicy or KindMeshNetworkPolicy.
	Kind string `json:"kind"`
	// Namespace holds the policy: spec.podSelector selects endpoints in it,
	// and a peer without namespaceSelector means pods in it.
	Namespace string `json:"namespace"`
	// Name is unique per namespace across both kinds (they share the etcd
	// key policies/<namespace>/<name>).
	Name string `json:"name"`
	Spec Spec   `json:"spec"`
}

// Key is "namespace/name", the identity of the policy in the Engine and in
// etcd.
func (p *Policy) Key() string { return p.Namespace + "/" + p.Name }

// Spec mirrors Kubernetes' NetworkPolicySpec.
type Spec struct {
	// PodSelector selects the endpoints of the policy's namespace that the
	// policy applies to; empty selects all of them.
	PodSelector LabelSelector `json:"podSelector"`
	// PolicyTypes lists the directions the policy enforces. Parse and
	// Decode default it as Kubernetes does: Ingress, plus Egress when
	// there are egress rules.
	PolicyTypes []Type `json:"policyTypes,omitempty"`
	// Ingress rules; traffic matching any of them is allowed. Ignored
	// unless PolicyTypes includes Ingress.
	Ingress []IngressRule `json:"ingress,omitempty"`
	// Egress rules; ignored unless PolicyTypes includes Egress.
	Egress []EgressRule `json:"egress,omitempty"`
}

// Type is a direction a policy enforces: an item of spec.policyTypes.
type Type string

// The policy types.
const (
	TypeIngress Type = "Ingress"
	TypeEgress  Type = "Egress"
)

// Enforces reports whether the spec lists t in PolicyTypes.
func (s *Spec) Enforces(t Type) bool {
	for _, pt := range s.PolicyTypes {
		if pt == t {
			return true
		}
	}
	return false
}

// IngressRule allows traffic from any of From to any of Ports.
type IngressRule struct {
	// Ports; none means every port of every protocol.
	Ports []Port `json:"ports,omitempty"`
	// From; none means every source.
	From []Peer `json:"from,omitempty"`
}

// EgressRule allows traffic to any of To on any of Ports.
type EgressRule struct {
	// Ports; none means every port of every protocol.
	Ports []Port `json:"ports,omitempty"`
	// To; none means every destination.
	To []Peer `json:"to,omitempty"`
}

// Peer is a set of remote workloads: pods chosen by label selectors, or
// addresses chosen by an IP block, never both.
type Peer struct {
	// PodSelector selects pods; with no NamespaceSelector, pods of the
	// policy's namespace.
	PodSelector *LabelSelector `json:"podSelector,omitempty"`
	// NamespaceSelector selects namespaces by their labels; every pod of
	// them unless PodSelector narrows it.
	NamespaceSelector *LabelSelector `json:"namespaceSelector,omitempty"`
	// IPBlock selects the addresses inside its CIDR and outside its
	// excepts, pods' included (see the package doc: through CIDR
	// identities and the agent's per-address lookup).
	IPBlock *IPBlock `json:"ipBlock,omitempty"`
	// Clusters (MeshNetworkPolicy only) lists the mesh clusters whose pods
	// the selectors match; ClustersAll matches every cluster. Empty means
	// the local cluster.
	Clusters []string `json:"clusters,omitempty"`
}

// IPBlock is a CIDR minus the CIDRs in Except.
type IPBlock struct {
	// CIDR in its masked text form, e.g. 10.0.0.0/8.
	CIDR string `json:"cidr"`
	// Except lists CIDRs strictly inside CIDR that are not matched.
	Except []string `json:"except,omitempty"`
}

// Port is a protocol and an optional port or port range.
type Port struct {
	// Protocol: TCP (the default), UDP or SCTP.
	Protocol Protocol `json:"protocol,omitempty"`
	// Port is a number or the name of a container port; nil means every
	// port of Protocol.
	Port *PortValue `json:"port,omitempty"`
	// EndPort, when set, makes Port..EndPort an inclusive range; Port must
	// then be a number.
	EndPort *int32 `json:"endPort,omitempty"`
}

// Protocol is an L4 protocol name.
type Protocol string

// The protocols a policy may name.
const (
	ProtocolTCP  Protocol = "TCP"
	ProtocolUDP  Protocol = "UDP"
	ProtocolSCTP Protocol = "SCTP"
)

// Protocol numbers, as IP headers and the datapath carry them.
const (
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// Number returns the IP protocol number, or 0 for an unknown protocol.
func (p Protocol) Number() uint8 {
	switch p {
	case ProtocolTCP:
		return ProtoTCP
	case ProtocolUDP:
		return ProtoUDP
	case ProtocolSCTP:
		return ProtoSCTP
	}
	return 0
}

// PortValue is a port number or a port name: Kubernetes' IntOrString. Its
// JSON form is a number or a string. Exactly one of Number and Name is set
// in a valid value.
type PortValue struct {
	Number int32
	Name   string
}

// PortNumber returns a numeric PortValue.
func PortNumber(n int32) *PortValue { return &PortValue{Number: n} }

// PortName returns a named PortValue.
func PortName(name string) *PortValue { return &PortValue{Name: name} }

// String is the number or the name.
func (v PortValue) String() string {
	if v.Name != "" {
		return v.Name
	}
	return strconv.Itoa(int(v.Number))
}

// MarshalJSON writes a name as a JSON string and a number as a number.
func (v PortValue) MarshalJSON() ([]byte, error) {
	if v.Name != "" {
		return json.Marshal(v.Name)
	}
	return json.Marshal(v.Number)
}

// UnmarshalJSON reads a JSON number or string.
func (v *PortValue) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*v = PortValue{Name: s}
		return nil
	}
	var n int32
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("%w: port %s: write a number 1-65535 or a port name", ErrInvalid, b)
	}
	*v = PortValue{Number: n}
	return nil
}

// LabelSelector mirrors Kubernetes' metav1.LabelSelector: all of
// MatchLabels and all of MatchExpressions must hold. The empty selector
// matches everything.
type LabelSelector struct {
	MatchLabels      map[string]string          `json:"matchLabels,omitempty"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is one matchExpressions item.
type LabelSelectorRequirement struct {
	Key      string   `json:"key"`
	Operator Operator `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// Operator is a label selector operator.
type Operator string

// The label selector operators.
const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// ErrInvalid is wrapped by every error about a malformed or invalid policy.
var ErrInvalid = errors.New("invalid policy")

// FieldError is one problem in a policy document: which document, which
// policy, which field, and what to do. It wraps ErrInvalid. Parse and
// Validate may return several, joined with errors.Join; use errors.As to
// reach the first.
type FieldError struct {
	// Policy is the policy's name ("namespace/name" from Validate), or
	// empty when the document has no usable name.
	Policy string
	// Document is the 1-based number of the YAML document, 0 when the
	// policy did not come from YAML.
	Document int
	// Item is the item's path inside a List document (items[3]), or empty.
	Item string
	// Field is the path of the offending field, e.g.
	// spec.ingress[0].from[1].ipBlock.except[0]; empty for the whole
	// document.
	Field string
	// Detail says what is wrong and what to do.
	Detail string
}

func (e *FieldError) Error() string {
	var where string
	if e.Document > 0 {
		where = "document " + strconv.Itoa(e.Document)
		if e.Item != "" {
			where += ", " + e.Item
		}
	} else {
		where = e.Item
	}
	var b strings.Builder
	switch {
	case e.Policy != "" && where != "":
		fmt.Fprintf(&b, "policy %q (%s)", e.Policy, where)
	case e.Policy != "":
		fmt.Fprintf(&b, "policy %q", e.Policy)
	case where != "":
		b.WriteString(where)
	default:
		b.WriteString("policy")
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Detail)
	return b.String()
}

// Unwrap makes errors.Is(err, ErrInvalid) hold.
func (e *FieldError) Unwrap() error { return ErrInvalid }
