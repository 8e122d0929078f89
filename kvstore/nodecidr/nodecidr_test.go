package nodecidr

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/node"
)

var srv *etcdtest.Server

func TestMain(m *testing.M) { os.Exit(etcdtest.RunMain(m, &srv)) }

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func pool(name, v4 string, m4 int, v6 string, m6 int) ipam.Pool {
	p := ipam.Pool{Name: name}
	if v4 != "" {
		p.IPv4, p.IPv4MaskSize = []netip.Prefix{netip.MustParsePrefix(v4)}, m4
	}
	if v6 != "" {
		p.IPv6, p.IPv6MaskSize = []netip.Prefix{netip.MustParsePrefix(v6)}, m6
	}
	return p
}

func session(t testing.TB, c *kvstore.Client) *kvstore.Session {
	t.Helper()
	s, err := kvstore.NewSession(context.Background(), c, kvstore.SessionConfig{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newClaimer(t testing.TB, c *kvstore.Client, s *kvstore.Session, cluster, node string) *Claimer {
	t.Helper()
	cl, err := NewClaimer(c, s, Config{Cluster: cluster, Node: node, MaxPerFamily: 2})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func TestPoolValidationInEtcd(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	c := srv.Client(t)
	ctx := ctxT(t)
	pools, _ := NewPools(c, cluster)
	a := pool("a", "10.0.0.0/16", 24, "", 0)
	if err := pools.Add(ctx, a); err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct {
		p    ipam.Pool
		want error
	}{
		"overlaps another pool": {pool("b", "10.0.128.0/17", 24, "", 0), ipam.ErrInvalidPool},
		"same name":             {pool("a", "10.9.0.0/16", 24, "", 0), ipam.ErrInvalidPool},
		"mask does not fit":     {pool("c", "10.1.0.0/16", 8, "", 0), ipam.ErrInvalidPool},
	} {
		if err := pools.Add(ctx, tt.p); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tt.want)
		}
	}
	got, err := pools.List(ctx)
	if err != nil || len(got) != 1 {
		t.Fatalf("pools after refused adds: %v, %v", got, err)
	}
	// A node claims from a; shrinking a so its CIDR falls out is refused,
	// and so is removing a.
	s := session(t, c)
	cidrs, err := newClaimer(t, c, s, cluster, "n1").Ensure(ctx, ipam.IPv4)
	if err != nil || len(cidrs) != 1 {
		t.Fatalf("Ensure = %v, %v", cidrs, err)
	}
	smaller := pool("a", "10.0.0.0/16", 25, "", 0) // mask changed
	if err := pools.Update(ctx, smaller); !errors.Is(err, ErrPoolInUse) {
		t.Fatalf("update orphaning a claim: %v", err)
	}
	if err := pools.Remove(ctx, "a"); !errors.Is(err, ErrPoolInUse) {
		t.Fatalf("remove of a used pool: %v", err)
	}
	grown := pool("a", "10.0.0.0/15", 24, "", 0)
	if err := pools.Update(ctx, grown); err != nil {
		t.Fatalf("growing a pool: %v", err)
	}
	if err := pools.Remove(ctx, "nope"); !errors.Is(err, ErrPoolNotFound) {
		t.Fatalf("remove unknown: %v", err)
	}
}

// TestHundredsClaimAtOnce: 300 nodes race for CIDRs of a pool with 512; no
// CIDR is held twice, every node gets one, and etcd agrees.
func TestHundredsClaimAtOnce(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	ctx := ctxT(t)
	var clients []*kvstore.Client
	var sessions []*kvstore.Session
	for range 8 {
		c := srv.Client(t)
		clients = append(clients, c)
		sessions = append(sessions, session(t, c))
	}
	pools, _ := NewPools(clients[0], cluster)
	if err := pools.Add(ctx, pool("p", "10.50.0.0/15", 24, "fd00:50::/100", 112)); err != nil {
		t.Fatal(err)
	}
	const nodes = 300
	got := make([][]netip.Prefix, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			cl := newClaimer(t, clients[i%8], sessions[i%8], cluster, fmt.Sprintf("node-%d", i))
			cidrs, err := cl.Ensure(ctx, ipam.IPv4, ipam.IPv6)
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = cidrs
		})
	}
	wg.Wait()
	owner := map[netip.Prefix]int{}
	for i, cidrs := range got {
		if len(cidrs) != 2 || ipam.Of(cidrs[0]) == ipam.Of(cidrs[1]) {
			t.Fatalf("node %d got %v, want one IPv4 and one IPv6 CIDR", i, cidrs)
		}
		for _, c := range cidrs {
			for o, j := range owner {
				if o.Overlaps(c) {
					t.Fatalf("nodes %d and %d hold overlapping %s and %s", j, i, o, c)
				}
			}
			owner[c] = i
		}
	}
	claims, _, err := readClaims(ctx, clients[0], mustKeys(t, cluster))
	if err != nil || len(claims) != 2*nodes {
		t.Fatalf("%d claims in etcd, want %d (%v)", len(claims), 2*nodes, err)
	}
	for c, cl := range claims {
		if want := fmt.Sprintf("node-%d", owner[c]); cl.Node != want {
			t.Fatalf("claim of %s names %s, want %s", c, cl.Node, want)
		}
	}
}

