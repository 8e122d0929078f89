package nodeagent_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshplane/meshplane/api"
)

// TestAttachments: the API's CNI side. AddEndpoint records the container
// and interface (ListEndpoints shows them, filtered by container); a
// DeleteEndpoint scoped to another container leaves the endpoint, one
// scoped to its own removes it; a pod without metadata is NotFound.
func TestAttachments(t *testing.T) {
	cfg, _, _ := mapsOnly(t)
	cfg.PodMetadataWait = 200 * time.Millisecond
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	c := apiClient(t, ta)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, pod := range []string{"web-1", "web-2"} {
		_, err := c.AddEndpoint(ctx, &api.AddEndpointRequest{
			Namespace: "shop", Pod: pod, ContainerId: "c-" + pod, Ifname: "eth0",
			Labels: map[string]string{"app": "web"}, Ifindex: 1,
		})
		if err != nil {
			t.Fatalf("AddEndpoint(%s): %v", pod, err)
		}
	}
	all, err := c.ListEndpoints(ctx, &api.ListEndpointsRequest{})
	if err != nil || len(all.Endpoints) != 2 {
		t.Fatalf("ListEndpoints() = %v, %v; want 2", all, err)
	}
	one, err := c.ListEndpoints(ctx, &api.ListEndpointsRequest{ContainerId: "c-web-2"})
	if err != nil || len(one.Endpoints) != 1 {
		t.Fatalf("ListEndpoints(c-web-2) = %v, %v", one, err)
	}
	if e := one.Endpoints[0]; e.Namespace != "shop" || e.Pod != "web-2" || e.Ifname != "eth0" || len(e.Ips) != 1 || len(e.Gateways) != 1 || e.Identity < 256 || e.EndpointId == 0 {
		t.Fatalf("ListEndpoints(c-web-2) = %+v", e)
	}
	if _, err := c.DeleteEndpoint(ctx, &api.DeleteEndpointRequest{Namespace: "shop", Pod: "web-1", ContainerId: "an-older-sandbox"}); err != nil {
		t.Fatal(err)
	}
	if n := len(ta.a.Endpoints()); n != 2 {
		t.Fatalf("a delete scoped to another container removed an endpoint: %d left", n)
	}
	if _, err := c.DeleteEndpoint(ctx, &api.DeleteEndpointRequest{Namespace: "shop", Pod: "web-1", ContainerId: "c-web-1"}); err != nil {
		t.Fatal(err)
	}
	if eps := ta.a.Endpoints(); len(eps) != 1 || eps[0].Pod != "web-2" {
		t.Fatalf("endpoints after the scoped delete = %v, want web-2 only", eps)
	}
	_, err = c.AddEndpoint(ctx, &api.AddEndpointRequest{Namespace: "shop", Pod: "unpublished", ContainerId: "c-x", Ifindex: 1})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("AddEndpoint without metadata = %v, want NotFound", err)
	}
}
