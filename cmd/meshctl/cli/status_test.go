package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/bpf/bpftest"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/nodeagent"
	"github.com/meshplane/meshplane/service"
)

// TestAgentCommands runs a real agent and checks status, node list and
// the bpf dumps against it, in both output formats.
func TestAgentCommands(t *testing.T) {
	t.Parallel()
	bpftest.Require(t)
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	dir := t.TempDir()
	node := "cli-" + randomSuffix(6)
	sock := filepath.Join(dir, "api.sock")
	a, err := nodeagent.New(nodeagent.Config{
		Node: node, Cluster: cluster, ClusterID: 7, Etcd: srv.Config(), StateDir: filepath.Join(dir, "state"),
		NodeIPs: []netip.Addr{netip.MustParseAddr("127.0.2.1")}, GossipAddr: netip.MustParseAddr("127.0.0.1"),
		GossipPort: -1, GossipInsecure: true, APISocket: sock, APISocketGroup: -1,
		RoutingMode: nodeagent.RoutingNone,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bpf.RemovePins(bpf.Config{Node: node}) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})

	c := srv.Client(t)
	e := ipcache.Entry{IP: netip.MustParseAddr("10.210.0.5"), Identity: 70005, Node: "elsewhere"}
	if err := c.Put(context.Background(), keys.Endpoint(e.IP.String()), e.Encode()); err != nil {
		t.Fatal(err)
	}
	svc, _ := json.Marshal(service.Service{Namespace: "default", Name: "web", Frontends: []service.Frontend{{
		Address: netip.MustParseAddrPort("10.96.0.1:443"), Protocol: service.TCP,
		Backends: []service.Backend{{Address: netip.MustParseAddrPort("10.210.0.5:8443"), Node: "elsewhere"}},
	}}})
	if err := c.Put(context.Background(), keys.Service("default", "web"), svc); err != nil {
		t.Fatal(err)
	}

	out := mustRun(t, "status", "--agent-socket", sock, "--wait", "--timeout", "30s")
	for _, want := range []string{"State:    OK", node, "ipcache", "services", "Routing:  none"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	var st struct {
		State string `json:"state"`
		Node  string `json:"node"`
		Maps  []struct {
			Name string `json:"name"`
		} `json:"maps"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "status", "--agent-socket", sock, "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "ok" || st.Node != node || len(st.Maps) != 6 {
		t.Errorf("status -o json = %+v", st)
	}
	if out := mustRun(t, "node", "list", "--agent-socket", sock); !strings.Contains(out, node+" (local)") || !strings.Contains(out, "alive") {
		t.Errorf("node list:\n%s", out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ipc := mustRun(t, "bpf", "ipcache", "list", "--agent-socket", sock)
		svcs := mustRun(t, "bpf", "services", "list", "--agent-socket", sock, "-o", "json")
		err := func() error {
			if !strings.Contains(ipc, "10.210.0.5/32") || !strings.Contains(ipc, "70005") {
				return fmt.Errorf("bpf ipcache list lacks the entry:\n%s", ipc)
			}
			if !strings.Contains(svcs, `"10.96.0.1:443"`) || !strings.Contains(svcs, `"10.210.0.5:8443"`) {
				return fmt.Errorf("bpf services list -o json lacks the service:\n%s", svcs)
			}
			return nil
		}()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, m := range []string{"endpoints", "policy", "cidr"} {
		mustRun(t, "bpf", m, "list", "--agent-socket", sock, "-o", "json")
	}
	// A relative --agent-socket works (it once failed with "invalid
	// authority").
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, sock)
	if err != nil {
		t.Fatal(err)
	}
	if out, _, err := meshctl(t, "status", "--agent-socket", rel); err != nil || !strings.Contains(out, node) {
		t.Errorf("status --agent-socket %s = %q, %v; want the agent's status", rel, out, err)
	}
	if _, _, err := meshctl(t, "status", "--agent-socket", filepath.Join(dir, "nope.sock")); err == nil || !strings.Contains(err.Error(), "is mesh-agent running") {
		t.Errorf("status without an agent = %v, want a clear error", err)
	}
}

// TestBenchPropagation runs the propagation bench small: it must complete,
// lose nothing during the restart, and print every field.
func TestBenchPropagation(t *testing.T) {
	t.Parallel()
	bpftest.Require(t)
	out := mustRun(t, append(inCluster(t), "bench", "propagation", "--agents", "2", "--entries", "200", "--writes", "5", "-o", "json")...)
	var rep benchPropReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if rep.Agents != 2 || rep.Entries != 200 || rep.PropagationP99MS <= 0 || rep.InitialSyncS <= 0 || rep.RestartResyncS <= 0 {
		t.Errorf("report %+v", rep)
	}
	if rep.MissingDuringRestart != 0 || rep.RestartLookups == 0 {
		t.Errorf("restart: %d of %d lookups missed, want 0 of some", rep.MissingDuringRestart, rep.RestartLookups)
	}
	table := mustRun(t, append(inCluster(t), "bench", "propagation", "--agents", "1", "--entries", "10", "--writes", "2")...)
	for _, f := range []string{"propagation_p50_ms", "propagation_p99_ms", "initial_sync_s", "restart_resync_s", "missing_during_restart", "rss_bytes"} {
		if !strings.Contains(table, f) {
			t.Errorf("table lacks %s:\n%s", f, table)
		}
	}
}
