package policy

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// realistic is a policy as people write them for Kubernetes, with a
// comment, a List of two, and a MeshNetworkPolicy.
const realistic = `# Allow the frontend and the monitoring namespace to reach the API.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: api-allow
  namespace: prod
  labels:
    team: payments
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: "{}"
  resourceVersion: "12345"
  uid: 6f1c3a52-1111-2222-3333-444455556666
  creationTimestamp: "2024-01-01T00:00:00Z"
  generation: 3
spec:
  podSelector:
    matchLabels:
      app: api
    matchExpressions:
    - key: tier
      operator: In
      values: [backend, "api"]
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: monitoring
      podSelector:
        matchExpressions:
        - {key: app.kubernetes.io/name, operator: Exists}
    ports:
    - protocol: TCP
      port: 8080
    - port: metrics
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/8
        except:
        - 10.96.0.0/12
    ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 32000
      endPort: 32768
  - to:
    - namespaceSelector: {}
---
---
# An empty document above and a deny-all below.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny
spec:
  podSelector: {}
---
apiVersion: meshplane.io/v1alpha1
kind: MeshNetworkPolicy
metadata:
  name: global-db
  namespace: prod
spec:
  podSelector:
    matchLabels: {app: db}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: api}}
      clusters: ["*"]
    - namespaceSelector: {matchLabels: {team: payments}}
      clusters: [east, west]
    ports:
    - protocol: SCTP
`

func TestParseRealistic(t *testing.T) {
	ps, err := Parse([]byte(realistic))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 {
		t.Fatalf("got %d policies, want 3", len(ps))
	}
	end := int32(32768)
	want := []*Policy{
		{Kind: KindNetworkPolicy, Namespace: "prod", Name: "api-allow", Spec: Spec{
			PodSelector: LabelSelector{
				MatchLabels:      map[string]string{"app": "api"},
				MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: OpIn, Values: []string{"backend", "api"}}},
			},
			PolicyTypes: []Type{TypeIngress, TypeEgress},
			Ingress: []IngressRule{{
				From: []Peer{
					{PodSelector: &LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}},
					{
						NamespaceSelector: &LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "monitoring"}},
						PodSelector:       &LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "app.kubernetes.io/name", Operator: OpExists}}},
					},
				},
				Ports: []Port{{Protocol: ProtocolTCP, Port: PortNumber(8080)}, {Protocol: ProtocolTCP, Port: PortName("metrics")}},
			}},
			Egress: []EgressRule{
				{
					To:    []Peer{{IPBlock: &IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.96.0.0/12"}}}},
					Ports: []Port{{Protocol: ProtocolUDP, Port: PortNumber(53)}, {Protocol: ProtocolTCP, Port: PortNumber(32000), EndPort: &end}},
				},
				{To: []Peer{{NamespaceSelector: &LabelSelector{}}}},
			},
		}},
		{Kind: KindNetworkPolicy, Namespace: "default", Name: "default-deny", Spec: Spec{
			PolicyTypes: []Type{TypeIngress},
		}},
		{Kind: KindMeshNetworkPolicy, Namespace: "prod", Name: "global-db", Spec: Spec{
			PodSelector: LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			PolicyTypes: []Type{TypeIngress},
			Ingress: []IngressRule{{
				From: []Peer{
					{PodSelector: &LabelSelector{MatchLabels: map[string]string{"app": "api"}}, Clusters: []string{"*"}},
					{NamespaceSelector: &LabelSelector{MatchLabels: map[string]string{"team": "payments"}}, Clusters: []string{"east", "west"}},
				},
				Ports: []Port{{Protocol: ProtocolSCTP}},
			}},
		}},
	}
	for i := range want {
		if !reflect.DeepEqual(ps[i], want[i]) {
			got, _ := ps[i].Encode()
			exp, _ := want[i].Encode()
			t.Errorf("policy %d:\n got %s\nwant %s", i, got, exp)
		}
	}
}

