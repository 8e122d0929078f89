package k8s_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/controlplane/k8s"
	"github.com/meshplane/meshplane/controlplane/k8s/crd"
	"github.com/meshplane/meshplane/kubetest"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/service"
)

var kube *kubetest.Server

func TestMain(m *testing.M) { os.Exit(kubetest.RunMain(m, &kube)) }

func restConfig(t *testing.T, kubeconfig string) *rest.Config {
	t.Helper()
	rc, err := k8s.RESTConfig(k8s.Config{Kubeconfig: kubeconfig})
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func adminClient(t *testing.T) *kubernetes.Clientset {
	t.Helper()
	c, err := kubernetes.NewForConfig(restConfig(t, kube.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// notes records the notifications a Source sends.
type notes struct {
	mu   sync.Mutex
	seen map[string]int // "<kind> <key>" → count
}

func (n *notes) notify(kind controlplane.Kind, key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.seen == nil {
		n.seen = make(map[string]int)
	}
	n.seen[kind.String()+" "+key]++
}

func (n *notes) count(kind controlplane.Kind, key string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.seen[kind.String()+" "+key]
}

// run starts src and waits until it has synced; the source stops when the
// test ends.
func run(t *testing.T, src *k8s.Source) *notes {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	n := &notes{}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, n.notify) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v; want context.Canceled", err)
		}
	})
	sctx, scancel := context.WithTimeout(ctx, time.Minute)
	defer scancel()
	if err := src.WaitSynced(sctx); err != nil {
		select {
		case err := <-done:
			t.Fatalf("Run: %v", err)
		default:
		}
		t.Fatalf("WaitSynced: %v", err)
	}
	return n
}

// installCRDs applies meshplane's CRDs as the admin.
func installCRDs(t *testing.T) {
	t.Helper()
	dc, err := dynamic.NewForConfig(restConfig(t, kube.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	if err := crd.Install(context.Background(), dc, time.Minute); err != nil {
		t.Fatal(err)
	}
}

func newSource(t *testing.T) *k8s.Source {
	t.Helper()
	src, err := k8s.New(k8s.Config{REST: restConfig(t, kube.Kubeconfig)})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// eventually polls f until it returns nil, or fails the test with its last
// error after a minute.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPodsAndNamespaces(t *testing.T) {
	kube.Require(t)
	ctx := context.Background()
	c := adminClient(t)
	ns := kube.Namespace(t)
	if _, err := c.CoreV1().Namespaces().Patch(ctx, ns, "application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"team":"net"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	src := newSource(t)
	n := run(t, src)
	kinds := src.Kinds()

	mk := func(name, node string, hostNet bool) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{NodeName: node, HostNetwork: hostNet, ServiceAccountName: "web",
				Containers: []corev1.Container{{Name: "web", Image: "web:1",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {ContainerPort: 53, Protocol: corev1.ProtocolUDP}}}}},
		}
	}
	var uid string
	for _, p := range []*corev1.Pod{mk("web", "node-a", false), mk("pending", "", false), mk("hostnet", "node-a", true)} {
		got, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Name == "web" {
			uid = string(got.UID)
		}
	}
	want := pod.Pod{Namespace: ns, Name: "web", UID: uid, Node: "node-a", Labels: map[string]string{"app": "web"},
		ServiceAccount: "web", Ports: []pod.Port{{Name: "http", Port: 8080, Protocol: pod.ProtoTCP}, {Port: 53, Protocol: pod.ProtoUDP}}}
	eventually(t, "pod web", func() error {
		got, ok, err := kinds.Pods.Get(ns + "/web")
		if err != nil || !ok || !got.Equal(want) {
			return fmt.Errorf("Get = %+v, %v, %w; want %+v", got, ok, err, want)
		}
		return nil
	})
	if n.count(controlplane.KindPod, ns+"/web") == 0 {
		t.Errorf("no notification for pod %s/web", ns)
	}
	for _, name := range []string{"pending", "hostnet"} {
		eventually(t, "pod "+name, func() error {
			if !contains(kinds.Pods.Keys(), ns+"/"+name) {
				return errors.New("not in Keys yet")
			}
			if _, ok, err := kinds.Pods.Get(ns + "/" + name); ok || err != nil {
				return fmt.Errorf("Get = ok %v, err %w; want no value", ok, err)
			}
			return nil
		})
	}

	got, ok, err := kinds.Namespaces.Get(ns)
	if err != nil || !ok || !got.Equal(pod.Namespace{Name: ns, Labels: map[string]string{"team": "net", "kubernetes.io/metadata.name": ns}}) {
		t.Errorf("namespace = %+v, %v, %v", got, ok, err)
	}

	// A change and a deletion notify, and Get follows.
	if _, err := c.CoreV1().Pods(ns).Patch(ctx, "web", "application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"app":"web2"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "relabelled pod", func() error {
		got, _, _ := kinds.Pods.Get(ns + "/web")
		if got.Labels["app"] != "web2" {
			return fmt.Errorf("labels = %v", got.Labels)
		}
		return nil
	})
	before := n.count(controlplane.KindPod, ns+"/web")
	if err := c.CoreV1().Pods(ns).Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted pod", func() error {
		if _, ok, _ := kinds.Pods.Get(ns + "/web"); ok || n.count(controlplane.KindPod, ns+"/web") == before {
			return errors.New("still there, or no notification")
		}
		return nil
	})
}