func mustKeys(t testing.TB, cluster string) kvstore.Keys {
	k, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestRestartAndLimits: a restarted node gets its CIDRs back; it may claim
// more up to its limit; an exhausted pool is ErrPoolExhausted.
func TestRestartAndLimits(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	ctx := ctxT(t)
	c := srv.Client(t)
	pools, _ := NewPools(c, cluster)
	// 4 node CIDRs in all.
	if err := pools.Add(ctx, pool("tiny", "10.60.0.0/22", 24, "", 0)); err != nil {
		t.Fatal(err)
	}
	first, err := newClaimer(t, c, session(t, c), cluster, "n1").Ensure(ctx, ipam.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	// "Restart": a new session and claimer for the same node.
	again, err := newClaimer(t, c, session(t, c), cluster, "n1").Ensure(ctx, ipam.IPv4)
	if err != nil || len(again) != 1 || again[0] != first[0] {
		t.Fatalf("after restart: %v, %v; want %v", again, err, first)
	}
	n1 := newClaimer(t, c, session(t, c), cluster, "n1")
	if _, err := n1.ClaimMore(ctx, ipam.IPv4); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.ClaimMore(ctx, ipam.IPv4); !errors.Is(err, ErrLimit) {
		t.Fatalf("third CIDR with MaxPerFamily 2: %v", err)
	}
	if _, err := newClaimer(t, c, session(t, c), cluster, "n2").Ensure(ctx, ipam.IPv4); err != nil {
		t.Fatal(err)
	}
	if _, err := newClaimer(t, c, session(t, c), cluster, "n3").Ensure(ctx, ipam.IPv4); err != nil {
		t.Fatal(err)
	}
	_, err = newClaimer(t, c, session(t, c), cluster, "n4").Ensure(ctx, ipam.IPv4)
	if !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("fifth node CIDR of four: %v", err)
	}
	if _, err := newClaimer(t, c, session(t, c), cluster, "n5").Ensure(ctx, ipam.IPv6); !errors.Is(err, ErrNoPool) {
		t.Fatalf("IPv6 from a v4-only pool: %v", err)
	}
}

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }

