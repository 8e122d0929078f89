package nodeagent_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/nodeagent"
	"github.com/meshplane/meshplane/policy"
)

func putPolicy(t *testing.T, c *kvstore.Client, keys kvstore.Keys, doc string) {
	t.Helper()
	ps, err := policy.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		b, err := p.Encode()
		if err != nil {
			t.Fatal(err)
		}
		putJSON(t, c, keys.Policy(p.Namespace, p.Name), b)
	}
}

// policyEntries reads a node's installed policy map for one endpoint.
func policyEntries(t *testing.T, node string, ep uint32) map[bpf.PolicyKey]bpf.PolicyValue {
	t.Helper()
	m := pinned[bpf.PolicyKey, bpf.PolicyValue](t, node, bpf.PolicyMapName)
	out := make(map[bpf.PolicyKey]bpf.PolicyValue)
	if err := m.Iterate(func(k bpf.PolicyKey, v bpf.PolicyValue) bool {
		if k.EndpointID == ep {
			out[k] = v
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func endpointFlags(t *testing.T, node string, ip netip.Addr) (bpf.EndpointFlags, error) {
	m := pinned[bpf.EndpointKey, bpf.EndpointValue](t, node, bpf.EndpointsMapName)
	v, ok, err := m.Lookup(bpf.EndpointKeyFor(ip))
	if err != nil || !ok {
		return 0, fmt.Errorf("endpoint %s not in the map (%w)", ip, err)
	}
	return v.Flags, nil
}

// TestAgentPolicy checks the policy path from etcd to the maps: an
// endpoint selected by a policy gets its enforcement flag and exactly the
// entries the policy allows (plus its node's host), a peer identity that
// appears later is added without touching the rest, an ipBlock gets a
// node-local CIDR identity in the ipcache, and deleting the policy opens
// the endpoint again. It also checks that a restarted agent keeps the
// enforcement it has in the pinned map.
func TestAgentPolicy(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	client := srv.Client(t)
	cfg := agentConfig(t, srv, cluster, 1)
	cfg.Datapath = nodeagent.DatapathNone // the maps only: the veths are made up
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	web, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{
		Namespace: "prod", Pod: "web-1", IfIndex: 42, Labels: map[string]string{"app": "web"},
		NamespaceLabels: map[string]string{"env": "prod"},
		Ports:           []nodeagent.ContainerPort{{Name: "http", Port: 8080, Protocol: bpf.ProtoTCP}},
	})
	if err != nil {
		t.Fatal(err)
	}
	client1, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "prod", Pod: "client-1", IfIndex: 43, Labels: map[string]string{"app": "client"}})
	if err != nil {
		t.Fatal(err)
	}
	ip := web.IPs[0]
	eventually(t, 10*time.Second, "endpoint without enforcement", func() error {
		if f, err := endpointFlags(t, cfg.Node, ip); err != nil || f != 0 {
			return fmt.Errorf("flags %v (%w), want none", f, err)
		}
		return nil
	})

	putPolicy(t, client, keys, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}, {port: 9000, endPort: 9003}]
  - from: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}]
`)
	key := func(remote uint32, proto uint8, port uint16, bits int) bpf.PolicyKey {
		k, err := bpf.PolicyKeyFor(web.ID, bpf.Ingress, remote, proto, port, bits)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	ipc := ipcacheOf(t, cfg.Node)
	var cidrID uint32
	eventually(t, 10*time.Second, "ipBlock CIDR identity in the ipcache", func() error {
		v, ok, err := exact(ipc, netip.MustParsePrefix("198.51.100.0/24"))
		if err != nil || !ok {
			return fmt.Errorf("no entry (%w)", err)
		}
		if v.Identity < 1<<24 {
			return fmt.Errorf("identity %d is not node-local", v.Identity)
		}
		cidrID = v.Identity
		return nil
	})
	want := map[bpf.PolicyKey]bool{
		key(uint32(identity.Host), bpf.ProtoAny, 0, 0):        true,
		key(uint32(client1.Identity), bpf.ProtoTCP, 8080, 16): true,
		key(uint32(client1.Identity), bpf.ProtoTCP, 9000, 14): true,
		key(cidrID, bpf.ProtoAny, 0, 0):                       true,
	}
	eventually(t, 10*time.Second, "policy entries and ingress enforcement", func() error {
		if f, err := endpointFlags(t, cfg.Node, ip); err != nil || f != bpf.EndpointPolicyIngress {
			return fmt.Errorf("flags %v (%w), want policy-ingress", f, err)
		}
		return sameKeys(policyEntries(t, cfg.Node, web.ID), want)
	})

	// A new client identity appears: only its entries are added.
	client2, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "prod", Pod: "client-2", IfIndex: 44, Labels: map[string]string{"app": "client", "v": "2"}})
	if err != nil {
		t.Fatal(err)
	}
	want[key(uint32(client2.Identity), bpf.ProtoTCP, 8080, 16)] = true
	want[key(uint32(client2.Identity), bpf.ProtoTCP, 9000, 14)] = true
	eventually(t, 10*time.Second, "new identity's entries", func() error {
		return sameKeys(policyEntries(t, cfg.Node, web.ID), want)
	})

	// Restart: the pinned enforcement holds while the new agent loads.
	ta.stop()
	ta = startAgent(t, cfg)
	if f, err := endpointFlags(t, cfg.Node, ip); err != nil || f != bpf.EndpointPolicyIngress {
		t.Fatalf("right after restart: flags %v (%v), want policy-ingress", f, err)
	}
	ta.waitOK(t)
	if f, err := endpointFlags(t, cfg.Node, ip); err != nil || f != bpf.EndpointPolicyIngress {
		t.Fatalf("after the restart: flags %v (%v), want policy-ingress", f, err)
	}
	if err := sameKeys(policyEntries(t, cfg.Node, web.ID), want); err != nil {
		t.Fatalf("after the restart: %v", err)
	}

	if err := client.Delete(ctx, keys.Policy("prod", "web")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "policy gone", func() error {
		if f, err := endpointFlags(t, cfg.Node, ip); err != nil || f != 0 {
			return fmt.Errorf("flags %v (%w), want none", f, err)
		}
		if got := policyEntries(t, cfg.Node, web.ID); len(got) != 0 {
			return fmt.Errorf("%d entries left", len(got))
		}
		return lacksIPCache(ipc, netip.MustParsePrefix("198.51.100.0/24"))
	})
}

func sameKeys(got map[bpf.PolicyKey]bpf.PolicyValue, want map[bpf.PolicyKey]bool) error {
	for k := range want {
		if v, ok := got[k]; !ok || v.Verdict != bpf.Allow {
			return fmt.Errorf("missing %s (have %d entries)", k, len(got))
		}
	}
	for k := range got {
		if !want[k] {
			return fmt.Errorf("unexpected %s", k)
		}
	}
	return nil
}
