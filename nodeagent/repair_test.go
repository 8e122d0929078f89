package nodeagent_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/nodeagent"
)

// TestAgentRepairsOwnKeys changes an agent's own keys behind its back:
// garbage over its node record, a delete of one of its endpoints, and a
// put of the same endpoint value without the lease. The agent writes each
// back on its lease within seconds, logs a warning and counts it; an
// endpoint it deletes itself stays deleted.
func TestAgentRepairsOwnKeys(t *testing.T) {
	t.Parallel()
	cfg, client, keys := mapsOnly(t)
	cfg.MetricsAddr = freeAddr(t)
	logs := newLogRecorder()
	cfg.Logger = slog.New(logs)
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ep, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "prod", Pod: "web-1", IfIndex: 42, Labels: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "prod", Pod: "web-2", IfIndex: 43, Labels: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	lease := ta.a.Status().Etcd.Lease
	nodeKey := keys.Node(cfg.Node)
	epKey := keys.Endpoint(ipcache.KeyOf(ep.IPs[0]))
	nodeOK := func() error {
		kv, ok, err := client.Get(ctx, nodeKey)
		if err != nil || !ok {
			return fmt.Errorf("%s: found %v (%w)", nodeKey, ok, err)
		}
		if _, err := node.Decode(cfg.Node, kv.Value); err != nil {
			return err
		}
		if kv.Lease != lease {
			return fmt.Errorf("%s on lease %x, want %x", nodeKey, kv.Lease, lease)
		}
		return nil
	}
	epValue := func() ([]byte, error) {
		kv, ok, err := client.Get(ctx, epKey)
		if err != nil || !ok {
			return nil, fmt.Errorf("%s: found %v (%w)", epKey, ok, err)
		}
		if kv.Lease != lease {
			return nil, fmt.Errorf("%s on lease %x, want %x", epKey, kv.Lease, lease)
		}
		if e, err := ipcache.Decode(ipcache.KeyOf(ep.IPs[0]), kv.Value); err != nil || e.Identity != ep.Identity || e.Node != cfg.Node {
			return nil, fmt.Errorf("%s = %s (%w)", epKey, kv.Value, err)
		}
		return kv.Value, nil
	}
	if err := nodeOK(); err != nil {
		t.Fatal(err)
	}
	value, err := epValue()
	if err != nil {
		t.Fatal(err)
	}

	// The agent deletes one of its endpoints itself: it must stay gone.
	if err := ta.a.DeleteEndpoint(ctx, gone.Namespace, gone.Pod); err != nil {
		t.Fatal(err)
	}

	putJSON(t, client, nodeKey, []byte(corruptPolicy))
	eventually(t, 10*time.Second, "node record repaired", nodeOK)
	if err := client.Delete(ctx, epKey); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "deleted endpoint repaired", func() error { _, err := epValue(); return err })
	putJSON(t, client, epKey, value) // same value, no lease
	eventually(t, 10*time.Second, "lease-less endpoint repaired", func() error { _, err := epValue(); return err })

	if _, ok, err := client.Get(ctx, keys.Endpoint(ipcache.KeyOf(gone.IPs[0]))); err != nil || ok {
		t.Errorf("the endpoint the agent deleted: found %v (%v), want it to stay deleted", ok, err)
	}
	logs.waitFor(t, slog.LevelWarn, nodeKey, "changed")
	logs.waitFor(t, slog.LevelWarn, epKey, "deleted")
	logs.waitFor(t, slog.LevelWarn, epKey, "lease")
	if n := ta.a.Status().Etcd.Repairs; n != 3 {
		t.Errorf("status counts %d repairs, want 3", n)
	}
	if err := hasMetric(t, cfg.MetricsAddr, `meshplane_kvstore_session_repairs_total 3`); err != nil {
		t.Error(err)
	}
	ta.waitOK(t)
}
