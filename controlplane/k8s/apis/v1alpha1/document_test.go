package v1alpha1_test

import (
	"encoding/json"
	"reflect"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshplane/meshplane/controlplane/k8s/apis/v1alpha1"
	"github.com/meshplane/meshplane/policy"
)

// documents are MeshNetworkPolicy manifests as users write them for
// `meshctl policy apply`, covering every field of the spec.
var documents = map[string]string{
	"minimal": `apiVersion: meshplane.io/v1alpha1
kind: MeshNetworkPolicy
metadata:
  name: deny-all
spec:
  podSelector: {}
`,
	"null selector": `apiVersion: meshplane.io/v1alpha1
kind: MeshNetworkPolicy
metadata:
  name: deny-all
  namespace: prod
spec:
  podSelector:
  policyTypes: [Ingress, Egress]
`,
	"everything": `apiVersion: meshplane.io/v1alpha1
kind: MeshNetworkPolicy
metadata:
  name: api-allow
  namespace: prod
  labels:
    team: payments
  annotations:
    note: "from the runbook"
spec:
  podSelector:
    matchLabels:
      app: api
      canary: ""
    matchExpressions:
    - key: tier
      operator: In
      values: [backend, api]
    - key: legacy
      operator: DoesNotExist
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: web}
      clusters: [east, west]
    - namespaceSelector:
        matchExpressions:
        - {key: env, operator: NotIn, values: [dev]}
      podSelector: {}
      clusters: ["*"]
    - ipBlock:
        cidr: 10.0.0.0/8
        except: [10.1.0.0/16, 10.2.0.0/16]
    ports:
    - port: 8080
    - protocol: UDP
      port: dns
    - protocol: SCTP
      port: 3000
      endPort: 3100
  - {}
  egress:
  - to:
    - ipBlock: {cidr: "2001:db8::/32"}
    - namespaceSelector: {}
  - ports:
    - protocol: TCP
`,
}

// TestDocumentRoundTrip: a MeshNetworkPolicy manifest read into the Go
// type and marshalled back (plainly, and with Document when it carries a
// status) is the same policy to policy.Parse as the manifest itself.
func TestDocumentRoundTrip(t *testing.T) {
	for name, doc := range documents {
		t.Run(name, func(t *testing.T) {
			want, err := policy.Parse([]byte(doc))
			if err != nil {
				t.Fatalf("parse the manifest: %v", err)
			}
			var obj v1alpha1.MeshNetworkPolicy
			if err := yaml.UnmarshalStrict([]byte(doc), &obj); err != nil {
				t.Fatalf("read the manifest into MeshNetworkPolicy: %v", err)
			}
			plain, err := json.Marshal(&obj)
			if err != nil {
				t.Fatal(err)
			}
			check(t, "json.Marshal", plain, want)

			obj.TypeMeta = metav1.TypeMeta{} // as clients often return it
			obj.Status = v1alpha1.MeshNetworkPolicyStatus{
				ObservedGeneration: 2,
				Conditions: []metav1.Condition{{
					Type: v1alpha1.ConditionAccepted, Status: metav1.ConditionTrue,
					Reason: v1alpha1.ReasonValid, LastTransitionTime: metav1.Now(),
				}},
			}
			obj.UID, obj.ResourceVersion, obj.Generation = "6f1c3a52-1111-2222-3333-444455556666", "42", 2
			obj.CreationTimestamp = metav1.Now()
			obj.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}}
			d, err := obj.Document()
			if err != nil {
				t.Fatal(err)
			}
			check(t, "Document", d, want)
		})
	}
}

func check(t *testing.T, how string, doc []byte, want []*policy.Policy) {
	t.Helper()
	got, err := policy.Parse(doc)
	if err != nil {
		t.Fatalf("%s: policy.Parse: %v\n%s", how, err, doc)
	}
	if !reflect.DeepEqual(got, want) {
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(want)
		t.Fatalf("%s: policy differs from the manifest's\n got %s\nwant %s", how, gj, wj)
	}
	if got[0].Kind != policy.KindMeshNetworkPolicy {
		t.Fatalf("%s: kind %s", how, got[0].Kind)
	}
}

// FuzzDocument: whenever a manifest is one MeshNetworkPolicy that both
// policy.Parse and the Go type accept, Document gives the same policy.
func FuzzDocument(f *testing.F) {
	for _, doc := range documents {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		want, err := policy.Parse(doc)
		if err != nil || len(want) != 1 || want[0].Kind != policy.KindMeshNetworkPolicy {
			return
		}
		var obj v1alpha1.MeshNetworkPolicy
		if err := yaml.UnmarshalStrict(doc, &obj); err != nil {
			return
		}
		d, err := obj.Document()
		if err != nil {
			t.Fatal(err)
		}
		check(t, "Document", d, want)
	})
}
