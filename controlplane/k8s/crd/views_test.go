package crd_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshplane/meshplane/controlplane/k8s/apis/v1alpha1"
	"github.com/meshplane/meshplane/controlplane/k8s/crd"
	"github.com/meshplane/meshplane/health"
	"github.com/meshplane/meshplane/labels"
	"github.com/meshplane/meshplane/node"
)

func set(t *testing.T, ls ...string) labels.Set {
	t.Helper()
	var out []labels.Label
	for _, s := range ls {
		l, err := labels.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	s, err := labels.NewSet(out...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSyncIdentities: the MeshIdentity objects follow the input through
// creation, reference changes and deletion, only the difference is
// written, and hand edits are undone.
func TestSyncIdentities(t *testing.T) {
	cfg := installed(t)
	ctx := testContext(t)
	w := newWriter(t, cfg)
	web := set(t, "k8s:app=web", "k8s:io.kubernetes.pod.namespace=prod", "ns:kubernetes.io/metadata.name=prod")
	db := set(t, "k8s:app=db", "k8s:io.kubernetes.pod.namespace=prod")
	cache := set(t, "k8s:app=cache", "k8s:io.kubernetes.pod.namespace=dev")

	type want struct {
		spec   v1alpha1.MeshIdentitySpec
		status v1alpha1.MeshIdentityStatus
	}
	check := func(t *testing.T, wantObjs map[string]want) {
		t.Helper()
		list, err := w.Client().ListMeshIdentities(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]want{}
		for _, o := range list.Items {
			got[o.Name] = want{o.Spec, o.Status}
		}
		if !reflect.DeepEqual(got, wantObjs) {
			t.Fatalf("meshidentities\n got %+v\nwant %+v", got, wantObjs)
		}
	}

	steps := []struct {
		name string
		ids  []crd.Identity
		res  crd.SyncResult
		want map[string]want
	}{
		{"create", []crd.Identity{
			{ID: 40000, Labels: web, Nodes: []string{"node-b", "node-a", "node-b"}},
			{ID: 40001, Labels: db, Nodes: []string{"node-a"}},
			{ID: 40002, Labels: cache},
		}, crd.SyncResult{Created: 3}, map[string]want{
			"40000": {v1alpha1.MeshIdentitySpec{ID: 40000, Namespace: "prod", Labels: []string{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=prod", "ns:kubernetes.io/metadata.name=prod"}},
				v1alpha1.MeshIdentityStatus{References: 2, Nodes: []string{"node-a", "node-b"}}},
			"40001": {v1alpha1.MeshIdentitySpec{ID: 40001, Namespace: "prod", Labels: []string{"k8s:app=db", "k8s:io.kubernetes.pod.namespace=prod"}},
				v1alpha1.MeshIdentityStatus{References: 1, Nodes: []string{"node-a"}}},
			"40002": {v1alpha1.MeshIdentitySpec{ID: 40002, Namespace: "dev", Labels: []string{"k8s:app=cache", "k8s:io.kubernetes.pod.namespace=dev"}},
				v1alpha1.MeshIdentityStatus{}},
		}},
		{"unchanged", []crd.Identity{
			{ID: 40002, Labels: cache},
			{ID: 40001, Labels: db, Nodes: []string{"node-a"}},
			{ID: 40000, Labels: web, Nodes: []string{"node-a", "node-b"}},
		}, crd.SyncResult{Unchanged: 3}, nil},
		{"references and deletion", []crd.Identity{
			{ID: 40000, Labels: web, Nodes: []string{"node-b"}},
			{ID: 40002, Labels: cache, Nodes: []string{"node-c"}},
		}, crd.SyncResult{StatusUpdated: 2, Deleted: 1}, map[string]want{
			"40000": {v1alpha1.MeshIdentitySpec{ID: 40000, Namespace: "prod", Labels: []string{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=prod", "ns:kubernetes.io/metadata.name=prod"}},
				v1alpha1.MeshIdentityStatus{References: 1, Nodes: []string{"node-b"}}},
			"40002": {v1alpha1.MeshIdentitySpec{ID: 40002, Namespace: "dev", Labels: []string{"k8s:app=cache", "k8s:io.kubernetes.pod.namespace=dev"}},
				v1alpha1.MeshIdentityStatus{References: 1, Nodes: []string{"node-c"}}},
		}},
		{"ID reused for other labels", []crd.Identity{
			{ID: 40000, Labels: web, Nodes: []string{"node-b"}},
			{ID: 40002, Labels: db, Nodes: []string{"node-c"}},
		}, crd.SyncResult{Updated: 1, Unchanged: 1}, map[string]want{
			"40000": {v1alpha1.MeshIdentitySpec{ID: 40000, Namespace: "prod", Labels: []string{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=prod", "ns:kubernetes.io/metadata.name=prod"}},
				v1alpha1.MeshIdentityStatus{References: 1, Nodes: []string{"node-b"}}},
			"40002": {v1alpha1.MeshIdentitySpec{ID: 40002, Namespace: "prod", Labels: []string{"k8s:app=db", "k8s:io.kubernetes.pod.namespace=prod"}},
				v1alpha1.MeshIdentityStatus{References: 1, Nodes: []string{"node-c"}}},
		}},
	}
	var last map[string]want
	for _, s := range steps {
		res, err := w.SyncIdentities(ctx, s.ids)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if res != s.res {
			t.Fatalf("%s: wrote %+v, want %+v", s.name, res, s.res)
		}
		if s.want != nil {
			last = s.want
		}
		check(t, last)
	}

	// A hand edit of the status is undone by the next sync.
	obj := &v1alpha1.MeshIdentity{}
	if err := w.Client().RESTClient().Get().Resource(v1alpha1.ResourceMeshIdentities).Name("40000").Do(ctx).Into(obj); err != nil {
		t.Fatal(err)
	}
	obj.Status.References = 99
	if err := w.Client().RESTClient().Put().Resource(v1alpha1.ResourceMeshIdentities).Name("40000").SubResource("status").Body(obj).Do(ctx).Error(); err != nil {
		t.Fatal(err)
	}
	res, err := w.SyncIdentities(ctx, steps[len(steps)-1].ids)
	if err != nil {
		t.Fatal(err)
	}
	if res != (crd.SyncResult{StatusUpdated: 1, Unchanged: 1}) {
		t.Fatalf("after a hand edit: wrote %+v", res)
	}
	check(t, last)

	// A duplicate input is reported, and the rest is still synced.
	res, err = w.SyncIdentities(ctx, []crd.Identity{{ID: 40000, Labels: web}, {ID: 40000, Labels: db}})
	if !errors.Is(err, crd.ErrDuplicate) {
		t.Fatalf("duplicate ID: error %v, want ErrDuplicate", err)
	}
	if res != (crd.SyncResult{StatusUpdated: 1, Deleted: 1}) {
		t.Fatalf("duplicate ID: wrote %+v", res)
	}

	if res, err := w.SyncIdentities(ctx, nil); err != nil || res != (crd.SyncResult{Deleted: 1}) {
		t.Fatalf("sync to nothing: %+v, %v", res, err)
	}
	check(t, map[string]want{})
}

// TestSyncNodes: the MeshNode objects follow the node records and health,
// and `kubectl get meshnodes` shows the printer columns.
func TestSyncNodes(t *testing.T) {
	cfg := installed(t)
	ctx := testContext(t)
	w := newWriter(t, cfg)
	a := crd.Node{
		Name:           "node-a",
		Addresses:      []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00::10")},
		PodCIDRs:       []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd10:244::/80")},
		Health:         v1alpha1.NodeHealth(health.Alive.String()),
		Agent:          v1alpha1.AgentReady,
		AgentVersion:   "v0.11.0",
		PolicyRevision: 812,
	}
	b := crd.Node{Name: "node-b", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, Agent: v1alpha1.AgentStarting}

	res, err := w.SyncNodes(ctx, []crd.Node{a, b})
	if err != nil || res != (crd.SyncResult{Created: 2}) {
		t.Fatalf("create: %+v, %v", res, err)
	}
	list, err := w.Client().ListMeshNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]v1alpha1.MeshNode{}
	for _, n := range list.Items {
		got[n.Name] = n
	}
	wantA := v1alpha1.MeshNode{
		Spec:   v1alpha1.MeshNodeSpec{Addresses: []string{"192.168.1.10", "fd00::10"}, PodCIDRs: []string{"10.244.0.0/24", "fd10:244::/80"}},
		Status: v1alpha1.MeshNodeStatus{Health: v1alpha1.HealthAlive, Agent: v1alpha1.AgentReady, AgentVersion: "v0.11.0", PolicyRevision: 812},
	}
	if n := got["node-a"]; !reflect.DeepEqual(n.Spec, wantA.Spec) || !reflect.DeepEqual(n.Status, wantA.Status) {
		t.Fatalf("node-a: %+v %+v", n.Spec, n.Status)
	}
	if n := got["node-b"]; n.Status.Health != v1alpha1.HealthUnknown || n.Status.Agent != v1alpha1.AgentStarting {
		t.Fatalf("node-b: %+v", n.Status)
	}

	// The columns `kubectl get meshnodes` prints.
	var table metav1.Table
	raw, err := w.Client().RESTClient().Get().Resource(v1alpha1.ResourceMeshNodes).
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &table); err != nil {
		t.Fatal(err)
	}
	var cols []string
	for _, c := range table.ColumnDefinitions {
		cols = append(cols, c.Name)
	}
	if wantCols := []string{"Name", "Health", "Agent", "Addresses", "Pod CIDRs", "Policy Revision", "Version", "Age"}; !slices.Equal(cols, wantCols) {
		t.Fatalf("columns %q, want %q", cols, wantCols)
	}
	row := ""
	for _, r := range table.Rows {
		if r.Cells[0] == "node-a" {
			row = mustJSON(r.Cells)
		}
	}
	for _, s := range []string{`"alive"`, `"Ready"`, `10.244.0.0/24`, `812`} {
		if !strings.Contains(row, s) {
			t.Fatalf("row of node-a %s lacks %s", row, s)
		}
	}

	// Health and policy revision change; node-b goes.
	a.Health, a.PolicyRevision = v1alpha1.NodeHealth(health.Suspect.String()), 900
	a.PodCIDRs = a.PodCIDRs[:1]
	res, err = w.SyncNodes(ctx, []crd.Node{a})
	if err != nil || res != (crd.SyncResult{Updated: 1, StatusUpdated: 1, Deleted: 1}) {
		t.Fatalf("update: %+v, %v", res, err)
	}
	list, err = w.Client().ListMeshNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].Status.Health != v1alpha1.HealthSuspect || list.Items[0].Status.PolicyRevision != 900 ||
		!slices.Equal(list.Items[0].Spec.PodCIDRs, []string{"10.244.0.0/24"}) {
		t.Fatalf("after update: %+v", list.Items)
	}
	if res, err := w.SyncNodes(ctx, []crd.Node{a}); err != nil || res != (crd.SyncResult{Unchanged: 1}) {
		t.Fatalf("resync: %+v, %v", res, err)
	}

	// A name the API server refuses fails that node only.
	res, err = w.SyncNodes(ctx, []crd.Node{a, {Name: "Not_A_DNS_Name"}})
	if err == nil || !strings.Contains(err.Error(), "Not_A_DNS_Name") || res != (crd.SyncResult{Unchanged: 1}) {
		t.Fatalf("invalid name: %+v, %v", res, err)
	}
	if res, err := w.SyncNodes(ctx, nil); err != nil || res != (crd.SyncResult{Deleted: 1}) {
		t.Fatalf("sync to nothing: %+v, %v", res, err)
	}
}

func TestNodeFromRecord(t *testing.T) {
	ip := netip.MustParseAddr("192.168.1.10")
	cidr := netip.MustParsePrefix("10.244.0.0/24")
	tests := []struct {
		name string
		rec  node.Record
		want crd.Node
	}{
		{"claimed by IPAM only", node.Record{Name: "n", PodCIDRs: []netip.Prefix{cidr}},
			crd.Node{Name: "n", PodCIDRs: []netip.Prefix{cidr}, Health: v1alpha1.HealthAlive, Agent: v1alpha1.AgentStarting}},
		{"agent published", node.Record{Name: "n", PodCIDRs: []netip.Prefix{cidr}, IPs: []netip.Addr{ip}, GossipAddr: "192.168.1.10:7946", Version: "v1", PolicyRevision: 7},
			crd.Node{Name: "n", PodCIDRs: []netip.Prefix{cidr}, Addresses: []netip.Addr{ip}, Health: v1alpha1.HealthAlive, Agent: v1alpha1.AgentReady, AgentVersion: "v1", PolicyRevision: 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := crd.NodeFromRecord(tt.rec, v1alpha1.NodeHealth(health.Alive.String())); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestHealthStates: every state package health reports is a valid
// NodeHealth (the CRD's enum), so a new state cannot be refused by the API
// server unnoticed.
func TestHealthStates(t *testing.T) {
	valid := []v1alpha1.NodeHealth{v1alpha1.HealthAlive, v1alpha1.HealthSuspect, v1alpha1.HealthDead, v1alpha1.HealthLeft,
		v1alpha1.HealthUnresponsive, v1alpha1.HealthRestarting}
	for s := health.Alive; s <= health.Restarting; s++ {
		if !slices.Contains(valid, v1alpha1.NodeHealth(s.String())) {
			t.Errorf("health state %s is not a NodeHealth", s)
		}
	}
	if got := health.Restarting + 1; !strings.HasPrefix(got.String(), "unknown") {
		t.Errorf("health has a state %s after Restarting: add it to NodeHealth and the CRD enum", got)
	}
}
