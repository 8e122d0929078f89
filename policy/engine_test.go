package policy

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/meshplane/meshplane/labels"
)

const localCluster = "east"

// podLabelSet is the identity label set of a pod, built as the agent does.
func podLabelSet(t testing.TB, cluster, ns string, pod map[string]string, nsLabels map[string]string) labels.Set {
	t.Helper()
	s, err := labels.NewSet(PodLabels(cluster, ns, pod, nsLabels)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// mustParse parses YAML that holds exactly one policy.
func mustParse(t testing.TB, doc string) *Policy {
	t.Helper()
	ps, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 {
		t.Fatalf("%d policies, want 1", len(ps))
	}
	return ps[0]
}

// policyDoc is a policy of kind in namespace prod named name, with a spec
// body indented by two spaces.
func policyDoc(kind, name, spec string) string {
	api := APIVersionNetworkPolicy
	if kind == KindMeshNetworkPolicy {
		api = APIVersionMeshNetworkPolicy
	}
	return "apiVersion: " + api + "\nkind: " + kind + "\nmetadata:\n  name: " + name + "\n  namespace: prod\nspec:\n" + indent(spec)
}

func indent(s string) string {
	lines := strings.Split(strings.Trim(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return strings.Join(lines, "\n") + "\n"
}

// The test world: identities, local endpoints and cluster-wide named ports.
const (
	idProdWeb    = 1001
	idProdAPI    = 1002
	idDevWeb     = 1003
	idMonProm    = 1004
	idProdCanary = 1005
	idWestWeb    = 2001
	idCIDR10     = 3001 // 10.0.0.0/8
	idCIDR1096   = 3002 // 10.96.0.0/12
	idCIDR192    = 3003 // 192.168.1.0/24
	idCIDR6      = 3004 // 2001:db8::/32

	epAPI = 1 // prod app=api
	epWeb = 2 // prod app=web
	epDev = 3 // dev app=web
)

var nsLabels = map[string]map[string]string{
	"prod":       {"team": "payments", "env": "prod"},
	"dev":        {"team": "dev", "env": "dev"},
	"monitoring": {"team": "sre"},
}

func testIdentities(t testing.TB) []Identity {
	pod := func(id uint32, cluster, ns string, l map[string]string) Identity {
		return Identity{ID: id, Labels: podLabelSet(t, cluster, ns, l, nsLabels[ns])}
	}
	cidr := func(id uint32, p string) Identity { return Identity{ID: id, CIDR: netip.MustParsePrefix(p)} }
	return []Identity{
		pod(idProdWeb, localCluster, "prod", map[string]string{"app": "web"}),
		pod(idProdAPI, localCluster, "prod", map[string]string{"app": "api"}),
		pod(idDevWeb, localCluster, "dev", map[string]string{"app": "web"}),
		pod(idMonProm, localCluster, "monitoring", map[string]string{"app": "prometheus"}),
		pod(idProdCanary, localCluster, "prod", map[string]string{"app": "web", "canary": "true"}),
		pod(idWestWeb, "west", "prod", map[string]string{"app": "web"}),
		cidr(idCIDR10, "10.0.0.0/8"),
		cidr(idCIDR1096, "10.96.0.0/12"),
		cidr(idCIDR192, "192.168.1.0/24"),
		cidr(idCIDR6, "2001:db8::/32"),
		// Reserved identities are ignored, labels or not.
		{ID: 6, Labels: podLabelSet(t, localCluster, "prod", map[string]string{"app": "web"}, nil)},
	}
}

func testEndpoints(t testing.TB) []Endpoint {
	tcp := func(name string, port uint16) NamedPort { return NamedPort{Name: name, Port: port, Protocol: ProtoTCP} }
	return []Endpoint{
		{ID: epAPI, Identity: idProdAPI, Labels: podLabelSet(t, localCluster, "prod", map[string]string{"app": "api"}, nsLabels["prod"]),
			Ports: []NamedPort{tcp("http", 8080), tcp("metrics", 9090)}},
		{ID: epWeb, Identity: idProdWeb, Labels: podLabelSet(t, localCluster, "prod", map[string]string{"app": "web"}, nsLabels["prod"]),
			Ports: []NamedPort{tcp("http", 80)}},
		{ID: epDev, Identity: idDevWeb, Labels: podLabelSet(t, localCluster, "dev", map[string]string{"app": "web"}, nsLabels["dev"])},
	}
}

func testNamedPorts() map[string][]NamedPort {
	return map[string][]NamedPort{
		"10.0.1.1": {{Name: "dns", Port: 53, Protocol: ProtoUDP}},
		"10.0.1.2": {{Name: "dns", Port: 5353, Protocol: ProtoUDP}, {Name: "http", Port: 8080, Protocol: ProtoTCP}},
		"10.0.1.3": {{Name: "dns", Port: 53, Protocol: ProtoUDP}}, // same as 10.0.1.1: one entry
	}
}

// newTestEngine feeds the test world and the policies to a new engine.
func newTestEngine(t testing.TB, policies ...*Policy) *Engine {
	e := NewEngine(localCluster)
	for _, p := range policies {
		e.SetPolicy(p)
	}
	for _, id := range testIdentities(t) {
		e.SetIdentity(id)
	}
	for _, ep := range testEndpoints(t) {
		e.SetEndpoint(ep)
	}
	for owner, ports := range testNamedPorts() {
		e.SetNamedPorts(owner, ports)
	}
	return e
}

func in(id uint32) Entry { return Entry{Direction: Ingress, Identity: id} }

func inPort(id uint32, proto uint8, port, end uint16) Entry {
	return Entry{Direction: Ingress, Identity: id, Protocol: proto, Port: port, EndPort: end}
}

func out(id uint32) Entry { return Entry{Direction: Egress, Identity: id} }

func outPort(id uint32, proto uint8, port, end uint16) Entry {
	return Entry{Direction: Egress, Identity: id, Protocol: proto, Port: port, EndPort: end}
}

func sortedEntries(es ...Entry) []Entry {
	slices.SortFunc(es, compareEntries)
	return es
}

// TestEngineSemantics checks Kubernetes NetworkPolicy semantics (and the
// mesh extension) on the entries of the prod app=api endpoint.
func TestEngineSemantics(t *testing.T) {
	type enforced struct{ ingress, egress bool }
	np, mesh := KindNetworkPolicy, KindMeshNetworkPolicy
	tests := []struct {
		name     string
		policies []string // kind|spec
		want     []Entry  // of epAPI
		enforced enforced // of epAPI
	}{
		{name: "no policy: not enforced"},
		{name: "deny all ingress", policies: []string{np + "|podSelector: {}"}, enforced: enforced{ingress: true}},
		{name: "empty ingress list denies", policies: []string{np + "|podSelector: {}\ningress: []"}, enforced: enforced{ingress: true}},
		{name: "policy selecting other pods", policies: []string{np + "|podSelector: {matchLabels: {app: web}}"}},
		{name: "allow all ingress", policies: []string{np + "|podSelector: {}\ningress: [{}]"},
			want: []Entry{in(0)}, enforced: enforced{ingress: true}},
		{name: "allow all: empty from list", policies: []string{np + "|podSelector: {}\ningress: [{from: []}]"},
			want: []Entry{in(0)}, enforced: enforced{ingress: true}},
		{name: "pod selector: same namespace, local cluster only",
			policies: []string{np + "|podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{podSelector: {matchLabels: {app: web}}}]"},
			want:     []Entry{in(idProdWeb), in(idProdCanary)}, enforced: enforced{ingress: true}},
		{name: "empty pod selector: every pod of the namespace",
			policies: []string{np + "|podSelector: {}\ningress:\n- from: [{podSelector: {}}]"},
			want:     []Entry{in(idProdWeb), in(idProdAPI), in(idProdCanary)}, enforced: enforced{ingress: true}},
		{name: "namespace selector",
			policies: []string{np + "|podSelector: {}\ningress:\n- from: [{namespaceSelector: {matchLabels: {team: dev}}}]"},
			want:     []Entry{in(idDevWeb)}, enforced: enforced{ingress: true}},
		{name: "namespace by metadata.name",
			policies: []string{np + "|podSelector: {}\ningress:\n- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]"},
			want:     []Entry{in(idMonProm)}, enforced: enforced{ingress: true}},
		{name: "namespace and pod selector",
			policies: []string{np + "|podSelector: {}\ningress:\n- from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]"},
			want:     []Entry{in(idProdWeb), in(idDevWeb), in(idProdCanary)}, enforced: enforced{ingress: true}},
		{name: "match expressions",
			policies: []string{np + "|podSelector: {}\ningress:\n- from: [{namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [dev]}]}, podSelector: {matchExpressions: [{key: canary, operator: DoesNotExist}]}}]"},
			want:     []Entry{in(idProdWeb), in(idProdAPI), in(idMonProm)}, enforced: enforced{ingress: true}},
		{name: "mesh: every cluster",
			policies: []string{mesh + "|podSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {app: web}}, clusters: ['*']}]"},
			want:     []Entry{in(idProdWeb), in(idProdCanary), in(idWestWeb)}, enforced: enforced{ingress: true}},
		{name: "mesh: named cluster",
			policies: []string{mesh + "|podSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {app: web}}, clusters: [west]}]"},
			want:     []Entry{in(idWestWeb)}, enforced: enforced{ingress: true}},
		{name: "mesh without clusters: local cluster",
			policies: []string{mesh + "|podSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {app: web}}}]"},
			want:     []Entry{in(idProdWeb), in(idProdCanary)}, enforced: enforced{ingress: true}},
		{name: "ports and ranges",
			policies: []string{np + "|podSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {canary: 'true'}}}]\n  ports: [{port: 80}, {protocol: UDP, port: 53}, {protocol: SCTP}, {port: 8000, endPort: 8100}, {port: 9000, endPort: 9000}]"},
			want: []Entry{inPort(idProdCanary, ProtoTCP, 80, 0), inPort(idProdCanary, ProtoTCP, 8000, 8100), inPort(idProdCanary, ProtoTCP, 9000, 0),
				inPort(idProdCanary, ProtoUDP, 53, 0), inPort(idProdCanary, ProtoSCTP, 0, 0)},
			enforced: enforced{ingress: true}},
		{name: "ingress named port resolves against the endpoint",
			policies: []string{np + "|podSelector: {}\ningress:\n- ports: [{port: http}, {port: metrics}, {protocol: UDP, port: http}, {port: nosuch}]"},
			want:     []Entry{inPort(0, ProtoTCP, 8080, 0), inPort(0, ProtoTCP, 9090, 0)}, enforced: enforced{ingress: true}},
		{name: "unresolved named port allows nothing",
			policies: []string{np + "|podSelector: {}\ningress:\n- ports: [{port: nosuch}]"},
			enforced: enforced{ingress: true}},
		{name: "egress named port resolves cluster-wide",
			policies: []string{np + "|podSelector: {}\npolicyTypes: [Egress]\negress:\n- ports: [{protocol: UDP, port: dns}, {port: http}]"},
			want:     []Entry{outPort(0, ProtoTCP, 8080, 0), outPort(0, ProtoUDP, 53, 0), outPort(0, ProtoUDP, 5353, 0)}, enforced: enforced{egress: true}},
		{name: "ipBlock with except",
			policies: []string{np + "|podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.96.0.0/12]}}]"},
			want:     []Entry{out(idCIDR10)}, enforced: enforced{ingress: true, egress: true}},
		{name: "ipBlock inside",
			policies: []string{np + "|podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.64.0.0/10}}]"},
			want:     []Entry{out(idCIDR1096)}, enforced: enforced{ingress: true, egress: true}},
		{name: "ipBlock 0.0.0.0/0: world and IPv4 CIDRs",
			policies: []string{np + "|podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]"},
			want:     []Entry{out(WorldID), out(idCIDR192)}, enforced: enforced{ingress: true, egress: true}},
		{name: "ipBlock ::/0",
			policies: []string{np + "|podSelector: {}\negress:\n- to: [{ipBlock: {cidr: '::/0'}}]"},
			want:     []Entry{out(WorldID), out(idCIDR6)}, enforced: enforced{ingress: true, egress: true}},
		{name: "ingress and egress",
			policies: []string{np + "|podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{podSelector: {matchLabels: {app: web}}}]\n  ports: [{port: 8080}]\negress:\n- to: [{namespaceSelector: {matchLabels: {team: sre}}}]"},
			want:     []Entry{inPort(idProdWeb, ProtoTCP, 8080, 0), inPort(idProdCanary, ProtoTCP, 8080, 0), out(idMonProm)},
			enforced: enforced{ingress: true, egress: true}},
		{name: "egress only",
			policies: []string{np + "|podSelector: {}\npolicyTypes: [Egress]"},
			enforced: enforced{egress: true}},
		{name: "egress rules without Egress type are ignored",
			policies: []string{np + "|podSelector: {}\npolicyTypes: [Ingress]\negress: [{}]"},
			enforced: enforced{ingress: true}},
		{name: "union of policies, overlaps counted once",
			policies: []string{
				np + "|podSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {app: web}}}]",
				np + "|podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{podSelector: {matchLabels: {app: web}}}, {namespaceSelector: {matchLabels: {team: dev}}}]",
				np + "|podSelector: {}\npolicyTypes: [Egress]",
			},
			want: []Entry{in(idProdWeb), in(idDevWeb), in(idProdCanary)}, enforced: enforced{ingress: true, egress: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ps []*Policy
			for i, p := range tt.policies {
				kind, spec, _ := strings.Cut(p, "|")
				ps = append(ps, mustParse(t, policyDoc(kind, "p"+string(rune('a'+i)), spec)))
			}
			e := newTestEngine(t, ps...)
			if got, want := e.Entries(epAPI), sortedEntries(tt.want...); !reflect.DeepEqual(got, want) && len(got)+len(want) > 0 {
				t.Errorf("entries\n got %+v\nwant %+v", got, want)
			}
			if i, eg := e.Enforced(epAPI); i != tt.enforced.ingress || eg != tt.enforced.egress {
				t.Errorf("enforced = %v, %v; want %+v", i, eg, tt.enforced)
			}
			// No policy here is in namespace dev.
			if i, eg := e.Enforced(epDev); i || eg || len(e.Entries(epDev)) > 0 {
				t.Errorf("the dev endpoint is enforced or has entries")
			}
			// Feeding the same state in another order gives the same result.
			o := NewEngine(localCluster)
			for owner, ports := range testNamedPorts() {
				o.SetNamedPorts(owner, ports)
			}
			for _, ep := range testEndpoints(t) {
				o.SetEndpoint(ep)
			}
			for _, id := range testIdentities(t) {
				o.SetIdentity(id)
			}
			for _, p := range ps {
				o.SetPolicy(p)
			}
			assertSameState(t, o, e)
		})
	}
}

// assertSameState compares what two engines resolved for the test
// endpoints 1-9.
func assertSameState(t *testing.T, got, want *Engine) {
	t.Helper()
	for ep := uint32(1); ep < 10; ep++ {
		if g, w := got.Entries(ep), want.Entries(ep); !reflect.DeepEqual(g, w) {
			t.Errorf("endpoint %d entries\n got %+v\nwant %+v", ep, g, w)
		}
		gi, ge := got.Enforced(ep)
		wi, we := want.Enforced(ep)
		if gi != wi || ge != we {
			t.Errorf("endpoint %d enforced %v %v, want %v %v", ep, gi, ge, wi, we)
		}
		if g, w := got.Selecting(ep), want.Selecting(ep); !reflect.DeepEqual(g, w) {
			t.Errorf("endpoint %d selected by %v, want %v", ep, g, w)
		}
	}
	if g, w := got.CIDRs(), want.CIDRs(); !reflect.DeepEqual(g, w) {
		t.Errorf("CIDRs %v, want %v", g, w)
	}
}

func TestEngineDeltas(t *testing.T) {
	allowWeb := mustParse(t, policyDoc(KindNetworkPolicy, "allow-web", "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{podSelector: {matchLabels: {app: web}}}]\n  ports: [{port: http}]"))
	e := newTestEngine(t)

	d := e.SetPolicy(allowWeb)
	want := Delta{
		Changes: []Change{
			{Endpoint: epAPI, Entry: inPort(idProdWeb, ProtoTCP, 8080, 0), Add: true},
			{Endpoint: epAPI, Entry: inPort(idProdCanary, ProtoTCP, 8080, 0), Add: true},
		},
		Enforcement: []Enforcement{{Endpoint: epAPI, Ingress: true}},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("SetPolicy delta\n got %+v\nwant %+v", d, want)
	}
	if d := e.SetPolicy(allowWeb); !d.Empty() {
		t.Fatalf("setting the same policy again: %+v", d)
	}
	if got := e.Selecting(epAPI); !reflect.DeepEqual(got, []string{"prod/allow-web"}) {
		t.Fatalf("Selecting = %v", got)
	}

	// A new identity: only its entries.
	newWeb := Identity{ID: 1100, Labels: podLabelSet(t, localCluster, "prod", map[string]string{"app": "web", "version": "v2"}, nsLabels["prod"])}
	d = e.SetIdentity(newWeb)
	want = Delta{Changes: []Change{{Endpoint: epAPI, Entry: inPort(1100, ProtoTCP, 8080, 0), Add: true}}}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("SetIdentity delta\n got %+v\nwant %+v", d, want)
	}
	// Its labels change so that it no longer matches.
	newWeb.Labels = podLabelSet(t, localCluster, "prod", map[string]string{"app": "cache"}, nsLabels["prod"])
	d = e.SetIdentity(newWeb)
	want = Delta{Changes: []Change{{Endpoint: epAPI, Entry: inPort(1100, ProtoTCP, 8080, 0), Add: false}}}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("SetIdentity (replace) delta\n got %+v\nwant %+v", d, want)
	}
	if d := e.DeleteIdentity(1100); !d.Empty() {
		t.Fatalf("deleting an unmatched identity: %+v", d)
	}

	// A second policy with an overlapping rule: the shared entries stay
	// until the last contributor goes.
	overlap := mustParse(t, policyDoc(KindNetworkPolicy, "overlap", "podSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {app: web}}}]\n  ports: [{port: 8080}]"))
	d = e.SetPolicy(overlap)
	want = Delta{
		Changes: []Change{
			{Endpoint: epWeb, Entry: inPort(idProdWeb, ProtoTCP, 8080, 0), Add: true},
			{Endpoint: epWeb, Entry: inPort(idProdCanary, ProtoTCP, 8080, 0), Add: true},
		},
		Enforcement: []Enforcement{{Endpoint: epWeb, Ingress: true}},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("overlapping SetPolicy delta\n got %+v\nwant %+v", d, want)
	}
	if d := e.DeletePolicy("prod", "allow-web"); !d.Empty() {
		t.Fatalf("deleting a policy whose entries another one also wants: %+v", d)
	}
	d = e.DeletePolicy("prod", "overlap")
	want = Delta{
		Changes: []Change{
			{Endpoint: epAPI, Entry: inPort(idProdWeb, ProtoTCP, 8080, 0)},
			{Endpoint: epAPI, Entry: inPort(idProdCanary, ProtoTCP, 8080, 0)},
			{Endpoint: epWeb, Entry: inPort(idProdWeb, ProtoTCP, 8080, 0)},
			{Endpoint: epWeb, Entry: inPort(idProdCanary, ProtoTCP, 8080, 0)},
		},
		Enforcement: []Enforcement{{Endpoint: epAPI}, {Endpoint: epWeb}},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("last DeletePolicy delta\n got %+v\nwant %+v", d, want)
	}
	if d := e.DeletePolicy("prod", "overlap"); !d.Empty() {
		t.Fatalf("deleting a missing policy: %+v", d)
	}

	// Replacing a policy reports only the difference.
	e.SetPolicy(allowWeb)
	narrower := mustParse(t, policyDoc(KindNetworkPolicy, "allow-web", "podSelector: {matchLabels: {app: api}}\ningress:\n- from: [{podSelector: {matchLabels: {app: web, canary: 'true'}}}]\n  ports: [{port: http}]"))
	d = e.SetPolicy(narrower)
	want = Delta{Changes: []Change{{Endpoint: epAPI, Entry: inPort(idProdWeb, ProtoTCP, 8080, 0)}}}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("replacing SetPolicy delta\n got %+v\nwant %+v", d, want)
	}

	// The endpoint's named port moves: its entry follows.
	ep := testEndpoints(t)[0]
	ep.Ports = []NamedPort{{Name: "http", Port: 8081, Protocol: ProtoTCP}}
	d = e.SetEndpoint(ep)
	want = Delta{Changes: []Change{
		{Endpoint: epAPI, Entry: inPort(idProdCanary, ProtoTCP, 8080, 0)},
		{Endpoint: epAPI, Entry: inPort(idProdCanary, ProtoTCP, 8081, 0), Add: true},
	}}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("SetEndpoint (ports) delta\n got %+v\nwant %+v", d, want)
	}

	// Deleting the endpoint removes everything.
	d = e.DeleteEndpoint(epAPI)
	want = Delta{
		Changes:     []Change{{Endpoint: epAPI, Entry: inPort(idProdCanary, ProtoTCP, 8081, 0)}},
		Enforcement: []Enforcement{{Endpoint: epAPI}},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("DeleteEndpoint delta\n got %+v\nwant %+v", d, want)
	}
	if e.Entries(epAPI) != nil || e.Selecting(epAPI) != nil {
		t.Fatal("a deleted endpoint still has entries or policies")
	}
}