// TestReclaim: CIDRs of a node whose lease is gone are reclaimed after the
// grace period, never those of a live node, and not those of a node that
// came back.
func TestReclaim(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	ctx := ctxT(t)
	c := srv.Client(t)
	pools, _ := NewPools(c, cluster)
	if err := pools.Add(ctx, pool("p", "10.70.0.0/16", 24, "", 0)); err != nil {
		t.Fatal(err)
	}
	liveS := session(t, c)
	if _, err := newClaimer(t, c, liveS, cluster, "live").Ensure(ctx, ipam.IPv4); err != nil {
		t.Fatal(err)
	}
	deadS, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dead, err := newClaimer(t, c, deadS, cluster, "dead").Ensure(ctx, ipam.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	backS, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	back, err := newClaimer(t, c, backS, cluster, "back").Ensure(ctx, ipam.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	_ = deadS.Close() // revokes the lease: the node record goes
	_ = backS.Close()

	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	g, err := NewGC(c, GCConfig{Cluster: cluster, GracePeriod: time.Minute, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	res, err := g.Pass(ctx)
	if err != nil || res.Nodes != 3 || res.Alive != 1 || res.Gone != 2 || res.Reclaimed != 0 {
		t.Fatalf("first pass: %+v, %v", res, err)
	}
	// "back" returns within the grace period and gets its CIDR back.
	returned, err := newClaimer(t, c, session(t, c), cluster, "back").Ensure(ctx, ipam.IPv4)
	if err != nil || returned[0] != back[0] {
		t.Fatalf("returning node got %v, %v; want %v", returned, err, back)
	}
	clock.now = clock.now.Add(2 * time.Minute)
	res, err = g.Pass(ctx)
	if err != nil || res.Reclaimed != 1 || res.Alive != 2 {
		t.Fatalf("second pass: %+v, %v", res, err)
	}
	claims, _, _ := readClaims(ctx, c, mustKeys(t, cluster))
	if _, ok := claims[dead[0]]; ok {
		t.Fatalf("dead node's %s still claimed", dead[0])
	}
	if len(claims) != 2 {
		t.Fatalf("claims after reclaim: %v", claims)
	}
	// The reclaimed CIDR can be claimed again by a new node.
	for {
		got, err := newClaimer(t, c, session(t, c), cluster, fmt.Sprintf("new-%d", len(claims))).Ensure(ctx, ipam.IPv4)
		if err != nil {
			t.Fatal(err)
		}
		claims[got[0]] = Claim{}
		if got[0] == dead[0] || len(claims) > 300 {
			break
		}
	}
}

// FuzzDecodeClaim: claim keys and values read back from etcd never crash
// the decoder.
func FuzzDecodeClaim(f *testing.F) {
	f.Add("10.0.0.0_24", []byte(`{"node":"n","pool":"p"}`))
	f.Add("fd00::_112", []byte(`{}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		p, c, err := DecodeClaim(key, value)
		if err == nil && (!p.IsValid() || c.Node == "") {
			t.Fatalf("accepted %q %q", key, value)
		}
	})
}

// TestReclaimByMembership: with the node membership written, a node
// without a record that is still a member keeps its CIDR however long,
// and one that is no member loses it in the second pass, without the
// grace period.
func TestReclaimByMembership(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Cluster(t)
	ctx := ctxT(t)
	c := srv.Client(t)
	keys := mustKeys(t, cluster)
	pools, _ := NewPools(c, cluster)
	if err := pools.Add(ctx, pool("p", "10.71.0.0/16", 24, "", 0)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"member", "deleted"} {
		s, err := kvstore.NewSession(ctx, c, kvstore.SessionConfig{TTL: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := newClaimer(t, c, s, cluster, name).Ensure(ctx, ipam.IPv4); err != nil {
			t.Fatal(err)
		}
		_ = s.Close() // the record goes with the lease
	}
	b, err := node.Member{Name: "member"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, keys.Member("member"), b); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	g, err := NewGC(c, GCConfig{Cluster: cluster, GracePeriod: time.Hour, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	res, err := g.Pass(ctx)
	if err != nil || res.Nodes != 2 || res.Members != 1 || res.Gone != 1 || res.Reclaimed != 0 {
		t.Fatalf("first pass: %+v, %v", res, err)
	}
	res, err = g.Pass(ctx) // no time passed: membership, not the grace period, decides
	if err != nil || res.Members != 1 || res.Reclaimed != 1 {
		t.Fatalf("second pass: %+v, %v", res, err)
	}
	claims, _, _ := readClaims(ctx, c, keys)
	if len(claims) != 1 {
		t.Fatalf("claims = %v; want the member's only", claims)
	}
	for _, cl := range claims {
		if cl.Node != "member" {
			t.Fatalf("claims = %v; want the member's only", claims)
		}
	}
}
