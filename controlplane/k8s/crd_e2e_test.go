package k8s_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/controlplane/k8s/apis/v1alpha1"
	"github.com/meshplane/meshplane/controlplane/k8s/crd"
	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/kvstore/nodecidr"
	"github.com/meshplane/meshplane/labels"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/policy"
)

// startControlPlane runs a control plane on a new Source against the
// test's apiserver, writing cluster's keys, until the test ends.
func startControlPlane(t *testing.T, cfg controlplane.Config) (*kvstore.Client, kvstore.Keys) {
	t.Helper()
	installCRDs(t) // Run installs them too, but the test creates objects at once
	client := kube.Etcd.Client(t)
	cluster := etcdtest.Cluster(t)
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Client, cfg.Cluster, cfg.ClusterID, cfg.Source = client, cluster, 1, newSource(t)
	if cfg.GCInterval == 0 {
		cfg.GCInterval = -1
	}
	cp, err := controlplane.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("control plane Run = %v", err)
		}
	})
	return client, keys
}

func meshClient(t *testing.T) *crd.Client {
	t.Helper()
	c, err := crd.NewClient(restConfig(t, kube.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestMeshNetworkPolicies: a MeshNetworkPolicy created in the apiserver
// goes through policy.Parse into policies/ and is Accepted; an invalid one
// gets Accepted=False and a Warning Event, and nothing in etcd.
func TestMeshNetworkPolicies(t *testing.T) {
	kube.Require(t)
	ctx := context.Background()
	client, keys := startControlPlane(t, controlplane.Config{})
	mc := meshClient(t)
	ns := kube.Namespace(t)
	mnp := func(name string, ingress []any) map[string]any {
		return map[string]any{
			"apiVersion": "meshplane.io/v1alpha1", "kind": "MeshNetworkPolicy",
			"metadata": map[string]any{"name": name, "namespace": ns},
			"spec": map[string]any{
				"podSelector": map[string]any{"matchLabels": map[string]string{"app": "web"}},
				"ingress":     ingress,
			},
		}
	}
	path := "/apis/meshplane.io/v1alpha1/namespaces/" + ns + "/meshnetworkpolicies"
	if err := kube.Create(ctx, path, mnp("allow-client", []any{map[string]any{
		"from": []any{map[string]any{"podSelector": map[string]any{"matchLabels": map[string]string{"app": "client"}}}},
	}})); err != nil {
		t.Fatal(err)
	}
	if err := kube.Create(ctx, path, mnp("bad-except", []any{map[string]any{
		"from": []any{map[string]any{"ipBlock": map[string]any{"cidr": "192.168.0.0/16", "except": []string{"10.0.0.0/8"}}}},
	}})); err != nil {
		t.Fatal(err)
	}
	store := kvstore.PolicyStore(client, keys)
	eventually(t, "the valid policy in etcd", func() error {
		it, ok, err := store.Get(ctx, ns+"/allow-client")
		if err != nil || !ok || it.Err != nil {
			return fmt.Errorf("get: ok %v, %w", ok, errors.Join(err, it.Err))
		}
		if it.Value.Kind != policy.KindMeshNetworkPolicy {
			return fmt.Errorf("policy kind %q; want %s", it.Value.Kind, policy.KindMeshNetworkPolicy)
		}
		return nil
	})
	accepted := func(name string) (*metav1.Condition, error) {
		p, err := mc.GetMeshNetworkPolicy(ctx, ns, name)
		if err != nil {
			return nil, err
		}
		c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted)
		if c == nil || p.Status.ObservedGeneration != p.Generation {
			return nil, fmt.Errorf("status %+v: no Accepted condition for generation %d", p.Status, p.Generation)
		}
		return c, nil
	}
	eventually(t, "Accepted=True", func() error {
		c, err := accepted("allow-client")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonValid {
			return fmt.Errorf("Accepted = %s %s", c.Status, c.Reason)
		}
		return nil
	})
	eventually(t, "Accepted=False", func() error {
		c, err := accepted("bad-except")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonInvalid || !strings.Contains(c.Message, "except") {
			return fmt.Errorf("Accepted = %s %s %q", c.Status, c.Reason, c.Message)
		}
		return nil
	})
	eventually(t, "Warning Event on the invalid policy", func() error {
		l, err := adminClient(t).EventsV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "regarding.name=bad-except"})
		if err != nil {
			return err
		}
		for _, e := range l.Items {
			if e.Reason == crd.EventReasonInvalid && e.Type == corev1.EventTypeWarning && e.Regarding.Kind == v1alpha1.KindMeshNetworkPolicy {
				return nil
			}
		}
		return fmt.Errorf("events = %+v", l.Items)
	})
	if _, ok, err := store.Get(ctx, ns+"/bad-except"); ok || err != nil {
		t.Errorf("the invalid policy is in etcd (ok %v, err %v)", ok, err)
	}
}

