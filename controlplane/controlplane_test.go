package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/policy"
	"github.com/meshplane/meshplane/service"
)

// harness is one cluster's etcd and its keys.
type harness struct {
	t       *testing.T
	cluster string
	keys    kvstore.Keys
	client  *kvstore.Client
}

func newHarness(t *testing.T) *harness {
	cluster := etcdtest.Cluster(t)
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, cluster: cluster, keys: keys, client: srv.Client(t)}
}

// start runs a control plane on src until the returned stop is called
// (or the test ends); stop returns Run's error.
func (h *harness) start(src Source, mod func(*Config)) (stop func() error) {
	_, stop = h.startCP(src, mod)
	return stop
}

// startCP is start that also returns the control plane.
func (h *harness) startCP(src Source, mod func(*Config)) (*ControlPlane, func() error) {
	cfg := Config{Client: srv.Client(h.t), Cluster: h.cluster, ClusterID: 1, Source: src, GCInterval: -1, LeaseTTL: 2 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	cp, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
			if errors.Is(runErr, context.Canceled) {
				runErr = nil
			}
		})
		return runErr
	}
	h.t.Cleanup(func() { _ = stop() })
	return cp, stop
}

// revs lists a prefix: key (relative) → mod revision.
func (h *harness) revs(prefix string) map[string]int64 {
	h.t.Helper()
	kvs, _, err := h.client.List(context.Background(), prefix)
	if err != nil {
		h.t.Fatal(err)
	}
	out := make(map[string]int64, len(kvs))
	for _, kv := range kvs {
		out[strings.TrimPrefix(kv.Key, prefix)] = kv.ModRevision
	}
	return out
}

// version is how many times key was written since it was created (0: it
// does not exist).
func (h *harness) version(key string) int64 {
	h.t.Helper()
	resp, err := h.client.Etcd().Get(context.Background(), key)
	if err != nil {
		h.t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].Version
}

// eventually polls cond until it returns "" or the deadline passes.
func eventually(t *testing.T, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// holds waits until the kind's prefix holds exactly want (relative key →
// encoded value).
func (h *harness) holds(prefix string, want map[string][]byte) {
	h.t.Helper()
	eventually(h.t, "etcd "+prefix, func() string {
		kvs, _, err := h.client.List(context.Background(), prefix)
		if err != nil {
			return err.Error()
		}
		got := map[string]string{}
		for _, kv := range kvs {
			got[strings.TrimPrefix(kv.Key, prefix)] = string(kv.Value)
		}
		if len(got) != len(want) {
			return fmt.Sprintf("%d keys, want %d", len(got), len(want))
		}
		for k, v := range want {
			if got[k] != string(v) {
				return fmt.Sprintf("%s = %q, want %q", k, got[k], v)
			}
		}
		return ""
	})
}

func testPod(i int, node string, labels map[string]string) pod.Pod {
	return pod.Pod{Namespace: fmt.Sprintf("ns%d", i%3), Name: fmt.Sprintf("pod-%d", i), Node: node, Labels: labels}
}

func testService(name string, backends ...string) service.Service {
	s, err := service.Build(service.Spec{
		Namespace: "default", Name: name,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:      []service.Port{{Name: "http", Protocol: service.TCP, Port: 80}},
	}, endpoints(backends...))
	if err != nil {
		panic(err)
	}
	return s
}

func endpoints(ips ...string) []service.Endpoint {
	var eps []service.Endpoint
	for _, ip := range ips {
		eps = append(eps, service.Endpoint{IP: netip.MustParseAddr(ip), Node: "n1", Ports: map[string]uint16{"http": 8080}, Ready: true, Serving: true})
	}
	return eps
}

// wantPods is the etcd view of the source's pods.
func wantPods(t *testing.T, l *fakeLister[pod.Pod]) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, k := range l.Keys() {
		p, ok, _ := l.Get(k)
		if !ok {
			continue
		}
		b, err := p.Encode()
		if err != nil {
			t.Fatal(err)
		}
		out[p.Key()] = b
	}
	return out
}

