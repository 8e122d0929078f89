package crd_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/meshplane/meshplane/controlplane/k8s/apis/v1alpha1"
	"github.com/meshplane/meshplane/controlplane/k8s/crd"
	"github.com/meshplane/meshplane/policy"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// TestInstall: the CRDs install, are Established with their names
// accepted, and installing again writes nothing.
func TestInstall(t *testing.T) {
	cfg := installed(t)
	ctx := testContext(t)
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	manifests, err := crd.Manifests()
	if err != nil {
		t.Fatal(err)
	}
	if len(manifests) != 3 {
		t.Fatalf("%d CRD manifests, want 3", len(manifests))
	}
	versions := map[string]string{}
	for _, m := range manifests {
		got, err := dyn.Resource(crdGVR).Get(ctx, m.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get CRD %s: %v", m.GetName(), err)
		}
		for _, c := range []string{"Established", "NamesAccepted"} {
			if !condition(got, c) {
				t.Errorf("CRD %s: %s is not True", m.GetName(), c)
			}
		}
		versions[m.GetName()] = got.GetResourceVersion()
	}

	// Discovery serves the kinds with their short names and category, so
	// `kubectl get mnp` and `kubectl get meshplane` work.
	c, err := crd.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := c.RESTClient().Get().AbsPath("/apis/meshplane.io/v1alpha1").DoRaw(ctx)
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	var rl metav1.APIResourceList
	if err := json.Unmarshal(raw, &rl); err != nil {
		t.Fatal(err)
	}
	served := map[string]string{}
	for _, r := range rl.APIResources {
		if len(r.ShortNames) == 1 && reflect.DeepEqual(r.Categories, []string{"meshplane"}) {
			served[r.Name] = r.ShortNames[0]
		}
	}
	if want := map[string]string{"meshnetworkpolicies": "mnp", "meshidentities": "mid", "meshnodes": "mn"}; !reflect.DeepEqual(served, want) {
		t.Errorf("served %v, want %v", served, want)
	}

	if err := crd.Install(ctx, dyn, time.Minute); err != nil {
		t.Fatalf("install again: %v", err)
	}
	for name, rv := range versions {
		got, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetResourceVersion() != rv {
			t.Errorf("CRD %s: installing an unchanged CRD wrote it (resourceVersion %s -> %s)", name, rv, got.GetResourceVersion())
		}
	}
}

// TestPrinterColumns: the columns `kubectl get` prints for each kind
// (the API server's Table, which kubectl asks for).
func TestPrinterColumns(t *testing.T) {
	cfg := installed(t)
	ctx := testContext(t)
	c, err := crd.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for resource, want := range map[string][]string{
		v1alpha1.ResourceMeshNetworkPolicies: {"Name", "Accepted", "Reason", "Age"},
		v1alpha1.ResourceMeshIdentities:      {"Name", "ID", "Namespace", "References", "Labels", "Nodes", "Age"},
		v1alpha1.ResourceMeshNodes:           {"Name", "Health", "Agent", "Addresses", "Pod CIDRs", "Policy Revision", "Version", "Age"},
	} {
		raw, err := c.RESTClient().Get().Resource(resource).
			SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
		if err != nil {
			t.Fatalf("%s: %v", resource, err)
		}
		var table metav1.Table
		if err := json.Unmarshal(raw, &table); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, col := range table.ColumnDefinitions {
			got = append(got, col.Name)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("kubectl get %s: columns %q, want %q", resource, got, want)
		}
	}
}

func condition(u *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == typ && m["status"] == "True" {
			return true
		}
	}
	return false
}

