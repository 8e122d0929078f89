package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/meshplane/meshplane/lab"
)

// ipBlockCases are the ipBlock cases of the upstream Kubernetes
// NetworkPolicy e2e tests (test/e2e/network/netpol), and a few more in
// their spirit: an ipBlock that covers a pod's IP selects that pod, with
// or without except, in both directions, across nodes, and after service
// translation. The policies name the lab's pod IPs and pod CIDRs, known
// only once it is up.
func ipBlockCases(t *testing.T, l *lab.Lab) []policyCase {
	t.Helper()
	const (
		client = "prod/client" // n1
		web1   = "prod/web-1"  // n1
		web2   = "prod/web-2"  // n2
		db     = "prod/db"     // n2
		tool   = "dev/tool"    // n2
		svc    = "svc:prod/web"
		ext    = "ext:ext1"
	)
	host := func(ref string) string {
		t.Helper()
		p, err := l.Pod(ref)
		if err != nil {
			t.Fatal(err)
		}
		return netip.PrefixFrom(p.IP, 32).String()
	}
	podCIDR := func(node string) string {
		t.Helper()
		n, err := l.Node("c1", node)
		if err != nil {
			t.Fatal(err)
		}
		return n.PodCIDR.String()
	}
	x, err := l.External("ext1")
	if err != nil {
		t.Fatal(err)
	}
	extIP := netip.PrefixFrom(x.IP, 32).String()
	const cluster = "10.220.0.0/16" // the lab cluster's pod CIDR (testdata/matrix.yaml)

	// egress builds a policy letting prod's client send to the peers.
	egress := func(name, peers, ports string) string {
		return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: %s, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: %s%s
`, name, peers, ports)
	}
	// ingress builds a policy letting the peers reach prod's web pods.
	ingress := func(peers string) string {
		return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: %s
`, peers)
	}
	block := func(cidr string, except ...string) string {
		if len(except) == 0 {
			return fmt.Sprintf("{ipBlock: {cidr: %s}}", cidr)
		}
		return fmt.Sprintf("{ipBlock: {cidr: %s, except: [%s]}}", cidr, strings.Join(except, ", "))
	}
	list := func(peers ...string) string { return "[" + strings.Join(peers, ", ") + "]" }

	return []policyCase{
		{"ipBlock: ingress from pods in a CIDR (another node's pod CIDR) and from an external",
			ingress(list(block(podCIDR("n1")), block(extIP))), []probe{
				{from: client, to: web2, port: 80, allowed: true}, // n1 -> n2
				{from: client, to: web1, port: 80, allowed: true}, // same node
				{from: ext, to: web2, port: 80, allowed: true},
				{from: db, to: web2, port: 80, reason: denied}, // n2's pods are not in n1's CIDR
				{from: tool, to: web1, port: 80, reason: denied},
			}},
		{"ipBlock: ingress except excludes a pod",
			ingress(list(block(cluster, host(db)))), []probe{
				{from: client, to: web2, port: 80, allowed: true},
				{from: tool, to: web2, port: 8080, allowed: true}, // other namespace, inside the block
				{from: db, to: web2, port: 80, reason: denied},
				{from: db, to: web1, port: 80, reason: denied},  // across nodes
				{from: ext, to: web1, port: 80, reason: denied}, // outside the block
			}},
		{"ipBlock: egress to a server in a CIDR block",
			egress("client", list(block(host(db))), ""), []probe{
				{from: client, to: db, port: 5432, allowed: true},
				{from: client, to: web2, port: 80, reason: denied},
				{from: client, to: web1, port: 80, reason: denied},
			}},
		{"ipBlock: egress except excludes a pod",
			egress("client", list(block(podCIDR("n2"), host(db))), ""), []probe{
				{from: client, to: db, port: 5432, reason: denied},
				{from: client, to: web2, port: 80, allowed: true},
				{from: client, to: tool, port: 8080, allowed: true},
				{from: client, to: web1, port: 80, reason: denied}, // n1 is outside n2's CIDR
			}},
		{"ipBlock: an IP in one policy's except and another policy's cidr is allowed",
			egress("client", list(block(podCIDR("n2"), host(db))), "") + "---\n" +
				egress("client-db", list(block(host(db))), ""), []probe{
				{from: client, to: db, port: 5432, allowed: true},
				{from: client, to: web2, port: 80, allowed: true},
				{from: client, to: web1, port: 80, reason: denied},
			}},
		{"ipBlock: 0.0.0.0/0 with except covers pods outside the except",
			egress("client", list(block("0.0.0.0/0", podCIDR("n2"))), ""), []probe{
				{from: client, to: web1, port: 80, allowed: true},
				{from: client, to: ext, port: 80, allowed: true},
				{from: client, to: db, port: 5432, reason: denied},
			}},
		{"ipBlock: egress through a service is checked against the backend's IP",
			egress("client", list(block(cluster)), "\n    ports: [{port: 80}]"), []probe{
				{from: client, to: svc, port: 80, allowed: true},
				{from: client, to: web2, port: 80, allowed: true},
				{from: client, to: db, port: 5432, reason: denied}, // port
			}},
		{"ipBlock: egress through a service whose backends are excepted",
			egress("client", list(block(cluster, host(web1), host(web2))), ""), []probe{
				{from: client, to: svc, port: 80, reason: denied},
				{from: client, to: db, port: 5432, allowed: true},
			}},
	}
}

// TestPolicyIPBlockOutsideOnly runs agents with
// --policy-ipblock-selects-pods=false, the Cilium behaviour: an ipBlock
// matches addresses outside the cluster only, so one that covers pod IPs
// does not select those pods, while it still selects an external host.
func TestPolicyIPBlockOutsideOnly(t *testing.T) {
	l := startLab(t, "--policy-ipblock-selects-pods=false")
	const (
		client = "prod/client" // n1
		web2   = "prod/web-2"  // n2
		db     = "prod/db"     // n2
		ext    = "ext:ext1"
	)
	x, err := l.External("ext1")
	if err != nil {
		t.Fatal(err)
	}
	cases := []policyCase{
		{"ingress: ipBlocks of the pod CIDR and an external select the external only", fmt.Sprintf(`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 10.220.0.0/16}}, {ipBlock: {cidr: %s/32}}]
`, x.IP), []probe{
			{from: ext, to: web2, port: 80, allowed: true},
			{from: client, to: web2, port: 80, reason: denied},
		}},
		{"egress: an ipBlock of the pod CIDR does not select pods", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
`, []probe{
			{from: client, to: ext, port: 80, allowed: true},
			{from: client, to: db, port: 5432, reason: denied},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			applyPolicies(t, l, "c1", tc.policies)
			expect(t, l, tc.probes)
		})
	}
	applyPolicies(t, l, "c1", "")
}
