package nodeagent_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/nodeagent"
	"github.com/meshplane/meshplane/service"
)

// corruptPolicy is the value an operator found in etcd: JSON, the right
// kind, and a spec that is not one.
const corruptPolicy = `{"kind":"NetworkPolicy","spec":5}`

// logRecorder is a slog.Handler that keeps every record, rendered as
// "LEVEL msg key=value ...".
type logRecorder struct {
	mu    *sync.Mutex
	lines *[]string
	attrs []slog.Attr
}

func newLogRecorder() logRecorder { return logRecorder{mu: new(sync.Mutex), lines: new([]string)} }

func (logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range l.attrs {
		fmt.Fprintf(&b, " %s", a)
	}
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s", a); return true })
	l.mu.Lock()
	defer l.mu.Unlock()
	*l.lines = append(*l.lines, b.String())
	return nil
}

func (l logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	l.attrs = append(append([]slog.Attr(nil), l.attrs...), as...)
	return l
}

func (l logRecorder) WithGroup(string) slog.Handler { return l }

// find returns the first line at level that contains every one of subs.
func (l logRecorder) find(level slog.Level, subs ...string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range *l.lines {
		if !strings.HasPrefix(line, level.String()+" ") {
			continue
		}
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			return line, true
		}
	}
	return "", false
}

func (l logRecorder) waitFor(t *testing.T, level slog.Level, subs ...string) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("a %s log line with %q", level, subs), func() error {
		if _, ok := l.find(level, subs...); !ok {
			return fmt.Errorf("no such line")
		}
		return nil
	})
}

// scrape returns the agent's /metrics page.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func hasMetric(t *testing.T, addr string, lines ...string) error {
	t.Helper()
	page := scrape(t, addr)
	for _, l := range lines {
		if !strings.Contains(page, "\n"+l+"\n") {
			return fmt.Errorf("/metrics lacks %q", l)
		}
	}
	return nil
}

// degradedWith waits until the agent is degraded with a reason that
// contains every one of subs.
func degradedWith(t *testing.T, ta *testAgent, subs ...string) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%s degraded naming %q", ta.cfg.Node, subs), func() error {
		st := ta.a.Status()
		if st.State != "degraded" {
			return fmt.Errorf("state %s, reasons %v", st.State, st.Reasons)
		}
		for _, r := range st.Reasons {
			all := true
			for _, s := range subs {
				all = all && strings.Contains(r, s)
			}
			if all {
				return nil
			}
		}
		return fmt.Errorf("no reason names %q: %v", subs, st.Reasons)
	})
}

// cacheStatus returns the agent's status of one cache.
func cacheStatus(ta *testAgent, name string) (nodeagent.CacheStatus, bool) {
	for _, c := range ta.a.Status().Caches {
		if c.Name == name {
			return c, true
		}
	}
	return nodeagent.CacheStatus{}, false
}

// policyAgent starts an agent (maps only) with a log recorder and
// metrics, and two endpoints in prod: web (app=web) and client
// (app=client).
func policyAgent(t *testing.T) (ta *testAgent, logs logRecorder, client *kvstore.Client, keys kvstore.Keys, web, cl nodeagent.Endpoint) {
	t.Helper()
	cluster := etcdtest.Cluster(t)
	keys, _ = kvstore.NewKeys(cluster)
	client = srv.Client(t)
	cfg := agentConfig(t, srv, cluster, 1)
	cfg.Datapath = nodeagent.DatapathNone
	cfg.MetricsAddr = freeAddr(t)
	logs = newLogRecorder()
	cfg.Logger = slog.New(logs)
	ta = startAgent(t, cfg)
	ta.waitOK(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	web, err = ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "prod", Pod: "web-1", IfIndex: 42, Labels: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	cl, err = ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "prod", Pod: "client-1", IfIndex: 43, Labels: map[string]string{"app": "client"}})
	if err != nil {
		t.Fatal(err)
	}
	return ta, logs, client, keys, web, cl
}

