package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/meshplane/meshplane/lab"
)

// webFromTrusted lets pods of namespaces labelled trusted=yes reach prod's
// web pods on TCP 80.
const webFromTrusted = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-trusted, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {trusted: "yes"}}}]
    ports: [{port: 80}]
`

// TestRelabelFollowsPolicy relabels running pods and a namespace, as
// kubectl label does, and checks real connections: a pod that takes the
// labels a policy allows is let in (from its own node and from another),
// one that loses them is shut out, and a namespace that takes the labels
// a namespaceSelector wants lets its pods in. No pod restarts.
func TestRelabelFollowsPolicy(t *testing.T) {
	l := startLab(t)
	const (
		client = "prod/client" // n1
		web1   = "prod/web-1"  // n1
		web2   = "prod/web-2"  // n2
		db     = "prod/db"     // n2
		tool   = "dev/tool"    // n2
	)
	applyPolicies(t, l, "c1", webFromClient+"---\n"+webFromTrusted)
	expect(t, l, []probe{
		{from: client, to: web1, port: 80, allowed: true},
		{from: db, to: web1, port: 80, reason: denied},
		{from: db, to: web2, port: 80, reason: denied},
		{from: tool, to: web2, port: 80, reason: denied},
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before, err := l.Pod(db)
	if err != nil {
		t.Fatal(err)
	}
	after, err := l.LabelPod(ctx, db, lab.LabelChange{Set: map[string]string{"app": "client"}})
	if err != nil {
		t.Fatal(err)
	}
	if after.Identity == before.Identity || after.IP != before.IP {
		t.Fatalf("relabelled db: identity %d -> %d, IP %s -> %s; want a new identity and the same IP", before.Identity, after.Identity, before.IP, after.IP)
	}
	if _, err := l.LabelPod(ctx, client, lab.LabelChange{Set: map[string]string{"app": "other"}}); err != nil {
		t.Fatal(err)
	}
	expect(t, l, []probe{
		{from: db, to: web1, port: 80, allowed: true}, // n2 -> n1
		{from: db, to: web2, port: 80, allowed: true}, // on n2
		{from: client, to: web1, port: 80, reason: denied},
		{from: tool, to: web2, port: 80, reason: denied},
	})
	if err := l.LabelNamespace(ctx, "dev", lab.LabelChange{Set: map[string]string{"trusted": "yes"}}); err != nil {
		t.Fatal(err)
	}
	expect(t, l, []probe{
		{from: tool, to: web2, port: 80, allowed: true},
		{from: tool, to: web1, port: 80, allowed: true},
		{from: tool, to: web2, port: 8080, reason: denied},
	})
	if err := l.LabelNamespace(ctx, "dev", lab.LabelChange{Remove: []string{"trusted"}}); err != nil {
		t.Fatal(err)
	}
	expect(t, l, []probe{{from: tool, to: web2, port: 80, reason: denied}})
	applyPolicies(t, l, "c1", "")
}
