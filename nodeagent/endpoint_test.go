package nodeagent_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/nodeagent"
)

// apiClient connects to a test agent's API socket.
func apiClient(t *testing.T, ta *testAgent) api.AgentClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+ta.cfg.APISocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return api.NewAgentClient(conn)
}

// nothingWritten checks that no endpoint of the agent exists anywhere:
// no state file (temporary or not), no ipcache entry in etcd, no pod IP
// in use.
func nothingWritten(t *testing.T, ta *testAgent, keys kvstore.Keys) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	files, _ := filepath.Glob(filepath.Join(ta.cfg.StateDir, "endpoints", "*"))
	var left []string
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && !fi.IsDir() {
			left = append(left, filepath.Base(f))
		}
	}
	if len(left) > 0 {
		t.Errorf("files left in the endpoint state dir: %v", left)
	}
	kvs, _, err := srv.Client(t).List(ctx, keys.EndpointsPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) > 0 {
		t.Errorf("endpoint keys left in etcd: %s ...", kvs[0].Key)
	}
	if st := ta.a.Status(); st.IPAM.Used != 0 || st.State != "ok" {
		t.Errorf("after a refused AddEndpoint: state %s (%v), %d pod IPs used; want ok and 0", st.State, st.Reasons, st.IPAM.Used)
	}
}

// TestAddEndpointValidates: what AddEndpoint can check before it succeeds
// it checks, and refuses with InvalidArgument, writing nothing. An
// ifindex that did not exist was accepted once, and the agent stayed
// degraded until the endpoint was deleted.
func TestAddEndpointValidates(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	cfg := agentConfig(t, srv, cluster, 1) // the eBPF datapath
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	c := apiClient(t, ta)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	notNetns := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(notNetns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mod  func(*api.AddEndpointRequest)
		want string
	}{
		{"no such interface", func(r *api.AddEndpointRequest) { r.Ifindex = 999999 }, "ifindex 999999 of shop/web-1: no such interface in the agent's network namespace"},
		{"multicast MAC", func(r *api.AddEndpointRequest) { r.Mac = "01:00:5e:00:00:01" }, `MAC "01:00:5e:00:00:01" of shop/web-1 is a multicast address`},
		{"zero MAC", func(r *api.AddEndpointRequest) { r.NodeMac = "00:00:00:00:00:00" }, `node MAC "00:00:00:00:00:00" of shop/web-1 is all zeros`},
		{"long MAC", func(r *api.AddEndpointRequest) { r.Mac = "02:00:00:00:00:00:00:01" }, "six colon-separated hex bytes"},
		{"relative netns", func(r *api.AddEndpointRequest) { r.Netns = "run/netns/x" }, `netns "run/netns/x" of shop/web-1: not an absolute path`},
		{"missing netns", func(r *api.AddEndpointRequest) { r.Netns = "/run/netns/meshplane-test-none" }, `netns "/run/netns/meshplane-test-none" of shop/web-1 does not exist`},
		{"netns not a namespace", func(r *api.AddEndpointRequest) { r.Netns = notNetns }, "is not a network namespace"},
		{"too many labels", func(r *api.AddEndpointRequest) {
			for i := range 10000 {
				r.Labels["key-"+strconv.Itoa(i)] = "v"
			}
		}, "at most 128"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &api.AddEndpointRequest{Namespace: "shop", Pod: "web-1", Labels: map[string]string{"app": "web"}}
			tt.mod(r)
			resp, err := c.AddEndpoint(ctx, r)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tt.want) {
				t.Fatalf("AddEndpoint = %v, %v; want InvalidArgument saying %q", resp, err, tt.want)
			}
			nothingWritten(t, ta, keys)
		})
	}
	// With no interface (ifindex 0) and no netns the pod is accepted.
	if _, err := c.AddEndpoint(ctx, &api.AddEndpointRequest{Namespace: "shop", Pod: "web-1", Labels: map[string]string{"app": "web"}}); err != nil {
		t.Fatalf("AddEndpoint without an interface: %v", err)
	}
	if _, err := c.DeleteEndpoint(ctx, &api.DeleteEndpointRequest{Namespace: "shop", Pod: "web-1"}); err != nil {
		t.Fatal(err)
	}
}

