package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/lab"
	"github.com/meshplane/meshplane/policy"
)

// webFromClient lets prod's client reach prod's web pods on TCP 80, and
// nothing else reach them.
const webFromClient = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}]
`

// denied is the drop reason of a connection that policy does not allow.
const denied = "policy denied"

// policyCase is one state of a policy matrix: the policies of the
// cluster, and what probes find under them.
type policyCase struct {
	name     string
	policies string
	probes   []probe
}

// probe is one expected connection result.
type probe struct {
	from, to string
	port     uint16
	proto    string // "tcp" (default) or "udp"
	allowed  bool
	reason   string // for denied probes: the drop reason expected in the flow log
}

func (p probe) String() string {
	proto := p.proto
	if proto == "" {
		proto = "tcp"
	}
	verdict := "allowed"
	if !p.allowed {
		verdict = "denied"
	}
	return fmt.Sprintf("%s->%s:%d/%s %s", p.from, p.to, p.port, proto, verdict)
}

// applyPolicies replaces every policy in the lab's cluster with docs.
func applyPolicies(t *testing.T, l *lab.Lab, cluster, docs string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := kvstore.New(ctx, kvstore.Config{Endpoints: l.EtcdEndpoints(cluster)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.DeletePrefix(ctx, keys.PoliciesPrefix()); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(docs) == "" {
		return
	}
	ps, err := policy.Parse([]byte(docs))
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	for _, p := range ps {
		b, err := p.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if err := client.Put(ctx, keys.Policy(p.Namespace, p.Name), b); err != nil {
			t.Fatal(err)
		}
	}
}

// expect probes until every probe has its expected result, or fails after
// a deadline: policies reach the agents through etcd asynchronously, so a
// probe may need a moment to see the new state. A wrong result that never
// turns right fails.
func expect(t *testing.T, l *lab.Lab, probes []probe) {
	t.Helper()
	for _, p := range probes {
		deadline := time.Now().Add(5 * time.Second)
		var last lab.ProbeResult
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			res, err := l.Probe(ctx, lab.ProbeSpec{From: p.from, To: p.to, Port: p.port, Proto: p.proto, Timeout: 400 * time.Millisecond})
			cancel()
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			last = res
			ok := res.Allowed == p.allowed
			if ok && !p.allowed && p.reason != "" && !strings.Contains(res.Reason, p.reason) {
				ok = false
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: got allowed=%v reason=%q", p, last.Allowed, last.Reason)
				break
			}
		}
	}
}

// startLab brings up testdata/matrix.yaml under a unique name, its agents
// run with agentFlags added, and takes it down when the test ends.
func startLab(t *testing.T, agentFlags ...string) *lab.Lab {
	t.Helper()
	return startLabFile(t, "testdata/matrix.yaml", agentFlags...)
}

// startLabFile is startLab for another topology file.
func startLabFile(t testing.TB, file string, agentFlags ...string) *lab.Lab {
	t.Helper()
	requireRoot(t)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	name := uniqueName(t)
	topo, err := lab.ParseTopology(bytes.Replace(data, []byte("name: NAME"), []byte("name: "+name), 1))
	if err != nil {
		t.Fatal(err)
	}
	setRouting(t, topo)
	meshctl, agent := binaries()
	opts := lab.Options{Meshctl: meshctl, Agent: agent, AgentFlags: agentFlags}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, topo, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := lab.Down(ctx, name, opts); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

// TestPolicyMatrix applies NetworkPolicies one set at a time and checks
// real TCP and UDP connections between pods on the same and on different
// nodes against Kubernetes NetworkPolicy semantics.
func TestPolicyMatrix(t *testing.T) {
	l := startLab(t)
	const (
		client = "prod/client" // n1
		web1   = "prod/web-1"  // n1
		web2   = "prod/web-2"  // n2
		db     = "prod/db"     // n2
		tool   = "dev/tool"    // n2
		svc    = "svc:prod/web"
	)
	cases := []policyCase{
		{"no policy: everything open", "", []probe{
			{from: client, to: web1, port: 80, allowed: true},
			{from: client, to: web2, port: 80, allowed: true},
			{from: tool, to: web2, port: 8080, allowed: true},
			{from: client, to: db, port: 5432, allowed: true},
			{from: client, to: web2, port: 53, proto: "udp", allowed: true},
		}},
		{"ingress default deny for selected pods only", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
`, []probe{
			{from: client, to: web1, port: 80, reason: denied},
			{from: client, to: web2, port: 80, reason: denied},
			{from: client, to: web2, port: 53, proto: "udp", reason: denied},
			{from: client, to: db, port: 5432, allowed: true},
			{from: web1, to: db, port: 5432, allowed: true}, // egress of web is open
		}},
		{"pod selector in the policy's namespace, one port", webFromClient, []probe{
			{from: client, to: web1, port: 80, allowed: true},
			{from: client, to: web2, port: 80, allowed: true},
			{from: client, to: web2, port: 8080, reason: denied},
			{from: db, to: web1, port: 80, reason: denied},
			{from: tool, to: web2, port: 80, reason: denied}, // same labels would not help: other namespace
		}},
		{"namespace selector", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {env: dev}}}]