func contains(keys []string, k string) bool {
	for _, x := range keys {
		if x == k {
			return true
		}
	}
	return false
}

func TestServiceWithEndpointSlices(t *testing.T) {
	kube.Require(t)
	ctx := context.Background()
	c := adminClient(t)
	ns := kube.Namespace(t)
	src := newSource(t)
	n := run(t, src)
	kinds := src.Kinds()

	local := corev1.ServiceInternalTrafficPolicyLocal
	timeout := int32(600)
	svc, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeNodePort,
			Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, NodePort: 30080},
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
			},
			SessionAffinity:       corev1.ServiceAffinityClientIP,
			SessionAffinityConfig: &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}},
			InternalTrafficPolicy: &local, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clusterIP := netip.MustParseAddr(svc.Spec.ClusterIP)
	dnsNodePort := uint16(svc.Spec.Ports[1].NodePort) // allocated by the apiserver

	yes, no := true, false
	for i, eps := range [][]discoveryv1.Endpoint{
		{
			{Addresses: []string{"10.244.1.10"}, NodeName: ptr("node-a"), Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no}},
			{Addresses: []string{"10.244.1.11"}, NodeName: ptr("node-a"), Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &no, Terminating: &no}},
		},
		{
			{Addresses: []string{"10.244.2.10"}, NodeName: ptr("node-b"), Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes}},
		},
	} {
		_, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("web-%d", i), Labels: map[string]string{k8s.ServiceNameLabel: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{
				{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)},
				{Name: ptr("dns"), Port: ptr(int32(5353)), Protocol: ptr(corev1.ProtocolUDP)},
			},
			Endpoints: eps,
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	b := func(a, node string) service.Backend {
		return service.Backend{Address: netip.MustParseAddrPort(a), Node: node}
	}
	want := service.Service{
		Namespace: ns, Name: "web",
		SessionAffinity: service.AffinityClientIP, AffinityTimeout: 600 * time.Second,
		InternalTrafficPolicy: service.TrafficLocal, ExternalTrafficPolicy: service.TrafficLocal,
		Frontends: []service.Frontend{
			{Address: netip.AddrPortFrom(clusterIP, 80), Protocol: service.TCP, Name: "http", NodePort: 30080,
				Backends: []service.Backend{b("10.244.1.10:8080", "node-a")}},
			{Address: netip.AddrPortFrom(clusterIP, 53), Protocol: service.UDP, Name: "dns", NodePort: dnsNodePort,
				Backends: []service.Backend{b("10.244.1.10:5353", "node-a")}},
		},
	}
	eventually(t, "service web", func() error {
		got, ok, err := kinds.Services.Get(ns + "/web")
		if err != nil || !ok || !equalJSON(got, want) {
			return fmt.Errorf("Get = %+v, %v, %w\nwant %+v", got, ok, err, want)
		}
		return nil
	})

	// The ready endpoint goes: the terminating one stands in, and the
	// slice's change notifies the service.
	before := n.count(controlplane.KindService, ns+"/web")
	if err := c.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "web-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	term := b("10.244.2.10:8080", "node-b")
	term.Terminating = true
	eventually(t, "terminating backend", func() error {
		got, _, err := kinds.Services.Get(ns + "/web")
		if err != nil || len(got.Frontends) != 2 || len(got.Frontends[0].Backends) != 1 || got.Frontends[0].Backends[0] != term {
			return fmt.Errorf("Get = %+v, %w; want the terminating backend %+v", got, err, term)
		}
		if n.count(controlplane.KindService, ns+"/web") == before {
			return errors.New("no notification for the slice's deletion")
		}
		return nil
	})
}

