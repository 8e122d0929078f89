package cli

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/meshplane/meshplane/cluster"
	"github.com/meshplane/meshplane/kvstore"
)

// TestClusterInitShow: init creates the record from the global flags,
// again succeeds without writing, and show prints it; another ID is
// refused by init and by ipam pool add, naming the field, and nothing is
// written.
func TestClusterInitShow(t *testing.T) {
	t.Parallel()
	g := inCluster(t) // --cluster-id 7
	name := g[3]
	if _, _, err := meshctl(t, append(g, "cluster", "show")...); err == nil || !strings.Contains(err.Error(), "no cluster record") {
		t.Fatalf("show before init: %v, want a message that there is no record", err)
	}
	if out := mustRun(t, append(g, "cluster", "init")...); !strings.Contains(out, "cluster "+name+" (ID 7) created") {
		t.Errorf("init: %q", out)
	}
	if out := mustRun(t, append(g, "cluster", "init")...); !strings.Contains(out, "exists as given") {
		t.Errorf("init again: %q", out)
	}
	var rec cluster.Record
	if err := json.Unmarshal([]byte(mustRun(t, append(g, "cluster", "show", "-o", "json")...)), &rec); err != nil ||
		rec.Name != name || rec.ID != 7 || rec.Format != cluster.Format || rec.Created.IsZero() {
		t.Fatalf("show -o json: %+v, %v", rec, err)
	}
	if out := mustRun(t, append(g, "cluster", "show")...); !strings.Contains(out, name) || !strings.Contains(out, " 7 ") {
		t.Errorf("show: %q", out)
	}

	other := slices.Clone(g)
	other[5] = "8" // --cluster-id
	k, _ := kvstore.NewKeys(name)
	c := srv.Client(t)
	before, _, err := c.List(context.Background(), k.Prefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"cluster", "init"}, {"ipam", "pool", "add", "default", "--default"}} {
		_, _, err := meshctl(t, append(other, args...)...)
		var m *cluster.MismatchError
		if !errors.As(err, &m) || m.Field != cluster.FieldID || !strings.Contains(err.Error(), "says 7") || !strings.Contains(err.Error(), "configured with 8") {
			t.Errorf("%v with --cluster-id 8: %v, want an ID mismatch naming 7 and 8", args, err)
		}
	}
	after, _, err := c.List(context.Background(), k.Prefix())
	if err != nil || len(after) != len(before) || after[0].ModRevision != before[0].ModRevision {
		t.Errorf("after the refusals: %+v (%v); want only the record, unchanged", after, err)
	}
}

// TestPoolAddCreatesClusterRecord: the first pool of a cluster brings its
// cluster record.
func TestPoolAddCreatesClusterRecord(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	_, errOut, err := meshctl(t, append(g, "ipam", "pool", "add", "default", "--default")...)
	if err != nil || !strings.Contains(errOut, "cluster record created") {
		t.Fatalf("pool add: %v (stderr %q)", err, errOut)
	}
	var rec cluster.Record
	if err := json.Unmarshal([]byte(mustRun(t, append(g, "cluster", "show", "-o", "json")...)), &rec); err != nil || rec.Name != g[3] || rec.ID != 7 {
		t.Fatalf("show after pool add: %+v, %v", rec, err)
	}
}
