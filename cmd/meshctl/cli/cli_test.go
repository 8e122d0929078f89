package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/labels"
)

// meshctl runs the root command with args and returns what it printed.
func meshctl(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := New(&out, &errOut)
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// inCluster returns the global flags that point meshctl at the shared
// server, in a cluster of the test's own.
func inCluster(t *testing.T) []string {
	return []string{"--etcd-endpoints", srv.Endpoint(), "--cluster-name", etcdtest.Cluster(t), "--cluster-id", "7", "--node-name", "test-node"}
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := meshctl(t, args...)
	if err != nil {
		t.Fatalf("meshctl %s: %v (stderr: %s)", strings.Join(args, " "), err, errOut)
	}
	return out
}

// TestIdentityAllocateTooManyLabels: the label set limits hold where
// label sets enter, with the limit in the message.
func TestIdentityAllocateTooManyLabels(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	ls := make([]string, labels.MaxSetLabels+1)
	for i := range ls {
		ls[i] = fmt.Sprintf("k8s:key-%d=v", i)
	}
	_, _, err := meshctl(t, append(g, "identity", "allocate", "--labels", strings.Join(ls, ","))...)
	if !errors.Is(err, labels.ErrTooLarge) || !strings.Contains(err.Error(), "at most 128") {
		t.Fatalf("allocate with %d labels: %v, want ErrTooLarge naming the limit", len(ls), err)
	}
}

func TestIdentityAllocateListGet(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	allocate := append(g, "identity", "allocate", "--labels", "k8s:app=web,k8s:tier=front,k8s:pod-template-hash=5d8f7c9b6")
	first := mustRun(t, allocate...)
	id, err := identity.Parse(strings.TrimSpace(first))
	if err != nil || !strings.HasSuffix(first, "\n") || strings.Count(first, "\n") != 1 {
		t.Fatalf("allocate printed %q, want one ID and a newline", first)
	}
	if id.Cluster() != 7 {
		t.Fatalf("ID %d has cluster %d, want 7", id, id.Cluster())
	}
	// The same workload, another pod: same ID (the hash label is filtered).
	second := mustRun(t, append(g, "identity", "allocate", "--labels", "k8s:tier=front,k8s:app=web")...)
	if second != first {
		t.Fatalf("second allocate = %q, first = %q", second, first)
	}

	var list []identityInfo
	if err := json.Unmarshal([]byte(mustRun(t, append(g, "identity", "list", "-o", "json")...)), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != id || list[0].Labels != "k8s:app=web,k8s:tier=front" || list[0].Refs != 0 {
		t.Fatalf("list = %+v, want ID %d with no references (the CLI's session is gone)", list, id)
	}
	table := mustRun(t, append(g, "identity", "list")...)
	if !strings.HasPrefix(table, "ID") || !strings.Contains(table, id.String()+"  7") {
		t.Fatalf("list table:\n%s", table)
	}

	got := mustRun(t, append(g, "identity", "get", id.String())...)
	if !strings.Contains(got, "k8s:app=web,k8s:tier=front") {
		t.Fatalf("get printed:\n%s", got)
	}
	var info identityInfo
	if err := json.Unmarshal([]byte(mustRun(t, append(g, "identity", "get", id.String(), "-o", "json")...)), &info); err != nil {
		t.Fatal(err)
	}
	if info.ID != id || info.Labels != "k8s:app=web,k8s:tier=front" {
		t.Fatalf("get -o json = %+v", info)
	}

	host := mustRun(t, append(g, "identity", "get", "host")...)
	if !strings.Contains(host, "RESERVED  host") {
		t.Fatalf("get host printed:\n%s", host)
	}
	unknown := id + 1
	if _, _, err := meshctl(t, append(g, "identity", "get", unknown.String())...); !errors.Is(err, ErrNotFound) ||
		!strings.Contains(err.Error(), "identity "+unknown.String()+" not found") {
		t.Fatalf("get of an unknown ID: %v", err)
	}
}

func TestIdentityListSkipsCorruptKeys(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	g := []string{"--etcd-endpoints", srv.Endpoint(), "--cluster-name", cluster, "--node-name", "n1"}
	mustRun(t, append(g, "identity", "allocate", "--labels", "k8s:app=db")...)
	keys, _ := kvstore.NewKeys(cluster)
	c := srv.Client(t)
	if err := c.Put(context.Background(), keys.IdentityID("65800"), []byte("not a label")); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := meshctl(t, append(g, "identity", "list", "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	var list []identityInfo
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 {
		t.Fatalf("list = %s, %v; want the one good identity", out, err)
	}
	if !strings.Contains(errOut, "warning") || !strings.Contains(errOut, "65800") {
		t.Fatalf("stderr = %q, want a warning about key 65800", errOut)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	_ = l.Close()

	tests := []struct {
		name string
		args []string
		is   error  // errors.Is target, if any
		says string // part of the message
	}{
		{"bad labels", append(inCluster(t), "identity", "allocate", "--labels", "app=web"), labels.ErrInvalid, "--labels"},
		{"cluster ID", []string{"--cluster-id", "300", "identity", "list"}, identity.ErrInvalid, "cluster ID 300"},
		{"cluster name", []string{"--cluster-name", "Prod_1", "identity", "list"}, kvstore.ErrConfig, "--cluster-name"},
		{"bad ID", append(inCluster(t), "identity", "get", "web"), identity.ErrInvalid, `"web"`},
		{"unreachable", []string{"--etcd-endpoints", closed, "--etcd-dial-timeout", "1s", "identity", "list"}, kvstore.ErrUnavailable, closed},
		{"unreachable allocate", []string{"--etcd-endpoints", closed, "--etcd-dial-timeout", "1s", "--node-name", "n",
			"identity", "allocate", "--labels", "k8s:app=web"}, kvstore.ErrUnavailable, "etcd"},
		{"only filtered labels", append(inCluster(t), "identity", "allocate", "--labels", "k8s:pod-template-hash=5d8f7c9b6"), labels.ErrInvalid, "names the workload"},
		{"no labels", append(inCluster(t), "identity", "allocate"), nil, "labels"},
		{"bad output", append(inCluster(t), "identity", "list", "-o", "yaml"), nil, "table or json"},
		{"bad node", append(inCluster(t), "--node-name", "Node_1", "identity", "allocate", "--labels", "k8s:app=web"), kvstore.ErrConfig, "--node-name"},
		{"unknown flag", []string{"identity", "list", "--bogus"}, nil, "--help"},
		{"bench too big", append(inCluster(t), "bench", "identity", "--agents", "1000", "--labelsets", "100"), nil, "--shared"},
		{"demo external", append(inCluster(t), "demo", "identities"), nil, "drop --etcd-endpoints"},
		// meshctl starts no etcd unless asked: no endpoints says what to pass.
		{"no etcd", []string{"identity", "list"}, kvstore.ErrConfig, "pass --etcd-endpoints (or MESHPLANE_ETCD_ENDPOINTS)"},
		{"no etcd names the embedded option", []string{"ipam", "pool", "list"}, kvstore.ErrConfig, "--etcd-embedded"},
		{"embedded and endpoints", []string{"--etcd-embedded", "--etcd-endpoints", closed, "identity", "list"}, kvstore.ErrConfig, "keep one"},
		{"embedded with credentials", []string{"--etcd-embedded", "--etcd-user", "u", "identity", "list"}, kvstore.ErrConfig, "--etcd-endpoints"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, _, err := meshctl(t, tt.args...)
			if err == nil {
				t.Fatalf("meshctl %v succeeded: %q", tt.args, out)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("error %q does not wrap %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.says) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q: want one line mentioning %q", err, tt.says)
			}
		})
	}
}

func TestIdentityGC(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	id := strings.TrimSpace(mustRun(t, append(g, "identity", "allocate", "--labels", "k8s:app=gone")...))
	// An identity an agent references survives.
	cluster := g[3]
	keys, _ := kvstore.NewKeys(cluster)
	ctx := context.Background()
	ag, err := startAgent(ctx, srv.Client(t), false, agentConfig{cluster: cluster, clusterID: 7, node: "live-node"})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.stop()
	kept, err := ag.alloc.Allocate(ctx, labels.MustNewSet(labels.Label{Source: "k8s", Key: "app", Value: "kept"}))
	if err != nil {
		t.Fatal(err)
	}

	out, errOut, err := meshctl(t, append(g, "identity", "gc", "--grace", "0", "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	var rep gcReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Deleted != 1 || rep.Referenced != 1 || rep.Passes != 2 || !strings.Contains(errOut, "1 candidates, waiting 0s") {
		t.Fatalf("gc = %+v, stderr %q; want 1 deleted, 1 referenced in 2 passes", rep, errOut)
	}
	if _, _, err := meshctl(t, append(g, "identity", "get", id)...); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get %s after gc: %v, want ErrNotFound", id, err)
	}
	c := srv.Client(t)
	if _, ok, err := c.Get(ctx, keys.IdentityID(kept.String())); err != nil || !ok {
		t.Fatalf("referenced identity %d: ok %v, err %v; want it kept", kept, ok, err)
	}

	// Nothing unreferenced: one pass, no wait.
	out = mustRun(t, append(g, "identity", "gc", "--grace", "1h")...)
	if !strings.Contains(out, "deleted     0") {
		t.Fatalf("second gc:\n%s", out)
	}
}

func TestBenchIdentity(t *testing.T) {
	tests := []struct {
		name       string
		global     []string
		shared     bool
		identities int
	}{
		{"distinct on embedded etcd", []string{"--etcd-embedded", "--state-dir", t.TempDir()}, false, 4 * 20},
		{"shared", []string{"--etcd-endpoints", srv.Endpoint()}, true, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(tt.global, "--cluster-id", "9", "bench", "identity", "--agents", "4", "--labelsets", "20", "-o", "json")
			if tt.shared {
				args = append(args, "--shared")
			}
			out := mustRun(t, args...)
			var m map[string]any
			if err := json.Unmarshal([]byte(out), &m); err != nil {
				t.Fatalf("%v in %s", err, out)
			}
			want := []string{"agents", "labelsets", "shared", "identities", "allocations", "allocs_per_s", "p50_ms", "p99_ms",
				"txns", "txns_per_identity", "ceiling_ops_per_s", "ratio", "known_lookup_ns"}
			if len(m) != len(want) {
				t.Errorf("got %d fields, want %d: %s", len(m), len(want), out)
			}
			for _, k := range want {
				if _, ok := m[k]; !ok {
					t.Errorf("no field %q in %s", k, out)
				}
			}
			if m["identities"] != float64(tt.identities) || m["allocations"] != float64(80) || m["agents"] != float64(4) {
				t.Fatalf("identities %v, allocations %v; want %d, 80:\n%s", m["identities"], m["allocations"], tt.identities, out)
			}
			for _, k := range []string{"allocs_per_s", "ceiling_ops_per_s", "ratio", "txns", "known_lookup_ns"} {
				if v, _ := m[k].(float64); v <= 0 {
					t.Errorf("%s = %v, want > 0", k, m[k])
				}
			}
		})
	}
	// The run against the shared server left no keys behind.
	kvs, _, err := srv.Client(t).List(context.Background(), kvstore.Root+"bench-")
	if err != nil || len(kvs) != 0 {
		t.Fatalf("bench left %d keys (err %v)", len(kvs), err)
	}
}

func TestBenchIdentityTable(t *testing.T) {
	out := mustRun(t, "--etcd-endpoints", srv.Endpoint(), "bench", "identity", "--agents", "2", "--labelsets", "3")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 14 || !strings.HasPrefix(lines[0], "METRIC") {
		t.Fatalf("table:\n%s", out)
	}
	col := strings.Index(lines[0], "VALUE")
	for _, l := range lines[1:] {
		if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
			t.Fatalf("value not aligned at column %d: %q", col, l)
		}
	}
}

func TestDemo(t *testing.T) {
	out := mustRun(t, "--state-dir", t.TempDir(), "demo", "identities")
	for _, want := range []string{
		"WORKLOAD", "shop/frontend", "node-1,node-2", "k8s:app=frontend,k8s:io.kubernetes.pod.namespace=shop",
		"stopping node-3", "2 deleted",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if strings.Contains(out, "pod-template-hash=") {
		t.Errorf("demo shows a filtered label")
	}
	// Collected: exactly the two workloads only node-3 ran.
	var collected string
	for l := range strings.SplitSeq(out, "\n") {
		if c, ok := strings.CutPrefix(l, "collected: "); ok {
			collected = c
		}
	}
	if !strings.Contains(collected, "shop/db") || !strings.Contains(collected, "billing/db") || strings.Count(collected, "(") != 2 {
		t.Fatalf("collected: %q\n%s", collected, out)
	}
}

func TestEnvironmentDefaults(t *testing.T) {
	t.Setenv("MESHPLANE_ETCD_ENDPOINTS", srv.Endpoint())
	t.Setenv("MESHPLANE_CLUSTER_NAME", etcdtest.Cluster(t))
	t.Setenv("MESHPLANE_CLUSTER_ID", "12")
	t.Setenv("MESHPLANE_NODE_NAME", "env-node")
	id, err := identity.Parse(strings.TrimSpace(mustRun(t, "identity", "allocate", "--labels", "k8s:app=env")))
	if err != nil || id.Cluster() != 12 {
		t.Fatalf("allocate with the environment: ID %d, %v; want cluster 12", id, err)
	}
	// A flag beats the environment.
	if _, _, err := meshctl(t, "--cluster-id", "0", "identity", "list"); !errors.Is(err, identity.ErrInvalid) {
		t.Fatalf("--cluster-id 0: %v", err)
	}
	t.Setenv("MESHPLANE_ETCD_DIAL_TIMEOUT", "soon")
	if _, _, err := meshctl(t, "identity", "list"); err == nil || !strings.Contains(err.Error(), "MESHPLANE_ETCD_DIAL_TIMEOUT") {
		t.Fatalf("bad MESHPLANE_ETCD_DIAL_TIMEOUT: %v", err)
	}
}

// TestPasswordWarnings: a password on the command line, or in a file
// other users can read, earns a warning that never shows the password.
func TestPasswordWarnings(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	open := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(open, []byte("s3cret-pw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	private := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(private, []byte("s3cret-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string // "" for no warning
	}{
		{"flag", []string{"--etcd-user", "agent", "--etcd-password", "s3cret-pw"}, "--etcd-password on the command line"},
		{"open file", []string{"--etcd-user", "agent", "--etcd-password-file", open}, "is readable by other users"},
		{"private file", []string{"--etcd-user", "agent", "--etcd-password-file", private}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, err := meshctl(t, append(append(g, tt.args...), "identity", "list")...)
			if err != nil {
				t.Fatalf("identity list: %v", err)
			}
			if strings.Contains(stderr, "s3cret-pw") || (tt.want == "") != (stderr == "") || !strings.Contains(stderr, tt.want) {
				t.Fatalf("stderr %q, want a warning saying %q (and never the password)", stderr, tt.want)
			}
		})
	}
	if _, _, err := meshctl(t, append(g, "--etcd-user", "agent", "--etcd-password", "a", "--etcd-password-file", private, "identity", "list")...); !errors.Is(err, kvstore.ErrConfig) {
		t.Fatalf("a password flag and a password file: %v, want ErrConfig", err)
	}
}