func TestEngineNamedPortsDelta(t *testing.T) {
	p := mustParse(t, policyDoc(KindNetworkPolicy, "dns", "podSelector: {matchLabels: {app: api}}\npolicyTypes: [Egress]\negress:\n- ports: [{protocol: UDP, port: dns}]"))
	e := newTestEngine(t, p)
	// 53 has two owners: one leaving changes nothing.
	if d := e.SetNamedPorts("10.0.1.1", nil); !d.Empty() {
		t.Fatalf("removing one of two owners of dns/53: %+v", d)
	}
	d := e.SetNamedPorts("10.0.1.3", []NamedPort{{Name: "dns", Port: 1053, Protocol: ProtoUDP}})
	want := Delta{Changes: []Change{
		{Endpoint: epAPI, Entry: outPort(0, ProtoUDP, 53, 0)},
		{Endpoint: epAPI, Entry: outPort(0, ProtoUDP, 1053, 0), Add: true},
	}}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("SetNamedPorts delta\n got %+v\nwant %+v", d, want)
	}
}

func TestEngineCIDRs(t *testing.T) {
	p1 := mustParse(t, policyDoc(KindNetworkPolicy, "a", "podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.96.0.0/12, 10.1.0.0/16]}}, {ipBlock: {cidr: 0.0.0.0/0}}]"))
	p2 := mustParse(t, policyDoc(KindNetworkPolicy, "b", "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: '2001:db8::/32'}}, {ipBlock: {cidr: 10.0.0.0/8}}]"))
	// Rules of a direction the policy does not enforce are not compiled.
	p3 := mustParse(t, policyDoc(KindNetworkPolicy, "c", "podSelector: {}\npolicyTypes: [Ingress]\negress:\n- to: [{ipBlock: {cidr: 172.16.0.0/12}}]"))
	e := NewEngine(localCluster)
	e.SetPolicy(p1)
	e.SetPolicy(p2)
	e.SetPolicy(p3)
	var want []netip.Prefix
	for _, s := range []string{"10.0.0.0/8", "10.1.0.0/16", "10.96.0.0/12", "2001:db8::/32"} {
		want = append(want, netip.MustParsePrefix(s))
	}
	if got := e.CIDRs(); !reflect.DeepEqual(got, want) {
		t.Fatalf("CIDRs = %v, want %v", got, want)
	}
	e.DeletePolicy("prod", "a")
	if got := e.CIDRs(); !reflect.DeepEqual(got, []netip.Prefix{want[0], want[3]}) {
		t.Fatalf("CIDRs after delete = %v", got)
	}
	e.DeletePolicy("prod", "b")
	if got := e.CIDRs(); len(got) != 0 {
		t.Fatalf("CIDRs after deleting all = %v", got)
	}
}

