package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// MeshIdentity is a read-only view of one security identity, named by its
// decimal ID. The control plane's leader writes it from etcd (identities/);
// `kubectl get meshidentities` lists the identities of the cluster.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=mid,categories=meshplane
// +kubebuilder:printcolumn:name="ID",type=integer,JSONPath=`.spec.id`
// +kubebuilder:printcolumn:name="Namespace",type=string,JSONPath=`.spec.namespace`
// +kubebuilder:printcolumn:name="References",type=integer,JSONPath=`.status.references`
// +kubebuilder:printcolumn:name="Labels",type=string,JSONPath=`.spec.labels`
// +kubebuilder:printcolumn:name="Nodes",type=string,JSONPath=`.status.nodes`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MeshIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec MeshIdentitySpec `json:"spec"`
	// +optional
	Status MeshIdentityStatus `json:"status,omitzero"`
}

// MeshIdentityList is a list of MeshIdentity.
//
// +kubebuilder:object:root=true
type MeshIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshIdentity `json:"items"`
}

// MeshIdentitySpec is what the identity is: fixed for its lifetime.
type MeshIdentitySpec struct {
	// ID is the numeric security identity the datapath carries.
	// +kubebuilder:validation:Minimum=1
	ID int64 `json:"id"`
	// Namespace is the value of the identity's
	// k8s:io.kubernetes.pod.namespace label: the namespace of its pods;
	// empty for identities that are not pods'.
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// Labels is the identity's label set, sorted, each label as
	// source:key=value (e.g. k8s:app=web).
	// +optional
	// +listType=atomic
	Labels []string `json:"labels,omitempty"`
}

// MeshIdentityStatus is who uses the identity.
type MeshIdentityStatus struct {
	// References is the number of nodes that hold a reference to the
	// identity (have a pod with it); 0 means it awaits garbage
	// collection.
	// +optional
	References int32 `json:"references"`
	// Nodes are the names of those nodes, sorted.
	// +optional
	// +listType=atomic
	Nodes []string `json:"nodes,omitempty"`
}
