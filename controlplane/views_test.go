package controlplane

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/meshplane/meshplane/labels"
	"github.com/meshplane/meshplane/node"
)

// viewSource is a fake Source that is a ViewWriter: it records the views.
type viewSource struct {
	*fakeSource
	mu    sync.Mutex // mu guards last, calls
	last  Views
	calls int
}

func (s *viewSource) WriteViews(_ context.Context, v Views) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last, s.calls = v, s.calls+1
	return nil
}

func (s *viewSource) snapshot() (Views, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.calls
}

// TestViews: the leader publishes the identities (with the nodes that
// reference them) and the node records in etcd, follows their changes,
// and stops when its term ends.
func TestViews(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	src := &viewSource{fakeSource: newFakeSource()}
	cp, stop := h.startCP(src, nil)
	set, err := labels.ParseSet("k8s:app=web")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range []struct{ k, v string }{
		{h.keys.IdentityID("66100"), set.String()},
		{h.keys.IdentityRef(set.Hash(), "node-b"), ""},
		{h.keys.IdentityRef(set.Hash(), "node-a"), ""},
		{h.keys.Node("node-a"), string(node.Record{Name: "node-a", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}}.Encode())},
	} {
		if err := h.client.Put(ctx, kv.k, []byte(kv.v)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "views", func() string {
		v, _ := src.snapshot()
		if len(v.Identities) != 1 || v.Identities[0].ID != 66100 || fmt.Sprint(v.Identities[0].Nodes) != "[node-a node-b]" ||
			len(v.Nodes) != 1 || v.Nodes[0].Name != "node-a" {
			return fmt.Sprintf("views = %+v", v)
		}
		return ""
	})
	if err := h.client.Delete(ctx, h.keys.Node("node-a")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node gone from the views", func() string {
		if v, _ := src.snapshot(); len(v.Nodes) != 0 {
			return fmt.Sprintf("nodes = %+v", v.Nodes)
		}
		return ""
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	_, calls := src.snapshot()
	if err := h.client.Delete(ctx, h.keys.IdentityID("66100")); err != nil {
		t.Fatal(err)
	}
	if cp.leading.Load() {
		t.Fatal("still leading after Run returned")
	}
	// Run has returned: every goroutine of the term is gone, so no call
	// can come after the snapshot.
	if _, after := src.snapshot(); after != calls {
		t.Fatalf("WriteViews called %d times after the term ended", after-calls)
	}
}