func equalJSON(a, b any) bool { return fmt.Sprintf("%+v", a) == fmt.Sprintf("%+v", b) }

func TestNetworkPolicies(t *testing.T) {
	kube.Require(t)
	ctx := context.Background()
	c := adminClient(t)
	ns := kube.Namespace(t)
	src := newSource(t)
	run(t, src)
	kinds := src.Kinds()

	good := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "allow-web"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}}}},
		},
	}
	// Kubernetes accepts a policy type listed twice; meshplane does not.
	bad := good.DeepCopy()
	bad.Name = "twice"
	bad.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeIngress}
	for _, p := range []*networkingv1.NetworkPolicy{good, bad} {
		if _, err := c.NetworkingV1().NetworkPolicies(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s: %v", p.Name, err)
		}
	}
	eventually(t, "policy allow-web", func() error {
		p, ok, err := kinds.Policies.Get(ns + "/allow-web")
		if err != nil || !ok || p.Key() != ns+"/allow-web" {
			return fmt.Errorf("Get = %v, %v, %w", p, ok, err)
		}
		return nil
	})
	eventually(t, "policy twice", func() error {
		_, ok, err := kinds.Policies.Get(ns + "/twice")
		var pe *k8s.PolicyError
		if !ok || !errors.As(err, &pe) {
			return fmt.Errorf("Get = ok %v, err %w; want a *PolicyError", ok, err)
		}
		if len(pe.FieldErrors) != 1 || pe.FieldErrors[0].Field != "spec.policyTypes[1]" {
			return fmt.Errorf("FieldErrors = %+v", pe.FieldErrors)
		}
		return nil
	})
}

func TestNodes(t *testing.T) {
	kube.Require(t)
	ctx := context.Background()
	c := adminClient(t)
	src := newSource(t)
	n := run(t, src)
	name := "kt-node-" + strings.ReplaceAll(kube.Namespace(t), "kt-", "")
	_, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "10.1.0.5"}, {Type: corev1.NodeExternalIP, Address: "192.0.2.5"},
			{Type: corev1.NodeHostName, Address: name},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := k8s.Node{Name: name, InternalIPs: []netip.Addr{netip.MustParseAddr("10.1.0.5")}, ExternalIPs: []netip.Addr{netip.MustParseAddr("192.0.2.5")}}
	eventually(t, "node", func() error {
		got, ok, err := src.Nodes().Get(name)
		if err != nil || !ok || !got.Equal(want) || n.count(controlplane.KindNode, name) == 0 {
			return fmt.Errorf("Get = %+v, %v, %w (notified %d); want %+v", got, ok, err, n.count(controlplane.KindNode, name), want)
		}
		return nil
	})
}

// watchCounter counts the watch requests open per resource.
type watchCounter struct {
	mu        sync.Mutex
	open, max map[string]int
}

func (w *watchCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		if req.URL.Query().Get("watch") != "true" && req.URL.Query().Get("watch") != "1" {
			return rt.RoundTrip(req)
		}
		parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
		res := parts[len(parts)-1]
		w.mu.Lock()
		w.open[res]++
		w.max[res] = max(w.max[res], w.open[res])
		w.mu.Unlock()
		resp, err := rt.RoundTrip(req)
		if err != nil {
			w.done(res)
			return nil, err
		}
		resp.Body = &closeBody{ReadCloser: resp.Body, onClose: func() { w.done(res) }}
		return resp, nil
	})
}