func TestParseDefaults(t *testing.T) {
	tests := []struct {
		name, spec string
		want       []Type
	}{
		{"no rules", "podSelector: {}", []Type{TypeIngress}},
		{"ingress only", "podSelector: {}\n  ingress: [{}]", []Type{TypeIngress}},
		{"egress rules", "podSelector: {}\n  egress: [{}]", []Type{TypeIngress, TypeEgress}},
		// As in Kubernetes: an empty egress list does not make it an
		// egress policy.
		{"empty egress", "podSelector: {}\n  egress: []", []Type{TypeIngress}},
		{"explicit egress", "podSelector: {}\n  policyTypes: [Egress]", []Type{TypeEgress}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := Parse([]byte(npDoc(tt.spec)))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(ps[0].Spec.PolicyTypes, tt.want) {
				t.Fatalf("policyTypes = %v, want %v", ps[0].Spec.PolicyTypes, tt.want)
			}
		})
	}
}

// npDoc is a NetworkPolicy named "p" with the given spec body (indented by
// two spaces after the first line).
func npDoc(spec string) string {
	return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  " + spec + "\n"
}

func meshDoc(spec string) string {
	return strings.Replace(strings.Replace(npDoc(spec), "networking.k8s.io/v1", "meshplane.io/v1alpha1", 1), "kind: NetworkPolicy", "kind: MeshNetworkPolicy", 1)
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []string // substrings of the error
	}{
		{"not yaml", "a: [", []string{"document 1", "line 1"}},
		{"yaml error line is absolute", npDoc("podSelector: {}") + "---\nkind: NetworkPolicy\n  bad: indent\n", []string{"document 2", "line 10"}},
		{"empty input", "# nothing\n---\n", []string{"no policy documents"}},
		{"scalar document", "hello", []string{"document 1", "is the string \"hello\""}},
		{"no kind", "apiVersion: v1\nmetadata: {name: x}\nspec: {podSelector: {}}", []string{"kind: missing"}},
		{"other kind", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}", []string{`"x" (document 1): kind: Deployment (apiVersion apps/v1) is not a policy`}},
		{"wrong apiVersion", strings.Replace(npDoc("podSelector: {}"), "networking.k8s.io/v1", "networking.k8s.io/v1beta1", 1), []string{"apiVersion: NetworkPolicy has apiVersion networking.k8s.io/v1"}},
		{"no name", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: a}\nspec: {podSelector: {}}", []string{"document 1: metadata.name: missing"}},
		{"bad name", strings.Replace(npDoc("podSelector: {}"), "name: p", "name: Allow_Web", 1), []string{`policy "Allow_Web" (document 1): metadata.name: "Allow_Web" must be`}},
		{"bad namespace", strings.Replace(npDoc("podSelector: {}"), "namespace: ns", "namespace: a.b", 1), []string{"metadata.namespace: \"a.b\" must be 1-63"}},
		{"unknown metadata field", strings.Replace(npDoc("podSelector: {}"), "  name: p", "  name: p\n  nam: q", 1), []string{"metadata.nam: unknown field"}},
		{"unknown top field", npDoc("podSelector: {}") + "status: {}\n", []string{"status: unknown field; the fields here are apiVersion, kind, metadata, spec"}},
		{"no spec", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}", []string{"spec: missing"}},
		{"no podSelector", npDoc("ingress: [{}]"), []string{"spec.podSelector: missing; write podSelector: {}"}},
		{"unknown spec field", npDoc("podSelector: {}\n  ingres: []"), []string{"spec.ingres: unknown field"}},
		{"unknown rule field", npDoc("podSelector: {}\n  ingress:\n  - fromm: []"), []string{"spec.ingress[0].fromm: unknown field; the fields here are ports, from"}},
		{"to in ingress", npDoc("podSelector: {}\n  ingress:\n  - to: []"), []string{"spec.ingress[0].to: unknown field"}},
		{"rules not a list", npDoc("podSelector: {}\n  ingress: {from: []}"), []string{"spec.ingress: is a mapping; it must be a list"}},
		{"bad policy type", npDoc("podSelector: {}\n  policyTypes: [ingress]"), []string{`spec.policyTypes[0]: "ingress" is not a policy type; use Ingress or Egress`}},
		{"duplicate policy type", npDoc("podSelector: {}\n  policyTypes: [Egress, Egress]"), []string{"spec.policyTypes[1]: Egress is listed twice"}},
		{"bad label key", npDoc("podSelector:\n    matchLabels: {\"bad key\": x}"), []string{`spec.podSelector.matchLabels: key "bad key" contains ' '`}},
		{"bad label value", npDoc("podSelector:\n    matchLabels: {app: -web}"), []string{`spec.podSelector.matchLabels: key "app": value "-web" must start and end`}},
		{"label value not a string", npDoc("podSelector:\n    matchLabels: {version: 1}"), []string{`spec.podSelector.matchLabels.version: is the number 1; it must be a string: quote it ("1")`}},
		{"bad key prefix", npDoc("podSelector:\n    matchLabels: {Example.COM/app: x}"), []string{`prefix "Example.COM" must be`}},
		{"bad operator", npDoc("podSelector:\n    matchExpressions: [{key: app, operator: Equals, values: [x]}]"), []string{`spec.podSelector.matchExpressions[0].operator: "Equals" is not an operator`}},
		{"In without values", npDoc("podSelector:\n    matchExpressions: [{key: app, operator: In}]"), []string{"spec.podSelector.matchExpressions[0].values: In needs at least one value"}},
		{"Exists with values", npDoc("podSelector:\n    matchExpressions: [{key: app, operator: Exists, values: [a]}]"), []string{"matchExpressions[0].values: Exists takes no values"}},
		{"empty peer", npDoc("podSelector: {}\n  ingress:\n  - from: [{}]"), []string{"spec.ingress[0].from[0]: empty peer"}},
		{"ipBlock with selector", npDoc("podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}"), []string{"spec.ingress[0].from[0]: ipBlock cannot be combined"}},
		{"bad cidr", npDoc("podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0}}]"), []string{`spec.egress[0].to[0].ipBlock.cidr: "10.0.0.0" is not a CIDR`}},
		{"unmasked cidr", npDoc("podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.1.2.3/8}}]"), []string{"spec.egress[0].to[0].ipBlock.cidr: 10.1.2.3/8 has host bits set; write the network address: 10.0.0.0/8"}},
		{"missing cidr", npDoc("podSelector: {}\n  egress:\n  - to: [{ipBlock: {except: [10.0.0.0/8]}}]"), []string{"ipBlock.cidr: missing"}},
		{"except outside", "---\n" + npDoc("podSelector: {}") + "---\n" + strings.Replace(npDoc("podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {}\n    - ipBlock: {cidr: 192.168.0.0/16, except: [10.0.0.0/8]}"), "name: p", "name: deny-all", 1),
			[]string{`policy "deny-all" (document 2): spec.ingress[0].from[1].ipBlock.except[0]: 10.0.0.0/8 is not inside cidr 192.168.0.0/16`}},
		{"except equal to cidr", npDoc("podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]"), []string{"except[0]: 10.0.0.0/8 is not inside cidr"}},
		{"except other family", npDoc("podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [\"::/1\"]}}]"), []string{"except[0]: ::/1 is not inside cidr"}},
		{"port zero", npDoc("podSelector: {}\n  ingress:\n  - ports: [{port: 0}]"), []string{"spec.ingress[0].ports[0].port: 0 is not a port; use 1-65535"}},
		{"port too big", npDoc("podSelector: {}\n  ingress:\n  - ports: [{port: 70000}]"), []string{"ports[0].port: 70000 is not a port"}},
		{"port huge", npDoc("podSelector: {}\n  ingress:\n  - ports: [{port: 99999999999}]"), []string{"ports[0].port: 99999999999 is out of range"}},
		{"port fraction", npDoc("podSelector: {}\n  ingress:\n  - ports: [{port: 80.5}]"), []string{"ports[0].port: 80.5 is not a whole number"}},
		{"quoted number port", npDoc("podSelector: {}\n  ingress:\n  - ports: [{port: \"80\"}]"), []string{`ports[0].port: "80" is a number written as a string; write port: 80 without quotes`}},
		{"bad port name", npDoc("podSelector: {}\n  ingress:\n  - ports: [{port: HTTP}]"), []string{`port name "HTTP" contains 'H'`}},
		{"long port name", npDoc("podSelector: {}\n  ingress:\n  - ports: [{port: a-very-long-port-name}]"), []string{"is 21 characters long"}},
		{"port name dashes", npDoc("podSelector: {}\n  ingress:\n  - ports: [{port: a--b}]"), []string{`port name "a--b" is malformed`}},
		{"bad protocol", npDoc("podSelector: {}\n  ingress:\n  - ports: [{protocol: tcp, port: 80}]"), []string{`spec.ingress[0].ports[0].protocol: "tcp" is not supported; use TCP, UDP or SCTP`}},
		{"endPort without port", npDoc("podSelector: {}\n  egress:\n  - ports: [{endPort: 90}]"), []string{"spec.egress[0].ports[0].endPort: needs port"}},
		{"endPort with named port", npDoc("podSelector: {}\n  egress:\n  - ports: [{port: http, endPort: 90}]"), []string{`endPort: needs a numeric port, but port is the named port "http"`}},
		{"endPort below port", npDoc("podSelector: {}\n  egress:\n  - ports: [{port: 8080, endPort: 80}]"), []string{"endPort: 80 is less than port 8080"}},
		{"endPort too big", npDoc("podSelector: {}\n  egress:\n  - ports: [{port: 8080, endPort: 65536}]"), []string{"endPort: 65536 is not a port"}},
		{"clusters in NetworkPolicy", npDoc("podSelector: {}\n  ingress:\n  - from: [{podSelector: {}, clusters: [east]}]"), []string{"spec.ingress[0].from[0].clusters: clusters is a MeshNetworkPolicy field"}},
		{"clusters on ipBlock", meshDoc("podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, clusters: [east]}]"), []string{"from[0].clusters: applies to podSelector and namespaceSelector only"}},
		{"bad cluster name", meshDoc("podSelector: {}\n  ingress:\n  - from: [{podSelector: {}, clusters: [East_1]}]"), []string{`from[0].clusters[0]: "East_1" is not a cluster name`}},
		{"star with others", meshDoc("podSelector: {}\n  ingress:\n  - from: [{podSelector: {}, clusters: [east, \"*\"]}]"), []string{`clusters[1]: "*" already means every cluster`}},
		{"duplicate", npDoc("podSelector: {}") + "---\n" + npDoc("podSelector: {}"), []string{`policy "ns/p" (document 2): defined again; document 1 already defines it`}},
		{"duplicate across kinds", npDoc("podSelector: {}") + "---\n" + meshDoc("podSelector: {}"), []string{"defined again"}},
		{"list item", "apiVersion: v1\nkind: List\nitems:\n- " + strings.ReplaceAll(npDoc("podSelector: {}\n  ingress: [{ports: [{port: 0}]}]"), "\n", "\n  "), []string{`policy "p" (document 1, items[0]): spec.ingress[0].ports[0].port: 0 is not a port`}},
		{"list items not a list", "apiVersion: v1\nkind: List\nitems: {}", []string{"document 1: items: is a mapping; it must be a list"}},
		{"duplicate yaml key", npDoc("podSelector: {}\n  podSelector: {}"), []string{"document 1", "already set in map"}},
		{"several problems", npDoc("podSelector: {}\n  ingress:\n  - ports: [{port: 0}, {protocol: icmp}]"), []string{"ports[0].port: 0", "ports[1].protocol: \"icmp\""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := Parse([]byte(tt.input))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", ps)
			}
			if ps != nil {
				t.Errorf("Parse returned policies with an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n  %v\ndoes not contain\n  %s", err, w)
				}
			}
		})
	}
}

