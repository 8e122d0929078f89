package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group and Version of meshplane's API.
const (
	Group   = "meshplane.io"
	Version = "v1alpha1"
)

// GroupVersion is meshplane.io/v1alpha1.
var GroupVersion = schema.GroupVersion{Group: Group, Version: Version}

// Kinds and resources (plural, lowercase names in API paths).
const (
	KindMeshNetworkPolicy       = "MeshNetworkPolicy"
	KindMeshIdentity            = "MeshIdentity"
	KindMeshNode                = "MeshNode"
	ResourceMeshNetworkPolicies = "meshnetworkpolicies"
	ResourceMeshIdentities      = "meshidentities"
	ResourceMeshNodes           = "meshnodes"
)

var (
	schemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme registers the kinds of meshplane.io/v1alpha1.
	AddToScheme = schemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&MeshNetworkPolicy{}, &MeshNetworkPolicyList{},
		&MeshIdentity{}, &MeshIdentityList{},
		&MeshNode{}, &MeshNodeList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