func ingressKey(t *testing.T, ep nodeagent.Endpoint, remote uint32, proto uint8, port uint16, bits int) bpf.PolicyKey {
	t.Helper()
	k, err := bpf.PolicyKeyFor(ep.ID, bpf.Ingress, remote, proto, port, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// enforces checks an endpoint's flags and exact policy entries.
func enforces(t *testing.T, node string, ep nodeagent.Endpoint, flags bpf.EndpointFlags, want map[bpf.PolicyKey]bool) error {
	if f, err := endpointFlags(t, node, ep.IPs[0]); err != nil || f != flags {
		return fmt.Errorf("%s flags %v (%w), want %v", ep.Pod, f, err, flags)
	}
	return sameKeys(policyEntries(t, node, ep.ID), want)
}

// TestAgentCorruptPolicyKeepsLastGood reproduces the fault: a policy that
// denies traffic is overwritten in etcd with a value that is not a
// policy. The agent must keep enforcing the last good version (its map
// entries and flags stay), report degraded naming the key, log an error
// and count it; a valid value then replaces it.
func TestAgentCorruptPolicyKeepsLastGood(t *testing.T) {
	t.Parallel()
	ta, logs, client, keys, web, cl := policyAgent(t)
	node := ta.cfg.Node
	putPolicy(t, client, keys, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 8080}]
`)
	want := map[bpf.PolicyKey]bool{
		ingressKey(t, web, uint32(identity.Host), bpf.ProtoAny, 0, 0):   true,
		ingressKey(t, web, uint32(cl.Identity), bpf.ProtoTCP, 8080, 16): true,
	}
	eventually(t, 10*time.Second, "web enforces the policy", func() error {
		return enforces(t, node, web, bpf.EndpointPolicyIngress, want)
	})

	key := keys.Policy("prod", "web")
	putJSON(t, client, key, []byte(corruptPolicy))
	// A policy written after the corrupt value: once it is enforced, the
	// agent has handled the corrupt value too.
	putPolicy(t, client, keys, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sentinel, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
`)
	eventually(t, 10*time.Second, "the sentinel policy is enforced", func() error {
		if f, err := endpointFlags(t, node, cl.IPs[0]); err != nil || f != bpf.EndpointPolicyIngress {
			return fmt.Errorf("client flags %v (%w), want policy-ingress", f, err)
		}
		return nil
	})
	if err := enforces(t, node, web, bpf.EndpointPolicyIngress, want); err != nil {
		t.Fatalf("after the corrupt value: %v (the last good policy must stay in force)", err)
	}
	degradedWith(t, ta, key, "keeping the last good version")
	logs.waitFor(t, slog.LevelError, key, "last good")
	if err := hasMetric(t, ta.cfg.MetricsAddr,
		`meshplane_kvstore_cache_invalid_values{cache="policies"} 1`,
		`meshplane_kvstore_cache_invalid_values_total{cache="policies"} 1`); err != nil {
		t.Error(err)
	}
	cs, ok := cacheStatus(ta, "policies")
	if !ok {
		t.Fatal("status lists no policies cache")
	}
	if cs.InvalidNow != 1 || len(cs.InvalidValues) != 1 || cs.InvalidValues[0].Key != key || !cs.InvalidValues[0].LastGood {
		t.Errorf("policies cache status %+v, want the one invalid key %s with its last good value in force", cs, key)
	}

	// Fixed with another version: it replaces the last good one.
	putPolicy(t, client, keys, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 9090}]
`)
	want = map[bpf.PolicyKey]bool{
		ingressKey(t, web, uint32(identity.Host), bpf.ProtoAny, 0, 0):   true,
		ingressKey(t, web, uint32(cl.Identity), bpf.ProtoTCP, 9090, 16): true,
	}
	eventually(t, 10*time.Second, "the fixed policy is enforced", func() error {
		return enforces(t, node, web, bpf.EndpointPolicyIngress, want)
	})
	ta.waitOK(t)
	if err := hasMetric(t, ta.cfg.MetricsAddr,
		`meshplane_kvstore_cache_invalid_values{cache="policies"} 0`,
		`meshplane_kvstore_cache_invalid_values_total{cache="policies"} 1`); err != nil {
		t.Error(err)
	}
}

// TestAgentCorruptNewPolicyIsolatesNamespace writes a corrupt value on a
// policy key the agent never saw valid. The policy could have selected
// any pod of its namespace, so the agent denies the whole namespace, both
// ways, until the key is fixed or deleted; other namespaces are left
// alone, and other valid policies of the namespace still add their allows.
func TestAgentCorruptNewPolicyIsolatesNamespace(t *testing.T) {
	t.Parallel()
	ta, _, client, keys, web, cl := policyAgent(t)
	node := ta.cfg.Node
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dev, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "dev", Pod: "web-1", IfIndex: 44, Labels: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	key := keys.Policy("prod", "unreadable")
	putJSON(t, client, key, []byte(corruptPolicy))
	both := bpf.EndpointPolicyIngress | bpf.EndpointPolicyEgress
	hostOnly := func(ep nodeagent.Endpoint) map[bpf.PolicyKey]bool {
		return map[bpf.PolicyKey]bool{ingressKey(t, ep, uint32(identity.Host), bpf.ProtoAny, 0, 0): true}
	}
	eventually(t, 10*time.Second, "prod is isolated", func() error {
		for _, ep := range []nodeagent.Endpoint{web, cl} {
			if err := enforces(t, node, ep, both, hostOnly(ep)); err != nil {
				return err
			}
		}
		return nil
	})
	if err := enforces(t, node, dev, 0, nil); err != nil {
		t.Errorf("another namespace: %v", err)
	}
	degradedWith(t, ta, key, "never valid", "deny-all", "prod")

	// A valid policy of the namespace still allows what it allows.
	putPolicy(t, client, keys, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 8080}]
`)
	withAllow := hostOnly(web)
	withAllow[ingressKey(t, web, uint32(cl.Identity), bpf.ProtoTCP, 8080, 16)] = true
	eventually(t, 10*time.Second, "the valid policy's allow adds up", func() error {
		return enforces(t, node, web, both, withAllow)
	})

	// The key is deleted: the placeholder goes, the valid policy stays.
	if err := client.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "isolation lifted", func() error {
		if err := enforces(t, node, web, bpf.EndpointPolicyIngress, withAllow); err != nil {
			return err
		}
		return enforces(t, node, cl, 0, nil)
	})
	ta.waitOK(t)
}