// TestSync: the first sync writes everything; a change writes only its
// key; a notification without a change writes nothing.
func TestSync(t *testing.T) {
	h := newHarness(t)
	src := newFakeSource()
	const n = 300 // several transactions
	for i := range n {
		src.pods.set(testPod(i, fmt.Sprintf("node-%d", i%4), map[string]string{"app": "web"}).Owner(),
			testPod(i, fmt.Sprintf("node-%d", i%4), map[string]string{"app": "web"}), nil)
	}
	for i := range 3 {
		ns := pod.Namespace{Name: fmt.Sprintf("ns%d", i), Labels: map[string]string{"team": "a"}}
		src.namespaces.set(ns.Name, ns, nil)
	}
	src.services.set("default/web", testService("web", "10.0.0.1", "10.0.0.2"), nil)
	h.start(src, nil)

	h.holds(h.keys.PodsPrefix(), wantPods(t, src.pods))
	eventually(t, "namespaces", func() string {
		if got := len(h.revs(h.keys.NamespacesPrefix())); got != 3 {
			return fmt.Sprintf("%d namespaces", got)
		}
		return ""
	})
	svcB, _ := service.Service.Encode(testService("web", "10.0.0.1", "10.0.0.2"))
	h.holds(h.keys.ServicesPrefix(), map[string][]byte{"default/web": svcB})
	before := h.revs(h.keys.PodsPrefix())
	txns := map[int64]bool{}
	for _, rev := range before {
		txns[rev] = true
	}
	if want := (n + maxTxnOps - 1) / maxTxnOps; len(txns) != want {
		t.Errorf("the first sync wrote %d pods in %d transactions, want %d", n, len(txns), want)
	}

	// A notification with no change, then a change, then a move to
	// another node, a deletion and a service change.
	p0 := testPod(0, "node-0", map[string]string{"app": "web"})
	src.pods.set(p0.Owner(), p0, nil)
	p1 := testPod(1, "node-1", map[string]string{"app": "api"})
	src.pods.set(p1.Owner(), p1, nil)
	p2 := testPod(2, "node-3", map[string]string{"app": "web"}) // was on node-2
	src.pods.set(p2.Owner(), p2, nil)
	p3 := testPod(3, "node-3", nil)
	src.pods.del(p3.Owner())
	src.services.set("default/web", testService("web", "10.0.0.2"), nil)

	h.holds(h.keys.PodsPrefix(), wantPods(t, src.pods))
	svcB, _ = service.Service.Encode(testService("web", "10.0.0.2"))
	h.holds(h.keys.ServicesPrefix(), map[string][]byte{"default/web": svcB})
	after := h.revs(h.keys.PodsPrefix())
	changed := map[string]bool{p1.Key(): true, p2.Key(): true}
	for k, rev := range after {
		if changed[k] {
			if rev == before[k] {
				t.Errorf("%s was not rewritten", k)
			}
			continue
		}
		if rev != before[k] {
			t.Errorf("%s was rewritten (mod revision %d -> %d) though it did not change", k, before[k], rev)
		}
	}
	if _, ok := after["node-2/ns2/pod-2"]; ok {
		t.Errorf("the moved pod's old key is still there")
	}
	if v := h.version(h.keys.PodsPrefix() + p0.Key()); v != 1 {
		t.Errorf("%s has version %d, want 1 (a notification without a change writes nothing)", p0.Key(), v)
	}
}

// TestRestart: a control plane that starts again over a changed source
// writes only the difference and deletes what vanished while it was down,
// a stray key too.
func TestRestart(t *testing.T) {
	h := newHarness(t)
	src := newFakeSource()
	for i := range 50 {
		p := testPod(i, "node-0", map[string]string{"app": "web"})
		src.pods.set(p.Owner(), p, nil)
	}
	stop := h.start(src, nil)
	h.holds(h.keys.PodsPrefix(), wantPods(t, src.pods))
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	before := h.revs(h.keys.PodsPrefix())

	// While it is down: 5 pods deleted, 5 changed, 5 created, and a stray
	// key written by someone else.
	changed := map[string]bool{}
	for i := range 5 {
		src.pods.del(testPod(i, "", nil).Owner())
		p := testPod(10+i, "node-0", map[string]string{"app": "api"})
		src.pods.set(p.Owner(), p, nil)
		changed[p.Key()] = true
		p = testPod(100+i, "node-1", nil)
		src.pods.set(p.Owner(), p, nil)
		changed[p.Key()] = true
	}
	stray := pod.Pod{Namespace: "gone", Name: "stray", Node: "node-9"}
	b, _ := stray.Encode()
	if err := h.client.Put(context.Background(), h.keys.PodsPrefix()+stray.Key(), b); err != nil {
		t.Fatal(err)
	}
	h.start(src, nil)
	h.holds(h.keys.PodsPrefix(), wantPods(t, src.pods))
	for k, rev := range h.revs(h.keys.PodsPrefix()) {
		if !changed[k] && rev != before[k] {
			t.Errorf("%s rewritten after the restart though it did not change", k)
		}
	}
}

// TestInvalid: an object the source cannot translate keeps what etcd
// holds and is reported; nothing else is affected.
func TestInvalid(t *testing.T) {
	h := newHarness(t)
	src := newFakeSource()
	good, err := policy.Parse([]byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: default, name: deny}
spec: {podSelector: {}, policyTypes: [Ingress]}
`))
	if err != nil {
		t.Fatal(err)
	}
	src.policies.set("default/deny", good[0], nil)
	type report struct {
		kind Kind
		key  string
		err  error
	}
	reports := make(chan report, 100)
	h.start(src, func(c *Config) {
		c.OnInvalid = func(kind Kind, key string, err error) { reports <- report{kind, key, err} }
	})
	b, _ := good[0].Encode()
	h.holds(h.keys.PoliciesPrefix(), map[string][]byte{"default/deny": b})

	bad := &policy.FieldError{Policy: "default/deny", Field: "spec.ingress[0].from[0]", Detail: "unsupported"}
	src.policies.set("default/deny", nil, bad)
	r := <-reports
	if r.kind != KindPolicy || r.key != "default/deny" || !errors.Is(r.err, policy.ErrInvalid) {
		t.Fatalf("OnInvalid(%v, %q, %v), want the policy's FieldError", r.kind, r.key, r.err)
	}
	other := testService("web", "10.0.0.1")
	src.services.set("default/web", other, nil)
	sb, _ := service.Service.Encode(other)
	h.holds(h.keys.ServicesPrefix(), map[string][]byte{"default/web": sb})
	h.holds(h.keys.PoliciesPrefix(), map[string][]byte{"default/deny": b})
}
