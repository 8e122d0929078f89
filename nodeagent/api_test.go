package nodeagent_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/nodeagent"
)

// TestAPI drives the agent's gRPC API over its unix socket: health,
// status, nodes, dumps, and the CNI path (AddEndpoint, DeleteEndpoint).
func TestAPI(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	keys, _ := kvstore.NewKeys(cluster)
	client := srv.Client(t)
	cfg := agentConfig(t, srv, cluster, 1)
	cfg.MetricsAddr = freeAddr(t)
	cfg.Datapath = nodeagent.DatapathNone // the veth (ifindex 42) is made up
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	resp, err := http.Get("http://" + cfg.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`meshplane_agent_ready 1`,
		`meshplane_bpf_map_operations_total{map="ipcache",op="put"}`,
		`meshplane_bpf_map_errors_total{map="ipcache"} 0`,
		`meshplane_bpf_reconcile_duration_seconds_bucket{map="ipcache"`,
		`meshplane_kvstore_watch_events_total{cache="nodes"}`,
		`meshplane_gossip_members{state="alive"} 1`,
		`meshplane_kvstore_session_up 1`,
		`meshplane_routing_routes{mode="none"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	fi, err := os.Stat(cfg.APISocket)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("API socket mode %o, want 600", mode)
	}
	conn, err := grpc.NewClient("unix://"+cfg.APISocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	eventually(t, 5*time.Second, "health SERVING", func() error {
		h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: api.Agent_ServiceDesc.ServiceName})
		if err != nil {
			return err
		}
		if h.Status != healthpb.HealthCheckResponse_SERVING {
			return errors.New(h.Status.String())
		}
		return nil
	})
	c := api.NewAgentClient(conn)
	st, err := c.Status(ctx, &api.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != "ok" || st.Node != cfg.Node || len(st.Maps) != 6 || st.Etcd.State != "connected" || len(st.Ipam.PodCidrs) != 1 {
		t.Fatalf("Status() = %v", st)
	}
	nodes, err := c.ListNodes(ctx, &api.ListNodesRequest{})
	if err != nil || len(nodes.Nodes) != 1 || !nodes.Nodes[0].Local || nodes.Nodes[0].Health != "alive" {
		t.Fatalf("ListNodes() = %v, %v", nodes, err)
	}

	// The CNI path: a pod gets an IP from the node's CIDR and an identity,
	// lands in the endpoints map, and is published in etcd on the lease.
	add := &api.AddEndpointRequest{Namespace: "shop", Pod: "web-1", Labels: map[string]string{"app": "web"}, Ifindex: 42, Mac: "02:00:00:00:00:01"}
	r, err := c.AddEndpoint(ctx, add)
	if err != nil {
		t.Fatal(err)
	}
	cidr := netip.MustParsePrefix(st.Ipam.PodCidrs[0])
	ip := netip.MustParseAddr(r.Ips[0])
	if !cidr.Contains(ip) || r.Identity < 256 || r.EndpointId == 0 {
		t.Fatalf("AddEndpoint() = %v, want an IP in %s and an allocated identity", r, cidr)
	}
	again, err := c.AddEndpoint(ctx, add)
	if err != nil || again.Ips[0] != r.Ips[0] || again.EndpointId != r.EndpointId {
		t.Fatalf("AddEndpoint() again = %v, %v; want the same endpoint", again, err)
	}
	kv, ok, err := client.Get(ctx, keys.Endpoint(ip.String()))
	if err != nil || !ok || kv.Lease == 0 {
		t.Fatalf("endpoint key in etcd: ok %v lease %d err %v", ok, kv.Lease, err)
	}
	e, err := ipcache.Decode(ip.String(), kv.Value)
	if err != nil || uint32(e.Identity) != r.Identity || e.Node != cfg.Node {
		t.Fatalf("endpoint entry %+v, %v", e, err)
	}
	eps := pinned[bpf.EndpointKey, bpf.EndpointValue](t, cfg.Node, bpf.EndpointsMapName)
	ipc := ipcacheOf(t, cfg.Node)
	eventually(t, 5*time.Second, "endpoint in the maps", func() error {
		v, ok, err := eps.Lookup(bpf.EndpointKeyFor(ip))
		if err != nil || !ok || v.IfIndex != 42 || v.Identity != r.Identity || v.EndpointID != r.EndpointId {
			return errors.New("endpoints map lacks the pod")
		}
		return hasIPCache(ipc, host(ip), 0+identityOf(r.Identity), cfg.NodeIPs[0])
	})
	dump, err := c.DumpEndpoints(ctx, &api.DumpRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var dumped []*api.EndpointEntry
	for {
		ch, err := dump.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		dumped = append(dumped, ch.Entries...)
	}
	if len(dumped) != 1 || dumped[0].Ip != ip.String() || dumped[0].Mac != "02:00:00:00:00:01" {
		t.Fatalf("DumpEndpoints() = %v", dumped)
	}

	// Bad input is InvalidArgument, and changes nothing.
	_, err = c.AddEndpoint(ctx, &api.AddEndpointRequest{Namespace: "Bad_NS", Pod: "x"})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("AddEndpoint(bad namespace) = %v, want InvalidArgument", err)
	}
	_, err = c.AddEndpoint(ctx, &api.AddEndpointRequest{Namespace: "shop", Pod: "web-2", Labels: map[string]string{"bad key!": "x"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("AddEndpoint(bad label) = %v, want InvalidArgument", err)
	}
	if n, _ := eps.Count(); n != 1 {
		t.Errorf("endpoints map holds %d entries after rejected adds, want 1", n)
	}

	if _, err := c.DeleteEndpoint(ctx, &api.DeleteEndpointRequest{Namespace: "shop", Pod: "web-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteEndpoint(ctx, &api.DeleteEndpointRequest{Namespace: "shop", Pod: "web-1"}); err != nil {
		t.Fatalf("DeleteEndpoint() again = %v, want nil", err)
	}
	if _, ok, _ := client.Get(ctx, keys.Endpoint(ip.String())); ok {
		t.Error("endpoint key still in etcd after DeleteEndpoint")
	}
	eventually(t, 5*time.Second, "endpoint gone from the maps", func() error {
		if _, ok, _ := eps.Lookup(bpf.EndpointKeyFor(ip)); ok {
			return errors.New("endpoints map still has the pod")
		}
		return lacksIPCache(ipc, host(ip))
	})
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