// TestSchemaRejectsInvalid: the API server's OpenAPI validation turns
// away MeshNetworkPolicies of the wrong shape before meshplane sees them.
func TestSchemaRejectsInvalid(t *testing.T) {
	cfg := installed(t)
	ctx := testContext(t)
	ns := kube.Namespace(t)
	c, err := crd.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, spec string
		strict     bool   // fieldValidation=Strict, as kubectl apply uses
		want       string // in the API server's message
	}{
		{"no podSelector", `{}`, false, "spec.podSelector: Required value"},
		{"no spec", ``, false, "spec: Required value"},
		{"policy type", `{"podSelector":{},"policyTypes":["Sideways"]}`, false, `spec.policyTypes[0]: Unsupported value: "Sideways"`},
		{"protocol", `{"podSelector":{},"ingress":[{"ports":[{"protocol":"ICMP"}]}]}`, false, `spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP"`},
		{"endPort", `{"podSelector":{},"egress":[{"ports":[{"port":1,"endPort":70000}]}]}`, false, "spec.egress[0].ports[0].endPort: Invalid value: 70000"},
		{"port type", `{"podSelector":{},"ingress":[{"ports":[{"port":true}]}]}`, false, "spec.ingress[0].ports[0].port"},
		{"ipBlock without cidr", `{"podSelector":{},"ingress":[{"from":[{"ipBlock":{}}]}]}`, false, "spec.ingress[0].from[0].ipBlock.cidr: Required value"},
		{"rules not a list", `{"podSelector":{},"ingress":{"from":[]}}`, false, "spec.ingress: Invalid value"},
		{"clusters not strings", `{"podSelector":{},"ingress":[{"from":[{"clusters":[1]}]}]}`, false, "spec.ingress[0].from[0].clusters[0]: Invalid value"},
		{"unknown field", `{"podSelector":{},"ingres":[]}`, true, `unknown field "spec.ingres"`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := map[string]any{
				"apiVersion": "meshplane.io/v1alpha1", "kind": "MeshNetworkPolicy",
				"metadata": map[string]any{"name": "bad-" + strings.ReplaceAll(strings.ToLower(tt.name), " ", "-")},
			}
			if tt.spec != "" {
				var spec any
				if err := json.Unmarshal([]byte(tt.spec), &spec); err != nil {
					t.Fatal(err)
				}
				obj["spec"] = spec
			}
			body, _ := json.Marshal(obj)
			req := c.RESTClient().Post().Namespace(ns).Resource(v1alpha1.ResourceMeshNetworkPolicies).Body(body)
			if tt.strict {
				req = req.Param("fieldValidation", "Strict")
			}
			err := req.Do(ctx).Error()
			if err == nil {
				t.Fatalf("case %d: the API server took %s", i, body)
			}
			if !apierrors.IsInvalid(err) && !apierrors.IsBadRequest(err) {
				t.Fatalf("error %v is not Invalid or BadRequest", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
		})
	}
}

// TestPolicyRoundTrip: a MeshNetworkPolicy written to the API server and
// read back is, to policy.Parse, the policy of the YAML it was made from.
func TestPolicyRoundTrip(t *testing.T) {
	cfg := installed(t)
	ctx := testContext(t)
	ns := kube.Namespace(t)
	c, err := crd.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.ReplaceAll(everything, "NAMESPACE", ns)
	want, err := policy.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("parse the manifest: %v", err)
	}
	var obj v1alpha1.MeshNetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &obj); err != nil {
		t.Fatal(err)
	}
	if err := c.RESTClient().Post().Namespace(ns).Resource(v1alpha1.ResourceMeshNetworkPolicies).
		Param("fieldValidation", "Strict").Body(&obj).Do(ctx).Error(); err != nil {
		t.Fatalf("create: %v", err)
	}
	got, err := c.GetMeshNetworkPolicy(ctx, ns, obj.Name)
	if err != nil {
		t.Fatal(err)
	}
	d, err := got.Document()
	if err != nil {
		t.Fatal(err)
	}
	back, err := policy.Parse(d)
	if err != nil {
		t.Fatalf("policy.Parse of the stored object: %v\n%s", err, d)
	}
	if !reflect.DeepEqual(back, want) {
		t.Fatalf("stored policy differs\n got %s\nwant %s", mustJSON(back), mustJSON(want))
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// everything uses every field of a MeshNetworkPolicy's spec.
const everything = `apiVersion: meshplane.io/v1alpha1
kind: MeshNetworkPolicy
metadata:
  name: api-allow
  namespace: NAMESPACE
  labels:
    team: payments
spec:
  podSelector:
    matchLabels:
      app: api
    matchExpressions:
    - key: tier
      operator: In
      values: [backend, api]
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
        except: [10.1.0.0/16]
    ports:
    - port: 8080
    - protocol: UDP
      port: dns
    - protocol: SCTP
      port: 3000
      endPort: 3100
  egress:
  - to:
    - ipBlock: {cidr: "2001:db8::/32"}
  - ports:
    - protocol: TCP
`
