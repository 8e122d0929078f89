package nodeagent_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf/bpftest"
	"github.com/meshplane/meshplane/cluster"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/nodeagent"
)

// TestAgentCreatesClusterRecord: the first agent of a fresh cluster, with
// nothing else started, creates the cluster record from its config and
// runs; the next agent of the cluster compares and runs too.
func TestAgentCreatesClusterRecord(t *testing.T) {
	t.Parallel()
	cfg, client, keys := mapsOnly(t)
	cfg.ClusterID = 9
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, ok, err := kvstore.GetCluster(ctx, client, keys)
	if err != nil || !ok || rec.Name != keys.Cluster() || rec.ID != 9 {
		t.Fatalf("cluster record after the first agent: %+v, %v, %v; want %s with ID 9", rec, ok, err, keys.Cluster())
	}
	cfg2 := agentConfig(t, srv, keys.Cluster(), 2)
	cfg2.Datapath, cfg2.ClusterID = nodeagent.DatapathNone, 9
	startAgent(t, cfg2).waitOK(t)
}

// TestAgentRefusesOtherCluster: an agent whose cluster ID differs from the
// cluster record, or whose cluster's record is corrupt, does not start:
// Run returns an error that names the field and both values, and the agent
// writes nothing into etcd (no lease, node record or CIDR claim).
func TestAgentRefusesOtherCluster(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		record string // the stored value; "" means a valid record of ID 2
		check  func(t *testing.T, err error)
	}{
		{"other ID", "", func(t *testing.T, err error) {
			var m *cluster.MismatchError
			if !errors.As(err, &m) || m.Field != cluster.FieldID || m.Stored != "2" || m.Configured != "1" {
				t.Fatalf("Run() = %v; want an ID mismatch, 2 stored, 1 configured", err)
			}
			for _, s := range []string{"refusing to start", "cluster ID differs", "says 2", "configured with 1", "--cluster-id"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q does not say %q", err, s)
				}
			}
		}},
		{"corrupt record", `{"name":`, func(t *testing.T, err error) {
			if !errors.Is(err, cluster.ErrInvalid) || !strings.Contains(err.Error(), "refusing to start") {
				t.Fatalf("Run() = %v; want a refusal wrapping cluster.ErrInvalid", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bpftest.Require(t)
			cfg, client, keys := mapsOnly(t) // ClusterID 1
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if tt.record == "" {
				if _, _, err := kvstore.EnsureCluster(ctx, client, keys, 2); err != nil {
					t.Fatal(err)
				}
			} else if err := client.Put(ctx, keys.ClusterRecord(), []byte(tt.record)); err != nil {
				t.Fatal(err)
			}
			before, _, err := client.List(ctx, keys.Prefix())
			if err != nil {
				t.Fatal(err)
			}

			a, err := nodeagent.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = a.Run(ctx)
			if ctx.Err() != nil {
				t.Fatalf("the agent ran on (Run returned %v after the test's deadline); want a refusal at start", err)
			}
			tt.check(t, err)
			after, _, lerr := client.List(ctx, keys.Prefix())
			if lerr != nil || len(after) != len(before) || after[0].ModRevision != before[0].ModRevision {
				t.Errorf("etcd under %s after the refusal: %+v (%v); want only the record, unchanged", keys.Prefix(), after, lerr)
			}
		})
	}
}
