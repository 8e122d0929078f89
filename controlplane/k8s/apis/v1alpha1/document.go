package v1alpha1

import (
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Document returns the policy as the document policy.Parse reads (and
// `meshctl policy apply` takes): apiVersion, kind, metadata and spec as
// JSON. Status is left out, since a policy document has none, and
// apiVersion and kind are set whether or not the object carries them
// (objects read through a client often come without).
func (p *MeshNetworkPolicy) Document() ([]byte, error) {
	return json.Marshal(struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata"`
		Spec              MeshNetworkPolicySpec `json:"spec"`
	}{
		TypeMeta:   metav1.TypeMeta{APIVersion: GroupVersion.String(), Kind: KindMeshNetworkPolicy},
		ObjectMeta: p.ObjectMeta,
		Spec:       p.Spec,
	})
}
