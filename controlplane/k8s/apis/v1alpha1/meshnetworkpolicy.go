package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// MeshNetworkPolicy is a NetworkPolicy that may also select pods of other
// clusters of the mesh (spec.ingress[].from[].clusters,
// spec.egress[].to[].clusters). The API server checks the shape (the
// OpenAPI schema); meshplane's own validation (package policy: selector
// syntax, masked CIDRs, excepts inside their cidr, limits) runs in the
// control plane, which reports the outcome in status.conditions.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=mnp,categories=meshplane
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MeshNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec MeshNetworkPolicySpec `json:"spec"`
	// +optional
	Status MeshNetworkPolicyStatus `json:"status,omitzero"`
}

// MeshNetworkPolicyList is a list of MeshNetworkPolicy.
//
// +kubebuilder:object:root=true
type MeshNetworkPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshNetworkPolicy `json:"items"`
}

// MeshNetworkPolicySpec is Kubernetes' NetworkPolicySpec with clusters on
// selector peers; the fields mean what policy.Spec documents.
type MeshNetworkPolicySpec struct {
	// PodSelector selects the pods of the policy's namespace that the
	// policy applies to; {} selects all of them.
	PodSelector metav1.LabelSelector `json:"podSelector"`
	// PolicyTypes lists the directions the policy enforces; default
	// Ingress, plus Egress when egress has rules.
	// +optional
	// +listType=atomic
	PolicyTypes []PolicyType `json:"policyTypes,omitempty"`
	// Ingress rules; traffic that matches any of them is allowed.
	// +optional
	// +listType=atomic
	Ingress []IngressRule `json:"ingress,omitempty"`
	// Egress rules; traffic that matches any of them is allowed.
	// +optional
	// +listType=atomic
	Egress []EgressRule `json:"egress,omitempty"`
}

// PolicyType is a direction a policy enforces.
//
// +kubebuilder:validation:Enum=Ingress;Egress
type PolicyType string

// The policy types.
const (
	PolicyTypeIngress PolicyType = "Ingress"
	PolicyTypeEgress  PolicyType = "Egress"
)

// IngressRule allows traffic from any of From to any of Ports.
type IngressRule struct {
	// Ports; none means every port of every protocol.
	// +optional
	// +listType=atomic
	Ports []Port `json:"ports,omitempty"`
	// From; none means every source.
	// +optional
	// +listType=atomic
	From []Peer `json:"from,omitempty"`
}

// EgressRule allows traffic to any of To on any of Ports.
type EgressRule struct {
	// Ports; none means every port of every protocol.
	// +optional
	// +listType=atomic
	Ports []Port `json:"ports,omitempty"`
	// To; none means every destination.
	// +optional
	// +listType=atomic
	To []Peer `json:"to,omitempty"`
}

// Peer is a set of remote workloads: pods chosen by label selectors, or
// addresses chosen by an IP block, never both.
type Peer struct {
	// PodSelector selects pods; without namespaceSelector, pods of the
	// policy's namespace.
	// +optional
	PodSelector *metav1.LabelSelector `json:"podSelector,omitempty"`
	// NamespaceSelector selects namespaces by their labels.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	// IPBlock selects the addresses inside cidr and outside except.
	// +optional
	IPBlock *IPBlock `json:"ipBlock,omitempty"`
	// Clusters lists the mesh clusters whose pods the selectors match;
	// "*" matches every cluster. Empty means the local cluster.
	// +optional
	// +listType=atomic
	Clusters []string `json:"clusters,omitempty"`
}

// IPBlock is a CIDR minus the CIDRs in Except.
type IPBlock struct {
	// CIDR in its masked form, e.g. 10.0.0.0/8 or 2001:db8::/32.
	// +kubebuilder:validation:MinLength=1
	CIDR string `json:"cidr"`
	// Except lists CIDRs strictly inside cidr that are not matched.
	// +optional
	// +listType=atomic
	Except []string `json:"except,omitempty"`
}

// Port is a protocol and an optional port or port range.
type Port struct {
	// Protocol: TCP (the default), UDP or SCTP.
	// +optional
	Protocol *Protocol `json:"protocol,omitempty"`
	// Port is a number 1-65535 or the name of a container port; absent
	// means every port of the protocol.
	// +optional
	Port *intstr.IntOrString `json:"port,omitempty"`
	// EndPort makes port..endPort an inclusive range; port must then be a
	// number.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	EndPort *int32 `json:"endPort,omitempty"`
}

// Protocol is an L4 protocol.
//
// +kubebuilder:validation:Enum=TCP;UDP;SCTP
type Protocol string

// The protocols.
const (
	ProtocolTCP  Protocol = "TCP"
	ProtocolUDP  Protocol = "UDP"
	ProtocolSCTP Protocol = "SCTP"
)

// MeshNetworkPolicyStatus is written by the control plane.
type MeshNetworkPolicyStatus struct {
	// ObservedGeneration is the metadata.generation the conditions
	// describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Accepted says whether meshplane validated the policy
	// and handed it to the agents.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ConditionAccepted is the condition type that says whether meshplane
// accepted the policy: True (reason Valid) when it passed meshplane's
// validation and was written for the agents; False (reason Invalid) when
// the API server took it but meshplane cannot enforce it, with the
// validation error as the message; such a policy is not handed to the
// agents.
const ConditionAccepted = "Accepted"

// Reasons of the Accepted condition.
const (
	ReasonValid   = "Valid"
	ReasonInvalid = "Invalid"
)