// TestAgentCorruptIdentityKeepsLabels overwrites a peer's identity in
// etcd with garbage. The fault: the engine dropped the identity, so the
// traffic the policy allows from it was denied, with no log line and the
// agent ok. The last good labels must stay, and the agent must say so.
func TestAgentCorruptIdentityKeepsLabels(t *testing.T) {
	t.Parallel()
	ta, logs, client, keys, web, cl := policyAgent(t)
	node := ta.cfg.Node
	putPolicy(t, client, keys, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
`)
	want := map[bpf.PolicyKey]bool{
		ingressKey(t, web, uint32(identity.Host), bpf.ProtoAny, 0, 0): true,
		ingressKey(t, web, uint32(cl.Identity), bpf.ProtoAny, 0, 0):   true,
	}
	eventually(t, 10*time.Second, "web allows the client", func() error {
		return enforces(t, node, web, bpf.EndpointPolicyIngress, want)
	})
	key := keys.IdentityID(cl.Identity.String())
	putJSON(t, client, key, []byte("not a label set"))
	// A new client identity allocated after the corrupt value: once its
	// entry is in, the agent has handled the corrupt value too.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl2, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "prod", Pod: "client-2", IfIndex: 44, Labels: map[string]string{"app": "client", "v": "2"}})
	if err != nil {
		t.Fatal(err)
	}
	want[ingressKey(t, web, uint32(cl2.Identity), bpf.ProtoAny, 0, 0)] = true
	eventually(t, 10*time.Second, "the new identity is allowed", func() error {
		if _, ok := policyEntries(t, node, web.ID)[ingressKey(t, web, uint32(cl2.Identity), bpf.ProtoAny, 0, 0)]; !ok {
			return fmt.Errorf("no entry for identity %d", cl2.Identity)
		}
		return nil
	})
	if err := enforces(t, node, web, bpf.EndpointPolicyIngress, want); err != nil {
		t.Fatalf("after the corrupt identity: %v (its last good labels must stay)", err)
	}
	degradedWith(t, ta, key, "keeping the last good version")
	logs.waitFor(t, slog.LevelError, key)
	if err := hasMetric(t, ta.cfg.MetricsAddr,
		`meshplane_kvstore_cache_invalid_values{cache="identities"} 1`,
		`meshplane_kvstore_cache_invalid_values_total{cache="identities"} 1`); err != nil {
		t.Error(err)
	}

	// A corrupt identity that was never valid matches no selector: it is
	// reported, nothing is installed for it.
	never := keys.IdentityID("70123")
	putJSON(t, client, never, []byte("{"))
	degradedWith(t, ta, never, "never valid")
	if err := enforces(t, node, web, bpf.EndpointPolicyIngress, want); err != nil {
		t.Error(err)
	}
}

// TestAgentCorruptMirrorValues corrupts endpoint, node and service values
// that were good: the agent keeps their last good versions in the maps.
// A corrupt endpoint that was never good gets an ipcache entry with the
// unknown identity, which no policy selects, rather than falling through
// to world or a CIDR identity.
func TestAgentCorruptMirrorValues(t *testing.T) {
	t.Parallel()
	cfg, client, keys := mapsOnly(t)
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	m := ipcacheOf(t, cfg.Node)

	epIP := netip.MustParseAddr("10.203.0.1")
	putEndpoint(t, client, keys, ipcache.Entry{IP: epIP, Identity: 70001, Node: "elsewhere"})
	remoteIP, remoteCIDR := netip.MustParseAddr("127.0.2.9"), netip.MustParsePrefix("10.204.0.0/24")
	putJSON(t, client, keys.Node("remote"), mustJSON(node.Record{Name: "remote", PodCIDRs: []netip.Prefix{remoteCIDR}, IPs: []netip.Addr{remoteIP}}))
	fe := netip.MustParseAddrPort("10.96.0.20:80")
	backend := netip.MustParseAddrPort("10.204.0.5:8080")
	putService(t, client, keys, service.Service{Namespace: "default", Name: "web", Frontends: []service.Frontend{{
		Address: fe, Protocol: service.TCP, Backends: []service.Backend{{Address: backend, Node: "remote"}},
	}}})
	check := func() error {
		if err := hasIPCache(m, host(epIP), 70001, netip.Addr{}); err != nil {
			return err
		}
		if err := hasIPCache(m, remoteCIDR, identity.World, remoteIP); err != nil {
			return err
		}
		got, err := serviceBackends(t, cfg.Node, fe, bpf.ProtoTCP)
		if err != nil {
			return err
		}
		return sameBackends(got, backend.String())
	}
	eventually(t, 10*time.Second, "endpoint, node and service installed", check)

	putJSON(t, client, keys.Endpoint(epIP.String()), []byte("garbage"))
	putJSON(t, client, keys.Node("remote"), []byte(`{"name":"remote","podCIDRs":["not a CIDR"]}`))
	putJSON(t, client, keys.Service("default", "web"), []byte(`{"frontends":7}`))
	neverIP := netip.MustParseAddr("10.204.0.77") // inside the remote node's CIDR (world)
	putJSON(t, client, keys.Endpoint(neverIP.String()), []byte("garbage"))
	// Sentinels written after the corrupt values: once they are in the
	// maps, the agent has handled the corrupt values too.
	sentinelIP := netip.MustParseAddr("10.203.0.99")
	putEndpoint(t, client, keys, ipcache.Entry{IP: sentinelIP, Identity: 70002, Node: "elsewhere"})
	sentinelNodeIP, sentinelCIDR := netip.MustParseAddr("127.0.2.10"), netip.MustParsePrefix("10.205.0.0/24")
	putJSON(t, client, keys.Node("sentinel"), mustJSON(node.Record{Name: "sentinel", PodCIDRs: []netip.Prefix{sentinelCIDR}, IPs: []netip.Addr{sentinelNodeIP}}))
	sentinelFE := netip.MustParseAddrPort("10.96.0.21:80")
	putService(t, client, keys, service.Service{Namespace: "default", Name: "sentinel", Frontends: []service.Frontend{{
		Address: sentinelFE, Protocol: service.TCP, Backends: []service.Backend{{Address: backend, Node: "remote"}},
	}}})
	eventually(t, 10*time.Second, "sentinels installed", func() error {
		if err := hasIPCache(m, host(sentinelIP), 70002, netip.Addr{}); err != nil {
			return err
		}
		if err := hasIPCache(m, sentinelCIDR, identity.World, sentinelNodeIP); err != nil {
			return err
		}
		_, err := serviceBackends(t, cfg.Node, sentinelFE, bpf.ProtoTCP)
		return err
	})
	if err := check(); err != nil {
		t.Fatalf("after the corrupt values: %v (the last good versions must stay)", err)
	}
	for _, k := range []string{keys.Endpoint(epIP.String()), keys.Node("remote"), keys.Service("default", "web")} {
		degradedWith(t, ta, k, "keeping the last good version")
	}
	degradedWith(t, ta, keys.Endpoint(neverIP.String()), "never valid", "unknown identity")
	eventually(t, 10*time.Second, "the never valid endpoint is isolated", func() error {
		return hasIPCache(m, host(neverIP), identity.Unknown, remoteIP)
	})
	for _, name := range []string{"nodes", "endpoints", "services"} {
		cs, ok := cacheStatus(ta, name)
		if !ok {
			t.Fatalf("status lists no %s cache", name)
		}
		want := 1
		if name == "endpoints" {
			want = 2
		}
		if cs.InvalidNow != want {
			t.Errorf("%s cache: %d invalid values now, want %d", name, cs.InvalidNow, want)
		}
	}
	// Deleting the never valid key removes its placeholder entry.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Delete(ctx, keys.Endpoint(neverIP.String())); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "placeholder entry removed", func() error { return lacksIPCache(m, host(neverIP)) })
}
