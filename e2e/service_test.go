package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/lab"
)

// spread probes the service n times and counts who answered.
func spread(t *testing.T, l *lab.Lab, from, svc string, port uint16, n int) map[string]int {
	t.Helper()
	got := make(map[string]int)
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := l.Probe(ctx, lab.ProbeSpec{From: from, To: svc, Port: port, Timeout: time.Second})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if !r.Allowed {
			got["(failed: "+r.Error+" "+r.Reason+")"]++
			continue
		}
		got[r.Answered]++
	}
	return got
}

// TestServiceBackends checks ClusterIP translation: new connections spread
// evenly over the backends (replies come back from the frontend, or the
// probe would fail), a deleted backend gets no new connection once its
// deletion returns, and a backend whose node gossip declares dead (its
// agent crashed: a graceful stop is a restart, which keeps the backends,
// TestGracefulRestartKeepsBackends) stops receiving new connections while
// its pod still runs, until the node is back.
func TestServiceBackends(t *testing.T) {
	l := startLab(t)
	const (
		client = "prod/client"
		svc    = "svc:prod/web"
		web1   = "c1/prod/web-1"
		web2   = "c1/prod/web-2"
	)
	got := spread(t, l, client, svc, 80, 60)
	if got[web1] < 12 || got[web2] < 12 || got[web1]+got[web2] != 60 {
		t.Fatalf("60 connections to the service: %v; want both backends, each at least 12", got)
	}

	// The node of web-2 dies as far as gossip can tell: its agent crashes
	// and no longer answers probes. Its pod still runs and would answer.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.KillAgent(ctx, "c1", "n2"); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, l, "n1", "n2", "dead")
	if got = spread(t, l, client, svc, 80, 30); got[web1] != 30 {
		t.Fatalf("with n2 dead: %v; want web-1 only", got)
	}
	if err := l.StartAgent(ctx, "c1", "n2"); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, l, "n1", "n2", "alive")
	deadline := time.Now().Add(15 * time.Second)
	for {
		got = spread(t, l, client, svc, 80, 10)
		if got[web2] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after n2's agent came back: %v; want web-2 again", got)
		}
	}

	// A deleted pod: no new connection reaches it after DeletePod returns.
	if err := l.DeletePod(ctx, "prod/web-2"); err != nil {
		t.Fatal(err)
	}
	if got = spread(t, l, client, svc, 80, 30); got[web1] != 30 {
		t.Fatalf("after web-2 was deleted: %v; want all 30 on web-1", got)
	}
}

// waitHealth waits until node's agent sees other in the gossip state.
func waitHealth(t *testing.T, l *lab.Lab, node, other, state string) {
	t.Helper()
	n, err := l.Node("c1", node)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+n.AgentSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := api.NewAgentClient(conn).ListNodes(ctx, &api.ListNodesRequest{})
		cancel()
		if err == nil {
			for _, nd := range resp.Nodes {
				if nd.Name == other && nd.Health == state {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not see %s %s within 20s (%v)", node, other, state, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
