package controlplane

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/cluster"
	"github.com/meshplane/meshplane/kvstore"
)

// TestClusterRecordCreated: a control plane on a fresh cluster creates
// the cluster record from its config, then runs.
func TestClusterRecordCreated(t *testing.T) {
	h := newHarness(t)
	src := newFakeSource()
	p := testPod(1, "node-1", map[string]string{"app": "web"})
	src.pods.set(p.Owner(), p, nil)
	h.start(src, func(c *Config) { c.ClusterID = 12 })
	h.holds(h.keys.PodsPrefix(), wantPods(t, src.pods))
	rec, ok, err := kvstore.GetCluster(context.Background(), h.client, h.keys)
	if err != nil || !ok || rec.Name != h.cluster || rec.ID != 12 {
		t.Fatalf("cluster record: %+v, %v, %v; want %s with ID 12", rec, ok, err, h.cluster)
	}
}

// TestClusterRecordRefused: Run and SyncOnce refuse a cluster whose record
// says another ID, or does not decode: the error names the field and both
// values, and nothing is written (no leader key, no pod).
func TestClusterRecordRefused(t *testing.T) {
	tests := []struct {
		name   string
		record string // the stored value; "" means a valid record of ID 5
		check  func(t *testing.T, err error)
	}{
		{"other ID", "", func(t *testing.T, err error) {
			var m *cluster.MismatchError
			if !errors.As(err, &m) || m.Field != cluster.FieldID || m.Stored != "5" || m.Configured != "1" {
				t.Fatalf("err = %v; want an ID mismatch, 5 stored, 1 configured", err)
			}
			for _, s := range []string{"refusing to start", "cluster ID differs", "says 5", "configured with 1", "--cluster-id"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q does not say %q", err, s)
				}
			}
		}},
		{"corrupt record", `{"name":"x","id":1}`, func(t *testing.T, err error) {
			if !errors.Is(err, cluster.ErrInvalid) || !strings.Contains(err.Error(), "refusing to start") {
				t.Fatalf("err = %v; want a refusal wrapping cluster.ErrInvalid", err)
			}
		}},
	}
	for _, tt := range tests {
		for _, how := range []string{"Run", "SyncOnce"} {
			t.Run(tt.name+"/"+how, func(t *testing.T) {
				h := newHarness(t)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				if tt.record == "" {
					if _, _, err := kvstore.EnsureCluster(ctx, h.client, h.keys, 5); err != nil {
						t.Fatal(err)
					}
				} else if err := h.client.Put(ctx, h.keys.ClusterRecord(), []byte(tt.record)); err != nil {
					t.Fatal(err)
				}
				before := h.revs(h.keys.Prefix())
				src := newFakeSource()
				p := testPod(1, "node-1", nil)
				src.pods.set(p.Owner(), p, nil)
				cp, err := New(Config{Client: h.client, Cluster: h.cluster, ClusterID: 1, Source: src, GCInterval: -1})
				if err != nil {
					t.Fatal(err)
				}
				if how == "Run" {
					err = cp.Run(ctx)
				} else {
					err = cp.SyncOnce(ctx)
				}
				if ctx.Err() != nil {
					t.Fatalf("%s returned %v only at the test's deadline; want a refusal at start", how, err)
				}
				tt.check(t, err)
				if after := h.revs(h.keys.Prefix()); len(after) != 1 || after["cluster"] != before["cluster"] {
					t.Errorf("etcd after the refusal: %v; want the record alone, unchanged (%v)", after, before)
				}
			})
		}
	}
}