func TestParseFieldError(t *testing.T) {
	_, err := Parse([]byte(npDoc("podSelector: {}\n  ingress:\n  - ports: [{port: 0}]")))
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is not a *FieldError", err)
	}
	want := FieldError{Policy: "p", Document: 1, Field: "spec.ingress[0].ports[0].port", Detail: fe.Detail}
	if *fe != want {
		t.Fatalf("FieldError = %+v, want %+v", *fe, want)
	}
}

func TestParseAllOrNothing(t *testing.T) {
	input := npDoc("podSelector: {}") + "---\n" + strings.Replace(npDoc("podSelector: {}\n  policyTypes: [Sideways]"), "name: p", "name: q", 1)
	ps, err := Parse([]byte(input))
	if err == nil || ps != nil {
		t.Fatalf("Parse = %v, %v; want no policies and an error", ps, err)
	}
}

func TestParseNulls(t *testing.T) {
	// YAML keys with no value are null, which Kubernetes reads as absent;
	// a null selector is the empty one.
	ps, err := Parse([]byte(npDoc("podSelector:\n  ingress:\n  - from:\n    - namespaceSelector:\n    ports:\n  egress:")))
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{
		PolicyTypes: []Type{TypeIngress},
		Ingress:     []IngressRule{{From: []Peer{{NamespaceSelector: &LabelSelector{}}}}},
	}
	if !reflect.DeepEqual(ps[0].Spec, want) {
		t.Fatalf("spec = %+v, want %+v", ps[0].Spec, want)
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	ps, err := Parse([]byte(realistic))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		t.Run(p.Key(), func(t *testing.T) {
			b, err := p.Encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode(%s): %v", b, err)
			}
			if !reflect.DeepEqual(got, p) {
				t.Fatalf("Decode(Encode(p)) = %+v, want %+v", got, p)
			}
			b2, _ := got.Encode()
			if string(b2) != string(b) {
				t.Fatalf("Encode is not canonical:\n%s\n%s", b, b2)
			}
			m, err := p.Manifest()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse(m)
			if err != nil {
				t.Fatalf("Parse(Manifest()) of\n%s: %v", m, err)
			}
			if !reflect.DeepEqual(back[0], p) {
				t.Fatalf("Parse(Manifest(p)) = %+v, want %+v", back[0], p)
			}
		})
	}
}