// TestAddEndpointRepeatChanged: an AddEndpoint repeated for a pod the
// agent has, with other labels, namespace labels, ports or interface, is
// refused (FailedPrecondition) naming what differs, and the endpoint
// stays as it was; an identical repeat is an idempotent success. Other
// namespace labels or ports once reported success and kept the old
// identity.
func TestAddEndpointRepeatChanged(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	cfg := agentConfig(t, srv, cluster, 1)
	cfg.Datapath = nodeagent.DatapathNone // the veth is made up
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	c := apiClient(t, ta)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	base := func() *api.AddEndpointRequest {
		return &api.AddEndpointRequest{
			Namespace: "shop", Pod: "web-1", Labels: map[string]string{"app": "web"},
			NamespaceLabels: map[string]string{"team": "a"}, Ifindex: 42, Mac: "02:00:00:00:00:01",
			Ports: []*api.ContainerPort{{Name: "http", Port: 8080, Protocol: "TCP"}},
		}
	}
	first, err := c.AddEndpoint(ctx, base())
	if err != nil {
		t.Fatal(err)
	}
	stored, _, err := srv.Client(t).Get(ctx, keys.Endpoint(first.Ips[0]))
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.AddEndpoint(ctx, base())
	if err != nil || again.Identity != first.Identity || again.Ips[0] != first.Ips[0] || again.EndpointId != first.EndpointId {
		t.Fatalf("identical repeat = %v, %v; want %v", again, err, first)
	}
	tests := []struct {
		name string
		mod  func(*api.AddEndpointRequest)
		want string
	}{
		{"labels", func(r *api.AddEndpointRequest) { r.Labels["app"] = "db" }, "labels"},
		{"namespace labels", func(r *api.AddEndpointRequest) { r.NamespaceLabels["team"] = "b" }, "namespace labels"},
		{"ports", func(r *api.AddEndpointRequest) { r.Ports[0].Port = 9090 }, "ports"},
		{"port protocol", func(r *api.AddEndpointRequest) { r.Ports[0].Protocol = "UDP" }, "ports"},
		{"interface", func(r *api.AddEndpointRequest) { r.Ifindex = 43 }, "ifindex"},
		{"MAC", func(r *api.AddEndpointRequest) { r.Mac = "02:00:00:00:00:02" }, "MAC"},
		{"several", func(r *api.AddEndpointRequest) { r.NamespaceLabels = nil; r.Ports = nil }, "namespace labels and ports"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := base()
			tt.mod(r)
			resp, err := c.AddEndpoint(ctx, r)
			msg := status.Convert(err).Message()
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(msg, "shop/web-1 exists with other "+tt.want) || !strings.Contains(msg, "delete it") {
				t.Fatalf("AddEndpoint with other %s = %v, %v; want FailedPrecondition naming %q", tt.name, resp, err, tt.want)
			}
			kv, _, err := srv.Client(t).Get(ctx, keys.Endpoint(first.Ips[0]))
			if err != nil || string(kv.Value) != string(stored.Value) || kv.ModRevision != stored.ModRevision {
				t.Fatalf("the endpoint's etcd entry changed: %s (%v), was %s", kv.Value, err, stored.Value)
			}
		})
	}
}

// TestAddEndpointFailedWriteLeavesNothing: a state file that cannot be
// written fails AddEndpoint and leaves no temporary file, IP, identity or
// etcd entry behind.
func TestAddEndpointFailedWriteLeavesNothing(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	cfg := agentConfig(t, srv, cluster, 1)
	cfg.Datapath = nodeagent.DatapathNone
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	// A directory where the state file goes: the rename onto it fails.
	blocker := filepath.Join(cfg.StateDir, "endpoints", "shop_web-1.json")
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	c := apiClient(t, ta)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.AddEndpoint(ctx, &api.AddEndpointRequest{Namespace: "shop", Pod: "web-1", Labels: map[string]string{"app": "web"}}); err == nil {
		t.Fatal("AddEndpoint succeeded with its state file blocked")
	}
	nothingWritten(t, ta, keys)
}