`, []probe{
			{from: tool, to: web2, port: 80, allowed: true},
			{from: tool, to: web1, port: 8090, allowed: true},
			{from: client, to: web2, port: 80, reason: denied},
		}},
		{"namespace and pod selector in one peer", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {env: prod}}, podSelector: {matchLabels: {app: db}}}]
`, []probe{
			{from: db, to: web1, port: 80, allowed: true},
			{from: client, to: web1, port: 80, reason: denied},
			{from: tool, to: web1, port: 80, reason: denied},
		}},
		{"port range with endPort, from anywhere", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: 8080, endPort: 8081}]
`, []probe{
			{from: client, to: web2, port: 8080, allowed: true},
			{from: tool, to: web2, port: 8081, allowed: true},
			{from: client, to: web2, port: 8090, reason: denied},
			{from: client, to: web1, port: 80, reason: denied},
		}},
		{"named port", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: http}, {port: dns, protocol: UDP}]
`, []probe{
			{from: client, to: web1, port: 80, allowed: true},
			{from: client, to: web2, port: 53, proto: "udp", allowed: true},
			{from: client, to: web1, port: 8080, reason: denied},
		}},
		{"UDP only", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: UDP, port: 53}]
`, []probe{
			{from: client, to: web2, port: 53, proto: "udp", allowed: true},
			{from: client, to: web1, port: 53, proto: "udp", allowed: true},
			{from: client, to: web2, port: 80, reason: denied},
			{from: db, to: web2, port: 53, proto: "udp", reason: denied},
			{from: client, to: db, port: 53, proto: "udp", allowed: true},
		}},
		{"egress", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 5432}]
`, []probe{
			{from: client, to: db, port: 5432, allowed: true},
			{from: client, to: web1, port: 80, reason: denied},
			{from: client, to: web2, port: 80, reason: denied},
			{from: client, to: svc, port: 80, reason: denied}, // checked against the backend, after translation
			{from: web1, to: web2, port: 80, allowed: true},
		}},
		{"egress and ingress both enforced, across nodes and through the service", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 80}]
---
` + webFromClient, []probe{
			{from: client, to: web1, port: 80, allowed: true},
			{from: client, to: web2, port: 80, allowed: true},
			{from: client, to: svc, port: 80, allowed: true},
			{from: client, to: web2, port: 8080, reason: denied},
			{from: client, to: db, port: 5432, reason: denied},
			{from: tool, to: web2, port: 80, reason: denied},
		}},
	}
	cases = append(cases, ipBlockCases(t, l)...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			applyPolicies(t, l, "c1", tc.policies)
			expect(t, l, tc.probes)
		})
	}
	t.Run("corrupt values", func(t *testing.T) { corruptPolicyCases(t, l) })
	applyPolicies(t, l, "c1", "")
}
