package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// MeshNode is a read-only view of one node of the mesh, named like the
// node. The control plane's leader writes it from the node's record in
// etcd (nodes/<node>) and its gossip health; `kubectl get meshnodes`
// lists the nodes with their CIDRs and health.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=mn,categories=meshplane
// +kubebuilder:printcolumn:name="Health",type=string,JSONPath=`.status.health`
// +kubebuilder:printcolumn:name="Agent",type=string,JSONPath=`.status.agent`
// +kubebuilder:printcolumn:name="Addresses",type=string,JSONPath=`.spec.addresses`
// +kubebuilder:printcolumn:name="Pod CIDRs",type=string,JSONPath=`.spec.podCIDRs`
// +kubebuilder:printcolumn:name="Policy Revision",type=integer,JSONPath=`.status.policyRevision`
// +kubebuilder:printcolumn:name="Version",type=string,JSONPath=`.status.agentVersion`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MeshNode struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec MeshNodeSpec `json:"spec,omitzero"`
	// +optional
	Status MeshNodeStatus `json:"status,omitzero"`
}

// MeshNodeList is a list of MeshNode.
//
// +kubebuilder:object:root=true
type MeshNodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshNode `json:"items"`
}

// MeshNodeSpec is where the node is: its addresses and pod CIDRs.
type MeshNodeSpec struct {
	// Addresses are the node's own IP addresses (the targets of routes to
	// its pod CIDRs).
	// +optional
	// +listType=atomic
	Addresses []string `json:"addresses,omitempty"`
	// PodCIDRs are the CIDRs the node gives its pods' addresses from.
	// +optional
	// +listType=atomic
	PodCIDRs []string `json:"podCIDRs,omitempty"`
}

// MeshNodeStatus is how the node is doing.
type MeshNodeStatus struct {
	// Health is the node's gossip state as the control plane's health
	// member sees it.
	// +optional
	Health NodeHealth `json:"health,omitempty"`
	// Agent is the state of the node's mesh-agent.
	// +optional
	Agent AgentState `json:"agent,omitempty"`
	// AgentVersion is the version the agent publishes.
	// +optional
	AgentVersion string `json:"agentVersion,omitempty"`
	// PolicyRevision is the etcd revision up to which the node enforces
	// the cluster's policies; 0: not known yet.
	// +optional
	PolicyRevision int64 `json:"policyRevision,omitempty"`
}

// NodeHealth is a node's gossip state: the names package health gives its
// states (health.State.String), or unknown.
//
// +kubebuilder:validation:Enum=alive;suspect;dead;left;unresponsive;restarting;unknown
type NodeHealth string

// The health states.
const (
	HealthAlive        NodeHealth = "alive"
	HealthSuspect      NodeHealth = "suspect"
	HealthDead         NodeHealth = "dead"
	HealthLeft         NodeHealth = "left"
	HealthUnresponsive NodeHealth = "unresponsive"
	HealthRestarting   NodeHealth = "restarting"
	// HealthUnknown: the control plane has no gossip view of the node.
	HealthUnknown NodeHealth = "unknown"
)

// AgentState is what the node's record says about its agent.
//
// +kubebuilder:validation:Enum=Starting;Ready
type AgentState string

// The agent states.
const (
	// AgentStarting: the node holds its pod CIDRs but its agent has not
	// published its addresses and gossip endpoint yet.
	AgentStarting AgentState = "Starting"
	// AgentReady: the agent published its addresses and gossip endpoint.
	AgentReady AgentState = "Ready"
)
