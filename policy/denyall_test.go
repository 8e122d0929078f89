package policy

import (
	"testing"
)

// TestDenyAll checks the placeholder for an unreadable policy: every
// endpoint of its namespace is enforced both ways with no entries, other
// namespaces are untouched, another policy's allows still add up, and the
// real policy of the same key replaces it.
func TestDenyAll(t *testing.T) {
	e := NewEngine(localCluster)
	prodWeb := Endpoint{ID: 1, Labels: podLabelSet(t, localCluster, "prod", map[string]string{"app": "web"}, nil)}
	prodDB := Endpoint{ID: 2, Labels: podLabelSet(t, localCluster, "prod", map[string]string{"app": "db"}, nil)}
	devWeb := Endpoint{ID: 3, Labels: podLabelSet(t, localCluster, "dev", map[string]string{"app": "web"}, nil)}
	for _, ep := range []Endpoint{prodWeb, prodDB, devWeb} {
		e.SetEndpoint(ep)
	}
	e.SetIdentity(Identity{ID: idProdAPI, Labels: podLabelSet(t, localCluster, "prod", map[string]string{"app": "api"}, nil)})
	if err := DenyAll("prod", "broken").Validate(); err != nil {
		t.Fatalf("DenyAll is not a valid policy: %v", err)
	}
	e.SetPolicy(DenyAll("prod", "broken"))
	for _, id := range []uint32{1, 2} {
		if in, out := e.Enforced(id); !in || !out || len(e.Entries(id)) != 0 {
			t.Errorf("endpoint %d: enforced %v/%v with %v, want both ways and no entries", id, in, out, e.Entries(id))
		}
	}
	if in, out := e.Enforced(3); in || out {
		t.Errorf("an endpoint of another namespace is enforced (%v/%v)", in, out)
	}
	e.SetPolicy(mustParse(t, policyDoc(KindNetworkPolicy, "web", `
podSelector: {matchLabels: {app: web}}
ingress:
- from: [{podSelector: {matchLabels: {app: api}}}]
`)))
	if got := e.Entries(1); len(got) != 1 || got[0].Identity != idProdAPI {
		t.Errorf("web's entries beside the placeholder = %v, want the api allow", got)
	}
	// The real policy arrives under the placeholder's key.
	e.SetPolicy(mustParse(t, policyDoc(KindNetworkPolicy, "broken", `
podSelector: {matchLabels: {app: db}}
ingress: [{}]
`)))
	if in, out := e.Enforced(1); !in || out {
		t.Errorf("web after the fix: enforced %v/%v, want ingress only (its own policy)", in, out)
	}
	if in, out := e.Enforced(2); !in || out || len(e.Entries(2)) != 1 {
		t.Errorf("db after the fix: enforced %v/%v with %v, want ingress allowing all", in, out, e.Entries(2))
	}
	e.DeletePolicy("prod", "broken")
	if in, out := e.Enforced(2); in || out {
		t.Errorf("db after the delete: enforced %v/%v, want nothing", in, out)
	}
}
