package nodeagent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/labels"
	"github.com/meshplane/meshplane/nodeagent"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/policy"
)

// putPod writes a pod's metadata as the control plane does.
func putPod(t *testing.T, c *kvstore.Client, keys kvstore.Keys, p pod.Pod) {
	t.Helper()
	b, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	putJSON(t, c, keys.Pod(p.Node, p.Namespace, p.Name), b)
}

// putNamespace writes a namespace's metadata as the control plane does.
func putNamespace(t *testing.T, c *kvstore.Client, keys kvstore.Keys, name string, l map[string]string) {
	t.Helper()
	b, err := pod.Namespace{Name: name, Labels: l}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	putJSON(t, c, keys.Namespace(name), b)
}

// identitySet is the identity label set of a pod with these labels.
func identitySet(t *testing.T, cluster, ns string, podLabels, nsLabels map[string]string) labels.Set {
	t.Helper()
	s, err := labels.NewSet(policy.PodLabels(cluster, ns, podLabels, nsLabels)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// identityLabels reads the label set of id from etcd.
func identityLabels(t *testing.T, c *kvstore.Client, keys kvstore.Keys, id identity.ID) (labels.Set, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, ok, err := c.Get(ctx, keys.IdentityID(id.String()))
	if err != nil || !ok {
		return labels.Set{}, fmt.Errorf("identity %d: found %v (%w)", id, ok, err)
	}
	return labels.ParseSet(string(kv.Value))
}

// hasRef reports whether node holds a reference on set in etcd.
func hasRef(t *testing.T, c *kvstore.Client, keys kvstore.Keys, set labels.Set, node string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, ok, err := c.Get(ctx, keys.IdentityRef(set.Hash(), node))
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// relabelled checks that the endpoint at ip has identity id everywhere:
// the endpoints map, the node's ipcache map and its etcd entry; and that
// id is set's identity.
func relabelled(t *testing.T, c *kvstore.Client, keys kvstore.Keys, node string, ip netip.Addr, set labels.Set) (identity.ID, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, ok, err := c.Get(ctx, keys.Endpoint(ipcache.KeyOf(ip)))
	if err != nil || !ok {
		return 0, fmt.Errorf("etcd entry of %s: found %v (%w)", ip, ok, err)
	}
	e, err := ipcache.Decode(ip.String(), kv.Value)
	if err != nil {
		return 0, err
	}
	got, err := identityLabels(t, c, keys, e.Identity)
	if err != nil {
		return 0, err
	}
	if !got.Equal(set) {
		return 0, fmt.Errorf("etcd entry of %s: identity %d has labels %s, want %s", ip, e.Identity, got, set)
	}
	v, ok, err := pinned[bpf.EndpointKey, bpf.EndpointValue](t, node, bpf.EndpointsMapName).Lookup(bpf.EndpointKeyFor(ip))
	if err != nil || !ok || v.Identity != uint32(e.Identity) {
		return 0, fmt.Errorf("endpoints map: %s = identity %d (found %v, %w), want %d", ip, v.Identity, ok, err, e.Identity)
	}
	iv, ok, err := exact(ipcacheOf(t, node), host(ip))
	if err != nil || !ok || iv.Identity != uint32(e.Identity) {
		return 0, fmt.Errorf("ipcache map: %s = identity %d (found %v, %w), want %d", ip, iv.Identity, ok, err, e.Identity)
	}
	return e.Identity, nil
}

// TestAddEndpointByNameWaitsForMetadata: an AddEndpoint with only the
// pod's namespace and name (what a CNI plugin knows) waits for the pod's
// and its namespace's metadata in etcd and takes labels, namespace labels
// and ports from there; without metadata it gives up after
// PodMetadataWait with ErrNoMetadata, leaving nothing behind; a request
// with labels is refused nothing and has its labels replaced by etcd's.
func TestAddEndpointByNameWaitsForMetadata(t *testing.T) {
	t.Parallel()
	cfg, client, keys := mapsOnly(t)
	cfg.PodMetadataWait = time.Second
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	_, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "shop", Pod: "nobody", IfIndex: 1})
	if !errors.Is(err, nodeagent.ErrNoMetadata) {
		t.Fatalf("AddEndpoint without metadata = %v, want ErrNoMetadata", err)
	}
	nothingWritten(t, ta, keys)

	// The request waits (its own deadline, a minute, bounds it) while the
	// metadata is written: pod first, then its namespace.
	ta.stop()
	cfg.PodMetadataWait = time.Minute
	ta = startAgent(t, cfg)
	ta.waitOK(t)
	type result struct {
		ep  nodeagent.Endpoint
		err error
	}
	done := make(chan result, 1)
	go func() {
		ep, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "shop", Pod: "web-1", IfIndex: 1})
		done <- result{ep, err}
	}()
	ports := []pod.Port{{Name: "http", Port: 8080, Protocol: pod.ProtoTCP}}
	putPod(t, client, keys, pod.Pod{Namespace: "shop", Name: "web-1", Node: cfg.Node, Labels: map[string]string{"app": "web"}, Ports: ports})
	putNamespace(t, client, keys, "shop", map[string]string{"team": "a"})
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := identitySet(t, cfg.Cluster, "shop", map[string]string{"app": "web"}, map[string]string{"team": "a"})
	if got, err := identityLabels(t, client, keys, r.ep.Identity); err != nil || !got.Equal(want) {
		t.Fatalf("identity %d has labels %s (%v), want %s", r.ep.Identity, got, err, want)
	}
	if !r.ep.PodMetadata || !r.ep.NamespaceMetadata || len(r.ep.Ports) != 1 || r.ep.Ports[0] != ports[0] {
		t.Fatalf("endpoint = %+v, want its labels and ports from etcd", r.ep)
	}
	eventually(t, 10*time.Second, "the named port in etcd", func() error {
		_, err := relabelled(t, client, keys, cfg.Node, r.ep.IPs[0], want)
		return err
	})
	// A repeat by name is the same endpoint.
	again, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "shop", Pod: "web-1", IfIndex: 1})
	if err != nil || again.Identity != r.ep.Identity || again.IPs[0] != r.ep.IPs[0] {
		t.Fatalf("repeat = %+v, %v; want %+v", again, err, r.ep)
	}

	// A request with labels does not wait: they are the initial label set
	// (if the watch has not brought the pod's metadata yet), and etcd's
	// win as soon as it has. A repeat with other labels is then not
	// refused (they are not used).
	putPod(t, client, keys, pod.Pod{Namespace: "shop", Name: "db-1", Node: cfg.Node, Labels: map[string]string{"app": "db"}})
	db, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "shop", Pod: "db-1", IfIndex: 1, Labels: map[string]string{"app": "wrong"}})
	if err != nil {
		t.Fatal(err)
	}
	wantDB := identitySet(t, cfg.Cluster, "shop", map[string]string{"app": "db"}, map[string]string{"team": "a"})
	var dbID identity.ID
	eventually(t, 10*time.Second, "db-1 with etcd's labels", func() error {
		dbID, err = relabelled(t, client, keys, cfg.Node, db.IPs[0], wantDB)
		return err
	})
	if again, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "shop", Pod: "db-1", IfIndex: 1, Labels: map[string]string{"app": "other"}}); err != nil || again.Identity != dbID {
		t.Fatalf("repeat with other labels = %+v, %v; want the endpoint as it is (identity %d)", again, err, dbID)
	}
	// Another interface is still refused.
	if _, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "shop", Pod: "db-1", IfIndex: 2}); !errors.Is(err, nodeagent.ErrEndpointExists) {
		t.Fatalf("repeat with another interface = %v, want ErrEndpointExists", err)
	}
}