func TestEngineInvalidPolicyFailsClosed(t *testing.T) {
	// SetPolicy does not validate; the invalid parts must match nothing
	// rather than everything.
	bad := &Policy{Kind: KindNetworkPolicy, Namespace: "prod", Name: "bad", Spec: Spec{
		Ingress: []IngressRule{
			{From: []Peer{{}}}, // empty peer
			{From: []Peer{{IPBlock: &IPBlock{CIDR: "10.0.0.0/8", Except: []string{"nonsense"}}}}},
			{Ports: []Port{{Protocol: "ICMP"}}},
			{Ports: []Port{{Port: PortNumber(0)}}},
			{From: []Peer{{PodSelector: &LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "app", Operator: "Like"}}}}}},
		},
	}}
	e := newTestEngine(t, bad)
	if got := e.Entries(epAPI); len(got) != 0 {
		t.Fatalf("an invalid policy allowed %+v", got)
	}
	if i, _ := e.Enforced(epAPI); !i {
		t.Fatal("an invalid policy does not enforce")
	}
}

func TestPodLabels(t *testing.T) {
	got := PodLabels("east", "prod", map[string]string{"app": "web", LabelNamespace: "spoofed"},
		map[string]string{"team": "a", LabelNamespaceName: "spoofed"})
	want := []labels.Label{
		{Source: "k8s", Key: "app", Value: "web"},
		{Source: "k8s", Key: "io.kubernetes.pod.namespace", Value: "prod"},
		{Source: "mesh", Key: "cluster", Value: "east"},
		{Source: "ns", Key: "kubernetes.io/metadata.name", Value: "prod"},
		{Source: "ns", Key: "team", Value: "a"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("PodLabels = %v, want %v", got, want)
	}
	s, err := labels.NewSet(got...)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Labels(), got) {
		t.Fatalf("PodLabels is not in Set order: %v", s.Labels())
	}
}
