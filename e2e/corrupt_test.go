package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/lab"
)

// putRaw writes value under key in the lab cluster's etcd, as a script or
// a buggy tool would.
func putRaw(t *testing.T, l *lab.Lab, cluster string, key func(kvstore.Keys) string, value []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := kvstore.New(ctx, kvstore.Config{Endpoints: l.EtcdEndpoints(cluster)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	if value == nil {
		err = client.Delete(ctx, key(keys))
	} else {
		err = client.Put(ctx, key(keys), value)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// corruptPolicyCases runs on the policy matrix's lab: a policy overwritten
// with a value that is not a policy keeps being enforced on real packets
// (the fault was that its denies became allows), and a corrupt value on a
// new policy key denies its namespace until the key is deleted.
func corruptPolicyCases(t *testing.T, l *lab.Lab) {
	const (
		client = "prod/client" // n1
		web1   = "prod/web-1"  // n1
		web2   = "prod/web-2"  // n2
		db     = "prod/db"     // n2
		tool   = "dev/tool"    // n2
	)
	denied := "policy denied"
	enforced := []probe{
		{from: client, to: web1, port: 80, allowed: true},
		{from: client, to: web2, port: 80, allowed: true},
		{from: db, to: web1, port: 80, reason: denied},
		{from: tool, to: web2, port: 80, reason: denied},
		{from: client, to: db, port: 5432, allowed: true},
	}
	applyPolicies(t, l, "c1", webFromClient)
	expect(t, l, enforced)

	t.Run("corrupt value over a policy keeps it enforced", func(t *testing.T) {
		putRaw(t, l, "c1", func(k kvstore.Keys) string { return k.Policy("prod", "web") }, []byte(`{"kind":"NetworkPolicy","spec":5}`))
		// A policy written after the corrupt value: once packets obey it,
		// every agent has handled the corrupt value too (the watch is
		// ordered).
		putRaw(t, l, "c1", func(k kvstore.Keys) string { return k.Policy("dev", "sentinel") }, []byte(
			`{"kind":"NetworkPolicy","namespace":"dev","name":"sentinel","spec":{"podSelector":{},"policyTypes":["Ingress"]}}`))
		expect(t, l, []probe{{from: db, to: tool, port: 8080, reason: denied}})
		expect(t, l, enforced)
		putRaw(t, l, "c1", func(k kvstore.Keys) string { return k.Policy("dev", "sentinel") }, nil)
	})
	t.Run("corrupt value on a new key isolates its namespace", func(t *testing.T) {
		putRaw(t, l, "c1", func(k kvstore.Keys) string { return k.Policy("prod", "broken") }, []byte("garbage"))
		expect(t, l, []probe{
			{from: client, to: db, port: 5432, reason: denied},
			{from: client, to: web2, port: 80, reason: denied},
			{from: tool, to: db, port: 5432, reason: denied},
			{from: db, to: tool, port: 8080, reason: denied}, // egress of a prod pod
		})
		putRaw(t, l, "c1", func(k kvstore.Keys) string { return k.Policy("prod", "broken") }, nil)
		expect(t, l, enforced)
	})
}