// TestViews: identities and node records in etcd show up as MeshIdentity
// and MeshNode objects, and go when they go.
func TestViews(t *testing.T) {
	kube.Require(t)
	ctx := context.Background()
	client, keys := startControlPlane(t, controlplane.Config{})
	mc := meshClient(t)
	set, err := labels.ParseSet("k8s:app=views-web,k8s:io.kubernetes.pod.namespace=views")
	if err != nil {
		t.Fatal(err)
	}
	const id = "66001"
	if err := client.Put(ctx, keys.IdentityID(id), []byte(set.String())); err != nil {
		t.Fatal(err)
	}
	if err := client.Put(ctx, keys.IdentityRef(set.Hash(), "views-node"), nil); err != nil {
		t.Fatal(err)
	}
	rec := node.Record{Name: "views-node", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.77.1.0/24")},
		IPs: []netip.Addr{netip.MustParseAddr("192.0.2.77")}, GossipAddr: "192.0.2.77:7946", Version: "test"}
	if err := client.Put(ctx, keys.Node("views-node"), rec.Encode()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "MeshIdentity and MeshNode", func() error {
		ids, err := mc.ListMeshIdentities(ctx)
		if err != nil {
			return err
		}
		if len(ids.Items) != 1 || ids.Items[0].Name != id || ids.Items[0].Status.References != 1 ||
			len(ids.Items[0].Status.Nodes) != 1 || ids.Items[0].Status.Nodes[0] != "views-node" {
			return fmt.Errorf("meshidentities = %+v", ids.Items)
		}
		nodes, err := mc.ListMeshNodes(ctx)
		if err != nil {
			return err
		}
		if len(nodes.Items) != 1 || nodes.Items[0].Name != "views-node" ||
			strings.Join(nodes.Items[0].Spec.PodCIDRs, ",") != "10.77.1.0/24" || nodes.Items[0].Status.Agent != v1alpha1.AgentReady {
			return fmt.Errorf("meshnodes = %+v", nodes.Items)
		}
		return nil
	})
	for _, k := range []string{keys.IdentityID(id), keys.IdentityRef(set.Hash(), "views-node"), keys.Node("views-node")} {
		if err := client.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "views gone", func() error {
		ids, err := mc.ListMeshIdentities(ctx)
		if err != nil {
			return err
		}
		nodes, err := mc.ListMeshNodes(ctx)
		if err != nil {
			return err
		}
		if len(ids.Items) != 0 || len(nodes.Items) != 0 {
			return fmt.Errorf("%d meshidentities, %d meshnodes left", len(ids.Items), len(nodes.Items))
		}
		return nil
	})
}

// TestMembershipGC: the leader writes members/<node> for every Kubernetes
// Node; a node deleted from Kubernetes whose agent's lease is gone loses
// its pod CIDRs and its orphaned endpoints to the collectors, without the
// grace period; a member whose agent is down keeps them.
func TestMembershipGC(t *testing.T) {
	kube.Require(t)
	ctx := context.Background()
	client, keys := startControlPlane(t, controlplane.Config{GCInterval: 100 * time.Millisecond, GracePeriod: time.Hour})
	c := adminClient(t)
	const gone, kept = "member-gone", "member-kept"
	for _, name := range []string{gone, kept} {
		if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.1.9.1"}}},
		}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
	pools, err := nodecidr.NewPools(client, keys.Cluster())
	if err != nil {
		t.Fatal(err)
	}
	if err := pools.Add(ctx, ipam.Pool{Name: "p", IPv4: []netip.Prefix{netip.MustParsePrefix("10.78.0.0/16")}, IPv4MaskSize: 24}); err != nil {
		t.Fatal(err)
	}
	cidrs := map[string]netip.Prefix{}
	for i, name := range []string{gone, kept} {
		s, err := kvstore.NewSession(ctx, client, kvstore.SessionConfig{TTL: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		cl, err := nodecidr.NewClaimer(client, s, nodecidr.Config{Cluster: keys.Cluster(), Node: name, MaxPerFamily: 1})
		if err != nil {
			t.Fatal(err)
		}
		got, err := cl.Ensure(ctx, ipam.IPv4)
		if err != nil {
			t.Fatal(err)
		}
		cidrs[name] = got[0]
		// An endpoint that outlived its node's lease (no lease here).
		ip := got[0].Addr().Next()
		e := ipcache.Entry{IP: ip, Identity: 66002, Node: name}
		if err := client.Put(ctx, keys.Endpoint(ip.String()), e.Encode()); err != nil {
			t.Fatal(err)
		}
		_ = i
		_ = s.Close() // the agent is gone: its record with it
	}
	eventually(t, "members in etcd", func() error {
		for _, name := range []string{gone, kept} {
			kv, ok, err := client.Get(ctx, keys.Member(name))
			if err != nil || !ok {
				return fmt.Errorf("member %s: ok %v, %w", name, ok, err)
			}
			m, err := node.DecodeMember(name, kv.Value)
			if err != nil || len(m.InternalIPs) != 1 || m.InternalIPs[0].String() != "10.1.9.1" {
				return fmt.Errorf("member %s = %+v, %w", name, m, err)
			}
		}
		return nil
	})
	if err := c.CoreV1().Nodes().Delete(ctx, gone, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	claimed := func(node string) (bool, error) {
		kvs, _, err := client.List(ctx, keys.IPAMNode(node))
		return len(kvs) > 0, err
	}
	endpoint := func(node string) (bool, error) {
		_, ok, err := client.Get(ctx, keys.Endpoint(cidrs[node].Addr().Next().String()))
		return ok, err
	}
	eventually(t, "the deleted node's CIDR and endpoint reclaimed", func() error {
		if _, ok, err := client.Get(ctx, keys.Member(gone)); ok || err != nil {
			return fmt.Errorf("member %s still there (%w)", gone, err)
		}
		if ok, err := claimed(gone); ok || err != nil {
			return fmt.Errorf("%s still holds %s (%w)", gone, cidrs[gone], err)
		}
		if ok, err := endpoint(gone); ok || err != nil {
			return fmt.Errorf("%s's endpoint still there (%w)", gone, err)
		}
		return nil
	})
	// The collectors ran many passes since the kept node's agent went;
	// it is a member, so it keeps both.
	if ok, err := claimed(kept); !ok || err != nil {
		t.Errorf("%s lost its CIDR (%v)", kept, err)
	}
	if ok, err := endpoint(kept); !ok || err != nil {
		t.Errorf("%s lost its endpoint (%v)", kept, err)
	}
}
