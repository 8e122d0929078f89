package controlplane

import (
	"context"
	"fmt"
	"testing"
)

// TestFailover: two control planes against one etcd; the leader dies
// during a burst of pod creations: its etcd client closes, so it can write
// nothing more and its lease expires after the TTL, without a resignation,
// as when its process is killed. The other takes over, every pod
// reaches etcd, and each pod key is written exactly once (version 1):
// the new leader's first writes are only the difference, and nothing the
// old leader had in flight was written twice.
func TestFailover(t *testing.T) {
	h := newHarness(t)
	src := newFakeSource()
	clientA := srv.Client(t)
	a, stopA := h.startCP(src, func(c *Config) {
		c.Name, c.Client = "a", clientA
	})
	eventually(t, "a leads", func() string {
		if !a.leading.Load() {
			return "not yet"
		}
		return ""
	})
	b, _ := h.startCP(src, func(c *Config) { c.Name = "b" })

	const n, killAt = 600, 200
	for i := range n {
		if i == killAt {
			// Let a write some of the first pods, then cut it off.
			eventually(t, "a writes", func() string {
				if len(h.revs(h.keys.PodsPrefix())) == 0 {
					return "no pod yet"
				}
				return ""
			})
			if err := clientA.Close(); err != nil {
				t.Fatal(err)
			}
		}
		p := testPod(i, fmt.Sprintf("node-%d", i%5), map[string]string{"app": "web", "i": fmt.Sprint(i)})
		src.pods.set(p.Owner(), p, nil)
	}
	h.holds(h.keys.PodsPrefix(), wantPods(t, src.pods))
	if !b.leading.Load() {
		t.Errorf("b does not lead after a died")
	}
	// a learns at once that its client is gone: it stops leading rather
	// than believe in an office it can no longer keep.
	eventually(t, "a steps down", func() string {
		if a.leading.Load() {
			return "a still believes it leads"
		}
		return ""
	})
	for k := range h.revs(h.keys.PodsPrefix()) {
		if v := h.version(h.keys.PodsPrefix() + k); v != 1 {
			t.Errorf("pods/%s has version %d, want 1: written more than once", k, v)
		}
	}
	_ = stopA()
}

// TestLeadershipLost: a leader whose leader key disappears stops, campaigns
// again and, leading again, resyncs: it writes nothing that did not
// change, and goes on writing changes.
func TestLeadershipLost(t *testing.T) {
	h := newHarness(t)
	src := newFakeSource()
	for i := range 20 {
		p := testPod(i, "node-0", nil)
		src.pods.set(p.Owner(), p, nil)
	}
	cp, _ := h.startCP(src, nil)
	h.holds(h.keys.PodsPrefix(), wantPods(t, src.pods))
	for k := range h.revs(h.keys.Leader(ElectionName) + "/") {
		if err := h.client.Delete(context.Background(), h.keys.Leader(ElectionName)+"/"+k); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a second term", func() string {
		if cp.terms.Load() < 2 || !cp.leading.Load() {
			return fmt.Sprintf("%d terms, leading %v", cp.terms.Load(), cp.leading.Load())
		}
		return ""
	})
	p := testPod(0, "node-0", map[string]string{"app": "new"})
	src.pods.set(p.Owner(), p, nil)
	h.holds(h.keys.PodsPrefix(), wantPods(t, src.pods))
	for k := range h.revs(h.keys.PodsPrefix()) {
		want := int64(1)
		if k == p.Key() {
			want = 2
		}
		if v := h.version(h.keys.PodsPrefix() + k); v != want {
			t.Errorf("pods/%s has version %d, want %d", k, v, want)
		}
	}
}