func TestEncodeDefaults(t *testing.T) {
	p := &Policy{Kind: KindNetworkPolicy, Name: "x", Spec: Spec{
		Egress: []EgressRule{{Ports: []Port{{Port: PortNumber(53)}}}},
	}}
	b, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"kind":"NetworkPolicy","namespace":"default","name":"x","spec":{"podSelector":{},"policyTypes":["Ingress","Egress"],"egress":[{"ports":[{"protocol":"TCP","port":53}]}]}}`
	if string(b) != want {
		t.Fatalf("Encode = %s\nwant     %s", b, want)
	}
	if p.Namespace != "" || p.Spec.Egress[0].Ports[0].Protocol != "" {
		t.Fatal("Encode modified the policy")
	}
	bad := &Policy{Kind: KindNetworkPolicy, Name: "x", Spec: Spec{Ingress: []IngressRule{{Ports: []Port{{Port: PortNumber(0)}}}}}}
	if _, err := bad.Encode(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `policy "default/x": spec.ingress[0].ports[0].port`) {
		t.Fatalf("Encode of an invalid policy: %v", err)
	}
}

func TestDecodeInvalid(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"not json", "{", "not JSON"},
		{"trailing data", `{"kind":"NetworkPolicy"} {}`, "not JSON"},
		{"null", "null", "is null"},
		{"array", "[]", "is a list"},
		{"unknown field", `{"kind":"NetworkPolicy","name":"x","spec":{"podSelector":{}},"extra":1}`, `policy "default/x": extra: unknown field`},
		{"yaml shape", `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"x"},"spec":{"podSelector":{}}}`, "apiVersion: unknown field"},
		{"invalid", `{"kind":"NetworkPolicy","namespace":"a","name":"x","spec":{"podSelector":{},"ingress":[{"ports":[{"port":0}]}]}}`, `policy "a/x": spec.ingress[0].ports[0].port: 0 is not a port`},
		{"bad kind", `{"kind":"Policy","name":"x","spec":{"podSelector":{}}}`, `kind: "Policy" is not a policy kind`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Decode([]byte(tt.input))
			if err == nil {
				t.Fatalf("Decode = %+v, want an error", p)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Decode error %q, want ErrInvalid containing %q", err, tt.want)
			}
		})
	}
}

func TestLabelSelectorString(t *testing.T) {
	tests := []struct {
		sel  LabelSelector
		want string
	}{
		{LabelSelector{}, ""},
		{LabelSelector{MatchLabels: map[string]string{"tier": "web", "app": "shop"}}, "app=shop,tier=web"},
		{LabelSelector{MatchExpressions: []LabelSelectorRequirement{
			{Key: "env", Operator: OpNotIn, Values: []string{"dev", "qa"}},
			{Key: "canary", Operator: OpDoesNotExist},
			{Key: "app", Operator: OpIn, Values: []string{"a", "b"}},
			{Key: "team", Operator: OpExists},
		}}, "app in (a,b),!canary,env notin (dev,qa),team"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.sel.String(); got != tt.want {
				t.Fatalf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}