func (w *watchCounter) done(res string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.open[res]--
}

func (w *watchCounter) snapshot() (open, maxOpen map[string]int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	open, maxOpen = map[string]int{}, map[string]int{}
	for k, v := range w.open {
		open[k] = v
	}
	for k, v := range w.max {
		maxOpen[k] = v
	}
	return open, maxOpen
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type closeBody struct {
	io.ReadCloser
	once    sync.Once
	onClose func()
}

func (b *closeBody) Close() error {
	b.once.Do(b.onClose)
	return b.ReadCloser.Close()
}

// TestOneWatchPerKind: the source holds one watch per resource, however
// many listers read it.
func TestOneWatchPerKind(t *testing.T) {
	kube.Require(t)
	w := &watchCounter{open: map[string]int{}, max: map[string]int{}}
	rc := restConfig(t, kube.Kubeconfig)
	rc.WrapTransport = w.wrap
	src, err := k8s.New(k8s.Config{REST: rc})
	if err != nil {
		t.Fatal(err)
	}
	run(t, src)
	for range 3 { // the listers share the informers
		_ = src.Kinds()
		_ = src.Nodes()
	}
	resources := []string{"namespaces", "pods", "services", "endpointslices", "networkpolicies", "nodes", "meshnetworkpolicies"}
	eventually(t, "one watch each", func() error {
		open, maxOpen := w.snapshot()
		for _, r := range resources {
			if open[r] != 1 {
				return fmt.Errorf("open watches = %v; want 1 for each of %v", open, resources)
			}
		}
		if len(open) != len(resources) {
			return fmt.Errorf("open watches = %v; want only %v", open, resources)
		}
		for r, m := range maxOpen {
			if m > 1 {
				return fmt.Errorf("%s had %d watches open at once", r, m)
			}
		}
		return nil
	})
}

func TestPermissionErrors(t *testing.T) {
	kube.Require(t)
	installCRDs(t)
	u := kube.NewUser(t)
	// The CRDs are installed: this user may not, and need not.
	src, err := k8s.New(k8s.Config{Kubeconfig: kube.KubeconfigFor(t, u), SkipCRDInstall: true})
	if err != nil {
		t.Fatal(err)
	}
	err = src.Check(context.Background())
	if !errors.Is(err, k8s.ErrForbidden) {
		t.Fatalf("Check without permissions = %v; want ErrForbidden", err)
	}
	t.Logf("Check without permissions:\n%v", err)
	for _, r := range []string{"list namespaces", "list pods", "list services", "list endpointslices", "list networkpolicies", "list nodes", "create events",
		"list meshnetworkpolicies", "update meshnetworkpolicies/status", "list meshidentities", "delete meshnodes"} {
		if !strings.Contains(err.Error(), "may not "+r) {
			t.Errorf("Check's error does not name %s:\n%v", r, err)
		}
	}

	// Everything but watch on networkpolicies: exactly that is named.
	kube.Grant(t, u,
		kubetest.Rule{APIGroups: []string{""}, Resources: []string{"namespaces", "pods", "services", "nodes"}, Verbs: []string{"get", "list", "watch"}},
		kubetest.Rule{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}},
		kubetest.Rule{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
		kubetest.Rule{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"get", "list"}},
		kubetest.Rule{APIGroups: []string{"meshplane.io"}, Resources: []string{"meshnetworkpolicies"}, Verbs: []string{"get", "list", "watch"}},
		kubetest.Rule{APIGroups: []string{"meshplane.io"}, Resources: []string{"meshnetworkpolicies/status"}, Verbs: []string{"update"}},
		kubetest.Rule{APIGroups: []string{"meshplane.io"}, Resources: []string{"meshidentities", "meshnodes", "meshidentities/status", "meshnodes/status"},
			Verbs: []string{"get", "list", "watch", "create", "update", "delete"}},
		kubetest.Rule{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	)
	err = src.Check(context.Background())
	var pe *k8s.PermissionError
	if !errors.As(err, &pe) || pe.Verb != "watch" || pe.Resource != "networkpolicies" || pe.Group != "networking.k8s.io" {
		t.Fatalf("Check = %v; want a *PermissionError for watch networkpolicies", err)
	}
	if n := strings.Count(err.Error(), "may not"); n != 1 {
		t.Fatalf("Check = %v; want one missing permission", err)
	}
	// Run stops at once with the same error.
	if err := src.Run(context.Background(), func(controlplane.Kind, string) {}); !errors.As(err, &pe) {
		t.Fatalf("Run = %v; want the *PermissionError", err)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(garbage, []byte("clusters: [this is not"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	for _, tc := range []struct {
		kubeconfig, want string
	}{
		{"", "pass --kubeconfig"},
		{filepath.Join(dir, "missing"), "no such file"},
		{empty, "has no cluster"},
		{garbage, "kubeconfig in YAML"},
	} {
		_, err := k8s.New(k8s.Config{Kubeconfig: tc.kubeconfig})
		if !errors.Is(err, k8s.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%q) = %v; want ErrConfig saying %q", tc.kubeconfig, err, tc.want)
		}
	}
}

func TestUnreachableAndBadCredentials(t *testing.T) {
	kube.Require(t)
	cfg, err := clientcmd.LoadFromFile(kube.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, edit func()) string {
		edit()
		p := filepath.Join(t.TempDir(), name)
		if err := clientcmd.WriteToFile(*cfg, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badToken := write("badtoken", func() { cfg.AuthInfos[kubetest.AdminUser].Token = "wrong" })
	src, err := k8s.New(k8s.Config{Kubeconfig: badToken})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Check(context.Background()); !errors.Is(err, k8s.ErrUnreachable) || !strings.Contains(err.Error(), "rejected the credentials") {
		t.Errorf("Check with a wrong token = %v; want ErrUnreachable, rejected the credentials", err)
	}

	closed := write("closed", func() { cfg.Clusters["kubetest"].Server = "https://127.0.0.1:1" })
	src, err = k8s.New(k8s.Config{Kubeconfig: closed})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Check(context.Background()); !errors.Is(err, k8s.ErrUnreachable) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Check against a closed port = %v; want ErrUnreachable, connection refused", err)
	}
}

// TestReportInvalid: a policy meshplane rejects gets a Warning Event with
// the field error, once per distinct error.
func TestReportInvalid(t *testing.T) {
	kube.Require(t)
	ctx := context.Background()
	c := adminClient(t)
	ns := kube.Namespace(t)
	src := newSource(t)
	run(t, src)
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "twice"},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeIngress},
		},
	}
	if _, err := c.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var getErr error
	eventually(t, "invalid policy", func() error {
		_, _, getErr = src.Kinds().Policies.Get(ns + "/twice")
		if getErr == nil {
			return errors.New("Get has no error yet")
		}
		return nil
	})
	// What the control plane does at every reconcile: the same error
	// twice makes one Event; another error makes a second.
	src.ReportInvalid(controlplane.KindPolicy, ns+"/twice", getErr)
	src.ReportInvalid(controlplane.KindPolicy, ns+"/twice", getErr)
	src.ReportInvalid(controlplane.KindPolicy, ns+"/twice", errors.New("second problem"))
	var events []corev1.Event
	eventually(t, "events", func() error {
		l, err := c.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=twice"})
		if err != nil {
			return err
		}
		events = l.Items
		if len(events) < 2 {
			return fmt.Errorf("%d events; want 2", len(events))
		}
		return nil
	})
	// The reporter writes in order: had the repeat been sent, it would
	// be here before the second problem.
	if len(events) != 2 {
		t.Fatalf("%d events; want 2: %+v", len(events), events)
	}
	msgs := events[0].Message + "\n" + events[1].Message
	for _, e := range events {
		if e.Reason != k8s.InvalidReason || e.Type != corev1.EventTypeWarning || e.InvolvedObject.Kind != "NetworkPolicy" {
			t.Errorf("event = %s %s on %s; want Warning %s on the NetworkPolicy", e.Type, e.Reason, e.InvolvedObject.Kind, k8s.InvalidReason)
		}
	}
	if !strings.Contains(msgs, "spec.policyTypes[1]") || !strings.Contains(msgs, "second problem") {
		t.Errorf("event messages = %q; want the field error and the second problem", msgs)
	}
}
