package cli

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/nodecidr"
	"github.com/meshplane/meshplane/node"
)

func TestIPAMPoolsAndNodes(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	cluster := g[3]
	mustRun(t, append(g, "ipam", "pool", "add", "default", "--default", "--dual-stack")...)
	// --exist-ok: the same pool again succeeds; a different one of that
	// name does not.
	if out := mustRun(t, append(g, "ipam", "pool", "add", "default", "--default", "--dual-stack", "--exist-ok")...); !strings.Contains(out, "exists as given") {
		t.Errorf("add --exist-ok of the same pool: %q", out)
	}
	if _, _, err := meshctl(t, append(g, "ipam", "pool", "add", "default", "--default", "--exist-ok")...); !errors.Is(err, ipam.ErrInvalidPool) {
		t.Errorf("add --exist-ok of a different pool: err = %v, want ErrInvalidPool", err)
	}
	// Refused: overlap, host bits, bad mask; nothing written.
	for _, bad := range [][]string{
		{"ipam", "pool", "add", "b", "--ipv4", "10.192.5.0/24", "--ipv4-mask-size", "26"},
		{"ipam", "pool", "add", "c", "--ipv4", "10.1.2.3/16"},
		{"ipam", "pool", "add", "d", "--ipv4", "10.1.0.0/16", "--ipv4-mask-size", "12"},
	} {
		_, _, err := meshctl(t, append(g, bad...)...)
		if !errors.Is(err, ipam.ErrInvalidPool) {
			t.Errorf("%v: err = %v, want ErrInvalidPool", bad, err)
		}
	}
	var pools []struct {
		Name  string `json:"name"`
		Usage []struct {
			Claimed int `json:"claimed"`
		} `json:"usage"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, append(g, "ipam", "pool", "list", "-o", "json")...)), &pools); err != nil || len(pools) != 1 {
		t.Fatalf("pool list: %v %v", pools, err)
	}

	// A node claims; nodes and show see it; removing the pool is refused.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := srv.Client(t)
	s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	cl, err := nodecidr.NewClaimer(c, s, nodecidr.Config{Cluster: cluster, Node: "worker-1"})
	if err != nil {
		t.Fatal(err)
	}
	cidrs, err := cl.Ensure(ctx, ipam.IPv4, ipam.IPv6)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Publish(ctx, []node.CIDRUsage{{CIDR: cidrs[0], Used: 3, Free: 250}}); err != nil {
		t.Fatal(err)
	}
	var nodes []nodecidr.NodeStatus
	if err := json.Unmarshal([]byte(mustRun(t, append(g, "ipam", "nodes", "-o", "json")...)), &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].Node != "worker-1" || !nodes[0].Alive || len(nodes[0].CIDRs) != 2 ||
		len(nodes[0].Usage) != 1 || nodes[0].Usage[0].Used != 3 {
		t.Fatalf("nodes = %+v", nodes)
	}
	show := mustRun(t, append(g, "ipam", "show", "worker-1")...)
	if !strings.Contains(show, cidrs[0].String()) || !strings.Contains(show, "default") {
		t.Fatalf("show:\n%s", show)
	}
	if _, _, err := meshctl(t, append(g, "ipam", "show", "nobody")...); err == nil {
		t.Fatal("show of an unknown node succeeded")
	}
	if _, _, err := meshctl(t, append(g, "ipam", "pool", "remove", "default")...); !errors.Is(err, nodecidr.ErrPoolInUse) {
		t.Fatalf("remove of a used pool: %v", err)
	}
	// The node goes (its lease with it): gc reclaims its CIDRs, and the pool
	// can then be removed.
	if res := mustRun(t, append(g, "ipam", "gc", "--grace", "0", "-o", "json")...); !strings.Contains(res, `"alive": 1`) {
		t.Fatalf("gc of a live node: %s", res)
	}
	_ = s.Close()
	var res nodecidr.GCResult
	if err := json.Unmarshal([]byte(mustRun(t, append(g, "ipam", "gc", "--grace", "0", "-o", "json")...)), &res); err != nil {
		t.Fatal(err)
	}
	if res.Reclaimed != 2 {
		t.Fatalf("gc after the node left: %+v", res)
	}
	mustRun(t, append(g, "ipam", "pool", "remove", "default")...)
}

func TestBenchIPAM(t *testing.T) {
	t.Parallel()
	out := mustRun(t, "--etcd-endpoints", srv.Endpoint(), "bench", "ipam", "--nodes", "40", "--pods", "10", "--clients", "4", "--dual-stack", "-o", "json")
	var rep map[string]any
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench ipam printed %q: %v", out, err)
	}
	for _, f := range []string{"node_claims_per_s", "pod_ips_per_s", "pod_ip_p50_ms", "pod_ip_p99_ms", "ceiling_ops_per_s", "claim_p99_ms"} {
		if _, ok := rep[f]; !ok {
			t.Errorf("field %s missing from %v", f, rep)
		}
	}
	if rep["node_cidrs"] != float64(80) || rep["pod_ips"] != float64(800) {
		t.Fatalf("report %v: want 80 node CIDRs and 800 pod IPs", rep)
	}
}
