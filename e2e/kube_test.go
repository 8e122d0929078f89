package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/meshplane/meshplane/kubetest/apiserver"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/lab"
)

// requireKube skips without the kube-apiserver binary, or fails when
// MESHPLANE_REQUIRE_KUBE is set (kubetest's rule).
func requireKube(t testing.TB) {
	t.Helper()
	if _, err := apiserver.Find(); err != nil {
		if os.Getenv("MESHPLANE_REQUIRE_KUBE") != "" {
			t.Fatalf("%v (MESHPLANE_REQUIRE_KUBE is set)", err)
		}
		t.Skip(err)
	}
}

// startKubeLab brings up testdata/kube.yaml: the policy matrix's lab on a
// real kube-apiserver with mesh-controlplane. It returns the lab and a
// client of its API server.
func startKubeLab(t testing.TB) (*lab.Lab, kubernetes.Interface) {
	t.Helper()
	requireRoot(t)
	requireKube(t)
	l := startLabFile(t, "testdata/kube.yaml")
	kc, err := l.Kubeconfig("c1")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l, kube
}

// createPolicy creates a NetworkPolicy from its manifest in the API server.
func createPolicy(t testing.TB, kube kubernetes.Interface, manifest string) *networkingv1.NetworkPolicy {
	t.Helper()
	var np networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(manifest), &np); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := kube.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, &np, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func deletePolicy(t testing.TB, kube kubernetes.Interface, np *networkingv1.NetworkPolicy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kube.NetworkingV1().NetworkPolicies(np.Namespace).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// labelPatch is what `kubectl label KIND NAME key=value` (or key- for a
// nil value) sends: a merge patch of metadata.labels.
func labelPatch(key string, value *string) []byte {
	v := "null"
	if value != nil {
		v = fmt.Sprintf("%q", *value)
	}
	return fmt.Appendf(nil, `{"metadata":{"labels":{%q:%s}}}`, key, v)
}

func ptr[T any](v T) *T { return &v }

// TestKubernetesLab runs the lab's cluster on a real kube-apiserver with a
// mesh-controlplane process, and drives it through the API server only:
// a NetworkPolicy created there is enforced on real packets (and lifted
// when it is deleted); relabelling a namespace there (as kubectl label
// does) and a pod (through the lab, which patches the API server) changes
// who may connect; a pod the lab adds gets its status and a place in the
// service's EndpointSlice, and goes from both when deleted; a deleted
// Service's ClusterIP stops answering.
func TestKubernetesLab(t *testing.T) {
	l, kube := startKubeLab(t)
	const (
		client = "prod/client" // n1
		web1   = "prod/web-1"  // n1
		web2   = "prod/web-2"  // n2
		db     = "prod/db"     // n2
		tool   = "dev/tool"    // n2
		svc    = "svc:prod/web"
	)
	expect(t, l, []probe{
		{from: db, to: web1, port: 80, allowed: true},
		{from: client, to: svc, port: 80, allowed: true},
	})

	t.Run("policy from the API server", func(t *testing.T) {
		np := createPolicy(t, kube, webFromClient)
		expect(t, l, []probe{
			{from: client, to: web1, port: 80, allowed: true},
			{from: client, to: web2, port: 80, allowed: true}, // n1 -> n2
			{from: client, to: web2, port: 8080, reason: denied},
			{from: db, to: web1, port: 80, reason: denied},
			{from: tool, to: web2, port: 80, reason: denied},
		})
		deletePolicy(t, kube, np)
		expect(t, l, []probe{{from: db, to: web1, port: 80, allowed: true}})
	})

	t.Run("relabel in the API server", func(t *testing.T) {
		np1, np2 := createPolicy(t, kube, webFromClient), createPolicy(t, kube, webFromTrusted)
		expect(t, l, []probe{
			{from: tool, to: web2, port: 80, reason: denied},
			{from: db, to: web1, port: 80, reason: denied},
		})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// kubectl label namespace dev trusted=yes, straight to the API
		// server: the control plane carries it to etcd and the agents.
		if _, err := kube.CoreV1().Namespaces().Patch(ctx, "dev", types.MergePatchType, labelPatch("trusted", ptr("yes")), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		expect(t, l, []probe{
			{from: tool, to: web2, port: 80, allowed: true},
			{from: tool, to: web1, port: 80, allowed: true},
			{from: tool, to: web2, port: 8080, reason: denied},
		})
		if _, err := kube.CoreV1().Namespaces().Patch(ctx, "dev", types.MergePatchType, labelPatch("trusted", nil), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		expect(t, l, []probe{{from: tool, to: web2, port: 80, reason: denied}})

		// The lab's relabel patches the pod in the API server too.
		before, err := l.Pod(db)
		if err != nil {
			t.Fatal(err)
		}
		after, err := l.LabelPod(ctx, db, lab.LabelChange{Set: map[string]string{"app": "client"}})
		if err != nil {
			t.Fatal(err)
		}
		if after.Identity == before.Identity || after.IP != before.IP {
			t.Fatalf("relabelled db: identity %d -> %d, IP %s -> %s; want a new identity and the same IP", before.Identity, after.Identity, before.IP, after.IP)
		}
		p, err := kube.CoreV1().Pods("prod").Get(ctx, "db", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Labels["app"] != "client" {
			t.Fatalf("pod prod/db in the API server has labels %v after LabelPod; want app=client", p.Labels)
		}
		expect(t, l, []probe{
			{from: db, to: web1, port: 80, allowed: true}, // n2 -> n1
			{from: db, to: web2, port: 80, allowed: true},
		})
		if _, err := l.LabelPod(ctx, db, lab.LabelChange{Set: map[string]string{"app": "db"}}); err != nil {
			t.Fatal(err)
		}
		expect(t, l, []probe{{from: db, to: web1, port: 80, reason: denied}})
		deletePolicy(t, kube, np1)
		deletePolicy(t, kube, np2)
	})

	t.Run("pods come and go", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		p, err := l.AddPod(ctx, "c1", "n1", lab.PodSpec{Name: "web-3", Namespace: "prod", Labels: map[string]string{"app": "web"}, Ports: []lab.PortSpec{{Name: "http", Port: 80}}})
		if err != nil {
			t.Fatal(err)
		}
		// No kubelet: the lab sets the status, and is the EndpointSlice
		// controller.
		kp, err := kube.CoreV1().Pods("prod").Get(ctx, "web-3", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ready := slices.ContainsFunc(kp.Status.Conditions, func(c corev1.PodCondition) bool { return c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue })
		if kp.Spec.NodeName != "n1" || kp.Status.PodIP != p.IP.String() || kp.Status.Phase != corev1.PodRunning || !ready {
			t.Fatalf("pod prod/web-3 in the API server: node %q, IP %q, phase %s, ready %v; want n1, %s, Running, ready", kp.Spec.NodeName, kp.Status.PodIP, kp.Status.Phase, ready, p.IP)
		}
		slice, err := kube.DiscoveryV1().EndpointSlices("prod").Get(ctx, "web-lab", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(slice.Endpoints, func(e discoveryv1.Endpoint) bool { return slices.Contains(e.Addresses, p.IP.String()) }) {
			t.Fatalf("EndpointSlice prod/web-lab has %v; want web-3's %s among them", slice.Endpoints, p.IP)
		}
		if got := spread(t, l, client, svc, 80, 30); got["c1/prod/web-3"] == 0 {
			t.Fatalf("30 connections to the service: %v; want web-3 among the backends", got)
		}
		if err := l.DeletePod(ctx, "prod/web-3"); err != nil {
			t.Fatal(err)
		}
		if _, err := kube.CoreV1().Pods("prod").Get(ctx, "web-3", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("pod prod/web-3 after DeletePod: %v; want not found", err)
		}
		if got := spread(t, l, client, svc, 80, 20); got["c1/prod/web-3"] != 0 {
			t.Fatalf("after web-3 was deleted: %v; want no connection to it", got)
		}
	})

	t.Run("deleted service", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		expect(t, l, []probe{{from: client, to: svc, port: 80, allowed: true}})
		if err := kube.CoreV1().Services("prod").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kube.CoreV1().Services("prod").Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("service prod/web after its deletion: %v; want not found", err)
		}
		waitNoServiceKey(t, l, "prod", "web")
		// The pods still answer on their own addresses.
		expect(t, l, []probe{
			{from: client, to: svc, port: 80},
			{from: client, to: web1, port: 80, allowed: true},
		})
	})
}

// waitNoServiceKey waits until the control plane has deleted a service's
// key from etcd.
func waitNoServiceKey(t *testing.T, l *lab.Lab, namespace, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := kvstore.New(ctx, kvstore.Config{Endpoints: l.EtcdEndpoints("c1")})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	keys, err := kvstore.NewKeys("c1")
	if err != nil {
		t.Fatal(err)
	}
	for {
		_, ok, err := client.Get(ctx, keys.Service(namespace, name))
		if err == nil && !ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("services/%s/%s is still in etcd after its Service was deleted: %v", namespace, name, errors.Join(ctx.Err(), err))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// BenchmarkKubeRelabel measures the time from a `kubectl label pod`
// (a merge patch of the pod's labels in the API server) to its
// enforcement on real packets: prod/db takes app=client, which the
// webFromClient policy lets reach web-1 on another node, and the clock
// stops at the first probe that gets through. Probes time out after
// probeTimeout, so the figure is at most that (and a probe's own cost)
// late. Each iteration labels db back and waits until it is shut out
// again, untimed. It reports relabel_p50_ms and relabel_p99_ms.
func BenchmarkKubeRelabel(b *testing.B) {
	const probeTimeout = 20 * time.Millisecond
	l, kube := startKubeLab(b)
	createPolicy(b, kube, webFromClient)
	ctx := context.Background()
	probeUntil := func(allowed bool) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			res, err := l.Probe(ctx, lab.ProbeSpec{From: "prod/db", To: "prod/web-1", Port: 80, Timeout: probeTimeout})
			if err != nil {
				b.Fatal(err)
			}
			if res.Allowed == allowed {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("prod/db -> prod/web-1:80 still allowed=%v after 30s", res.Allowed)
			}
		}
	}
	label := func(app string) {
		if _, err := kube.CoreV1().Pods("prod").Patch(ctx, "db", types.MergePatchType, labelPatch("app", &app), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	probeUntil(false)
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		label("client")
		probeUntil(true)
		lat = append(lat, time.Since(start))
		b.StopTimer()
		label("db")
		probeUntil(false)
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.5), "relabel_p50_ms")
	b.ReportMetric(pct(0.99), "relabel_p99_ms")
}
