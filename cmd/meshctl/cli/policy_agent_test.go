package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/bpf/bpftest"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/nodeagent"
)

// startCLIAgent runs an agent (maps only) in cluster for a CLI test and
// returns its node name and API socket.
func startCLIAgent(t *testing.T, cluster string) (name, sock string) {
	t.Helper()
	bpftest.Require(t)
	dir := t.TempDir()
	name = "cli-" + randomSuffix(6)
	sock = filepath.Join(dir, "api.sock")
	a, err := nodeagent.New(nodeagent.Config{
		Node: name, Cluster: cluster, ClusterID: 7, Etcd: srv.Config(), StateDir: filepath.Join(dir, "state"),
		NodeIPs: []netip.Addr{netip.MustParseAddr("127.0.2.1")}, GossipAddr: netip.MustParseAddr("127.0.0.1"),
		GossipPort: -1, GossipInsecure: true, APISocket: sock, APISocketGroup: -1, Datapath: nodeagent.DatapathNone,
		RoutingMode: nodeagent.RoutingNone,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bpf.RemovePins(bpf.Config{Node: name}) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	mustRun(t, "status", "--agent-socket", sock, "--wait", "--timeout", "30s")
	return name, sock
}

func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPolicyListAgent checks list --agent against a real agent: applied
// policies show as enforced by the agent's node once its maps hold them,
// a node whose agent is behind shows them pending, and a corrupt policy
// value shows as invalid, with the nodes that have seen it. status shows
// the policies cache and the invalid key.
func TestPolicyListAgent(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	cluster := g[3]
	keys, _ := kvstore.NewKeys(cluster)
	self, sock := startCLIAgent(t, cluster)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A node whose agent enforces only what was there before.
	behind := node.Record{Name: "behind", PolicyRevision: 1}.Encode()
	b := behind
	if err := c.Put(ctx, keys.Node("behind"), b); err != nil {
		t.Fatal(err)
	}
	mustRun(t, append(g, "policy", "apply", "-f", writeFile(t, "p.yaml", policyFile))...)

	report := func() policyAgentReport {
		var r policyAgentReport
		if err := json.Unmarshal([]byte(mustRun(t, append(g, "policy", "list", "--agent", "-o", "json")...)), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	waitFor(t, "the agent enforces both policies", func() error {
		r := report()
		if len(r.Policies) != 2 {
			return fmt.Errorf("%d policies", len(r.Policies))
		}
		for _, p := range r.Policies {
			if p.Revision == 0 || !slices.Equal(p.EnforcedBy, []string{self}) || !slices.Equal(p.Pending, []string{"behind"}) {
				return fmt.Errorf("%s/%s: revision %d, enforced by %v, pending %v", p.Namespace, p.Name, p.Revision, p.EnforcedBy, p.Pending)
			}
		}
		for _, n := range r.Nodes {
			if n.Node == "behind" && len(n.Behind) != 2 {
				return fmt.Errorf("node behind: %+v, want both policies behind", n)
			}
			if n.Node == self && (n.PolicyRevision == 0 || len(n.Behind) != 0) {
				return fmt.Errorf("node %s: %+v, want a revision and nothing behind", self, n)
			}
		}
		return nil
	})
	table := mustRun(t, append(g, "policy", "list", "--agent")...)
	for _, w := range []string{"REVISION", "NODES", "1/2 (pending: behind)", "POLICY-REVISION", "2 (default/default-deny, prod/allow-web)"} {
		if !strings.Contains(table, w) {
			t.Errorf("list --agent lacks %q:\n%s", w, table)
		}
	}

	// A corrupt value over one of them.
	if err := c.Put(ctx, keys.Policy("prod", "allow-web"), []byte(`{"kind":"NetworkPolicy","spec":5}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the corrupt value is seen by the agent", func() error {
		for _, p := range report().Policies {
			if p.Name == "allow-web" && (p.Error == "" || !slices.Equal(p.EnforcedBy, []string{self})) {
				return fmt.Errorf("allow-web: error %q, seen by %v", p.Error, p.EnforcedBy)
			}
		}
		return nil
	})
	table = mustRun(t, append(g, "policy", "list", "--agent")...)
	if !strings.Contains(table, "invalid value seen by 1/2") || !strings.Contains(table, "ERROR") {
		t.Errorf("list --agent does not show the invalid value:\n%s", table)
	}
	out, _, err := meshctl(t, "status", "--agent-socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"State:    DEGRADED", keys.Policy("prod", "allow-web"), "keeping the last good version", "INVALID KEY", "Policies: enforced up to etcd revision"} {
		if !strings.Contains(out, w) {
			t.Errorf("status lacks %q:\n%s", w, out)
		}
	}
	var policiesRow string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "policies ") {
			policiesRow = l
		}
	}
	if f := strings.Fields(policiesRow); len(f) != 7 || f[2] != "true" || f[5] != "1" || f[6] != "1" {
		t.Errorf("status policies cache row %q, want synced with 1 invalid now and 1 seen", policiesRow)
	}
}
