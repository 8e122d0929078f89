package controlplane

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/pod"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestEndpointGC: an endpoint whose node has no record and whose pod the
// source no longer has is deleted after the grace period; one whose node
// is alive, or whose pod still exists on its node, is kept.
func TestEndpointGC(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	put := func(key string, v []byte) {
		t.Helper()
		if err := h.client.Put(ctx, key, v); err != nil {
			t.Fatal(err)
		}
	}
	ep := func(ip, node, pod string) {
		e := ipcache.Entry{IP: netip.MustParseAddr(ip), Identity: identity.ID(1000), Node: node, Namespace: "prod", Pod: pod}
		put(h.keys.Endpoint(ip), e.Encode())
	}
	put(h.keys.Node("alive"), []byte(`{"name":"alive"}`))
	ep("10.0.0.1", "alive", "a")   // node alive: kept
	ep("10.0.0.2", "gone", "b")    // node gone, pod gone: collected
	ep("10.0.0.3", "gone", "kept") // node gone, pod still there: kept
	pods := newFakeSource().pods
	pods.set("prod/kept", pod.Pod{Namespace: "prod", Name: "kept", Node: "gone"}, nil)

	clock := &fakeClock{t: time.Unix(1000, 0)}
	g := newEndpointGC(h.client, h.keys, time.Minute, clock, pods)
	for range 2 { // marks, then still within the grace period
		if n, err := g.pass(ctx); err != nil || n != 0 {
			t.Fatalf("pass = %d, %v; want nothing deleted yet", n, err)
		}
	}
	clock.advance(2 * time.Minute)
	if n, err := g.pass(ctx); err != nil || n != 1 {
		t.Fatalf("pass after the grace period = %d, %v; want 1 deleted", n, err)
	}
	got := h.revs(h.keys.EndpointsPrefix())
	if _, ok := got["10.0.0.2"]; ok || len(got) != 2 {
		t.Errorf("endpoints left: %v, want 10.0.0.1 and 10.0.0.3", got)
	}
}
