package policy

import (
	"fmt"
	"testing"

	"github.com/meshplane/meshplane/labels"
)

// benchEngine builds an engine with 1,000 policies over 50 namespaces,
// 10,000 pod identities and 100 local endpoints, and returns fresh label
// sets for more identities.
func benchEngine(b *testing.B) (*Engine, []labels.Set) {
	const (
		namespaces    = 50
		policiesPerNS = 20
		identities    = 10000
		endpoints     = 100
		apps          = 10
	)
	nsLabels := func(ns int) map[string]string {
		return map[string]string{"team": fmt.Sprintf("team%d", ns%5)}
	}
	pod := func(ns, app, version int) labels.Set {
		return podLabelSet(b, localCluster, fmt.Sprintf("ns%d", ns), map[string]string{
			"app": fmt.Sprintf("app%d", app), "version": fmt.Sprintf("v%d", version),
		}, nsLabels(ns))
	}
	e := NewEngine(localCluster)
	for ns := range namespaces {
		for j := range policiesPerNS {
			spec := fmt.Sprintf(`podSelector: {matchLabels: {app: app%d}}
policyTypes: [Ingress, Egress]
ingress:
- from:
  - podSelector: {matchLabels: {app: app%d}}
  - namespaceSelector: {matchLabels: {team: team%d}}
    podSelector: {matchExpressions: [{key: app, operator: In, values: [app%d, app%d]}]}
  ports: [{port: %d}, {port: http}]
egress:
- to:
  - podSelector: {matchLabels: {app: app%d}}
  - ipBlock: {cidr: 10.%d.0.0/16}
  ports: [{protocol: UDP, port: 53}]
`, j%apps, (j+1)%apps, j%5, (j+2)%apps, (j+3)%apps, 8000+j, (j+4)%apps, j)
			doc := fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d, namespace: ns%d}\nspec:\n%s", j, ns, indent(spec))
			e.SetPolicy(mustParse(b, doc))
		}
	}
	for i := range identities {
		e.SetIdentity(Identity{ID: uint32(1000 + i), Labels: pod(i%namespaces, (i/namespaces)%apps, i/(namespaces*apps))})
	}
	for i := range endpoints {
		e.SetEndpoint(Endpoint{ID: uint32(i + 1), Labels: pod(i%namespaces, i%apps, 1000),
			Ports: []NamedPort{{Name: "http", Port: 8080, Protocol: ProtoTCP}}})
	}
	fresh := make([]labels.Set, 4096)
	for i := range fresh {
		fresh[i] = pod(i%namespaces, i%apps, 2000+i)
	}
	return e, fresh
}

// BenchmarkIdentityAdd measures one new identity arriving at an engine with
// 1,000 policies and 10,000 identities: the selector cache is tested
// against it and only its entries are added.
func BenchmarkIdentityAdd(b *testing.B) {
	e, fresh := benchEngine(b)
	b.ReportAllocs()
	id := uint32(100000)
	for b.Loop() {
		e.SetIdentity(Identity{ID: id, Labels: fresh[id%uint32(len(fresh))]})
		id++
	}
}

// BenchmarkPolicySet measures replacing one policy among 1,000.
func BenchmarkPolicySet(b *testing.B) {
	e, _ := benchEngine(b)
	ps := []*Policy{
		mustParse(b, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p0, namespace: ns0}\nspec:\n  podSelector: {matchLabels: {app: app0}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: app5}}}]\n"),
		mustParse(b, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p0, namespace: ns0}\nspec:\n  podSelector: {matchLabels: {app: app0}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: app6}}}]\n"),
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e.SetPolicy(ps[i%2])
		i++
	}
}