// TestRelabelPod: a live endpoint whose pod's labels change in etcd gets
// the identity of its new label set in the endpoints map, the node's
// ipcache and its etcd entry; the old identity's reference is released;
// a policy that allows the new labels lets it in. Labels changed while
// the agent is down are taken when it starts again.
func TestRelabelPod(t *testing.T) {
	t.Parallel()
	cfg, client, keys := mapsOnly(t)
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nsLabels := map[string]string{"env": "prod"}
	putNamespace(t, client, keys, "prod", nsLabels)
	putPod(t, client, keys, pod.Pod{Namespace: "prod", Name: "web-1", Node: cfg.Node, Labels: map[string]string{"app": "web"}})
	putPod(t, client, keys, pod.Pod{Namespace: "prod", Name: "client-1", Node: cfg.Node, Labels: map[string]string{"app": "other"}})
	web, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "prod", Pod: "web-1", IfIndex: 42})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: "prod", Pod: "client-1", IfIndex: 43})
	if err != nil {
		t.Fatal(err)
	}
	ip := cl.IPs[0]
	oldSet := identitySet(t, cfg.Cluster, "prod", map[string]string{"app": "other"}, nsLabels)
	eventually(t, 10*time.Second, "client-1 installed", func() error {
		_, err := relabelled(t, client, keys, cfg.Node, ip, oldSet)
		return err
	})
	putPolicy(t, client, keys, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
`)
	allowed := func(id identity.ID) bool {
		k, err := bpf.PolicyKeyFor(web.ID, bpf.Ingress, uint32(id), bpf.ProtoAny, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		v, ok := policyEntries(t, cfg.Node, web.ID)[k]
		return ok && v.Verdict == bpf.Allow
	}
	eventually(t, 10*time.Second, "web enforces ingress", func() error {
		if f, err := endpointFlags(t, cfg.Node, web.IPs[0]); err != nil || f != bpf.EndpointPolicyIngress {
			return fmt.Errorf("flags %v (%w)", f, err)
		}
		return nil
	})
	if allowed(cl.Identity) {
		t.Fatalf("identity %d (app=other) is allowed into web", cl.Identity)
	}

	putPod(t, client, keys, pod.Pod{Namespace: "prod", Name: "client-1", Node: cfg.Node, Labels: map[string]string{"app": "client"}})
	newSet := identitySet(t, cfg.Cluster, "prod", map[string]string{"app": "client"}, nsLabels)
	var newID identity.ID
	eventually(t, 10*time.Second, "client-1 relabelled", func() error {
		id, err := relabelled(t, client, keys, cfg.Node, ip, newSet)
		if err != nil {
			return err
		}
		if hasRef(t, client, keys, oldSet, cfg.Node) {
			return fmt.Errorf("the old identity %s is still referenced", oldSet)
		}
		if !hasRef(t, client, keys, newSet, cfg.Node) {
			return errors.New("no reference on the new identity")
		}
		if !allowed(id) {
			return fmt.Errorf("identity %d (app=client) not allowed into web", id)
		}
		newID = id
		return nil
	})
	if newID == cl.Identity {
		t.Fatalf("relabelled endpoint kept identity %d", newID)
	}
	if ep := stateFile(t, cfg, "prod", "client-1"); ep.Identity != newID || ep.ID != cl.ID || ep.Labels["app"] != "client" || len(ep.Superseded) != 1 {
		t.Fatalf("state file = %+v, want identity %d, endpoint ID %d, app=client and the old label set superseded", ep, newID, cl.ID)
	}

	// Relabelled while the agent is down: the restarted agent restores
	// the endpoint with the identity it had, then relabels it.
	ta.stop()
	putPod(t, client, keys, pod.Pod{Namespace: "prod", Name: "client-1", Node: cfg.Node, Labels: map[string]string{"app": "client", "v": "2"}})
	ta = startAgent(t, cfg)
	ta.waitOK(t)
	v2 := identitySet(t, cfg.Cluster, "prod", map[string]string{"app": "client", "v": "2"}, nsLabels)
	eventually(t, 10*time.Second, "client-1 relabelled after the restart", func() error {
		id, err := relabelled(t, client, keys, cfg.Node, ip, v2)
		if err != nil {
			return err
		}
		if hasRef(t, client, keys, newSet, cfg.Node) || hasRef(t, client, keys, oldSet, cfg.Node) {
			return errors.New("an earlier identity is still referenced")
		}
		if !allowed(id) {
			return fmt.Errorf("identity %d not allowed into web", id)
		}
		return nil
	})
	// The restore cleared what it released; the relabel added one.
	if ep := stateFile(t, cfg, "prod", "client-1"); len(ep.Superseded) != 1 || ep.Superseded[0] != newSet.String() {
		t.Fatalf("state file superseded = %q, want [%s]", ep.Superseded, newSet)
	}

	// Back to a label set no rule allows: the policy follows.
	putPod(t, client, keys, pod.Pod{Namespace: "prod", Name: "client-1", Node: cfg.Node, Labels: map[string]string{"app": "other"}})
	eventually(t, 10*time.Second, "client-1 back to app=other", func() error {
		id, err := relabelled(t, client, keys, cfg.Node, ip, oldSet)
		if err != nil {
			return err
		}
		if allowed(id) {
			return fmt.Errorf("identity %d (app=other) still allowed", id)
		}
		if hasRef(t, client, keys, v2, cfg.Node) {
			return errors.New("v2 still referenced")
		}
		return nil
	})
}

// stateFile reads an endpoint's state file.
func stateFile(t *testing.T, cfg nodeagent.Config, ns, name string) nodeagent.Endpoint {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cfg.StateDir, "endpoints", ns+"_"+name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var ep nodeagent.Endpoint
	if err := json.Unmarshal(b, &ep); err != nil {
		t.Fatal(err)
	}
	return ep
}

// TestRelabelNamespace: a change of a namespace's labels relabels every
// endpoint of that namespace on the node, and no other; two pods with the
// same labels share the new identity, and the old one is released once
// neither holds it.
func TestRelabelNamespace(t *testing.T) {
	t.Parallel()
	cfg, client, keys := mapsOnly(t)
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	putNamespace(t, client, keys, "team", map[string]string{"tier": "a"})
	putNamespace(t, client, keys, "other", map[string]string{"tier": "a"})
	l := map[string]string{"app": "web"}
	ips := make(map[string]netip.Addr)
	for _, p := range []struct{ ns, name string }{{"team", "web-1"}, {"team", "web-2"}, {"other", "web-1"}} {
		putPod(t, client, keys, pod.Pod{Namespace: p.ns, Name: p.name, Node: cfg.Node, Labels: l})
		ep, err := ta.a.AddEndpoint(ctx, nodeagent.EndpointSpec{Namespace: p.ns, Pod: p.name, IfIndex: 1})
		if err != nil {
			t.Fatal(err)
		}
		ips[p.ns+"/"+p.name] = ep.IPs[0]
	}
	oldTeam := identitySet(t, cfg.Cluster, "team", l, map[string]string{"tier": "a"})
	other := identitySet(t, cfg.Cluster, "other", l, map[string]string{"tier": "a"})
	var otherID identity.ID
	eventually(t, 10*time.Second, "other/web-1 installed", func() error {
		var err error
		otherID, err = relabelled(t, client, keys, cfg.Node, ips["other/web-1"], other)
		return err
	})

	putNamespace(t, client, keys, "team", map[string]string{"tier": "b"})
	newTeam := identitySet(t, cfg.Cluster, "team", l, map[string]string{"tier": "b"})
	eventually(t, 10*time.Second, "namespace team relabelled", func() error {
		id1, err := relabelled(t, client, keys, cfg.Node, ips["team/web-1"], newTeam)
		if err != nil {
			return err
		}
		id2, err := relabelled(t, client, keys, cfg.Node, ips["team/web-2"], newTeam)
		if err != nil {
			return err
		}
		if id1 != id2 {
			return fmt.Errorf("same labels, identities %d and %d", id1, id2)
		}
		if hasRef(t, client, keys, oldTeam, cfg.Node) {
			return errors.New("the old identity is still referenced")
		}
		return nil
	})
	if id, err := relabelled(t, client, keys, cfg.Node, ips["other/web-1"], other); err != nil || id != otherID {
		t.Fatalf("other/web-1: identity %d (%v), want %d unchanged", id, err, otherID)
	}
}
