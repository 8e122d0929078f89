package nodecidr

import (
	"errors"
	"testing"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// TestFullCIDRClaimsAnother is the flow the agent runs: pod IPs come from
// the node's CIDR until it is full, then the node claims another CIDR up to
// its limit, and past the limit the error says so.
func TestFullCIDRClaimsAnother(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	ctx := ctxT(t)
	c := srv.Client(t)
	pools, _ := NewPools(c, cluster)
	// /29 node CIDRs: 8 addresses, 5 usable (network, gateway, broadcast).
	if err := pools.Add(ctx, pool("small", "10.80.0.0/24", 29, "", 0)); err != nil {
		t.Fatal(err)
	}
	cl := newClaimer(t, c, session(t, c), cluster, "n1") // MaxPerFamily 2
	cidrs, err := cl.Ensure(ctx, ipam.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	a, err := podip.Open(podip.Config{Dir: t.TempDir()}, cidrs)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	got := 0
	for i := 0; ; i++ {
		_, err := a.Allocate("ns/pod-"+string(rune('a'+i)), ipam.IPv4)
		if err == nil {
			got++
			continue
		}
		if !errors.Is(err, podip.ErrFull) {
			t.Fatal(err)
		}
		more, err := cl.ClaimMore(ctx, ipam.IPv4)
		if errors.Is(err, ErrLimit) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := a.AddCIDR(more); err != nil {
			t.Fatal(err)
		}
	}
	if got != 10 {
		t.Fatalf("allocated %d pod IPs from two /29s, want 10", got)
	}
	held, err := cl.CIDRs(ctx)
	if err != nil || len(held) != 2 {
		t.Fatalf("node holds %v, %v; want two CIDRs", held, err)
	}
}
