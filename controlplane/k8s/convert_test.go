package k8s_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshplane/meshplane/controlplane/k8s"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/policy"
	"github.com/meshplane/meshplane/service"
)

func ptr[T any](v T) *T { return &v }

func TestPodFrom(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	base := func() *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", UID: "u-1", Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{
				NodeName: "node-a", ServiceAccountName: "web",
				InitContainers: []corev1.Container{
					{Name: "setup", Ports: []corev1.ContainerPort{{Name: "setup", ContainerPort: 9999}}},
					{Name: "proxy", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 15001}}},
				},
				Containers: []corev1.Container{{Name: "web", Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
					{ContainerPort: 53, Protocol: corev1.ProtocolUDP},
				}}},
			},
			Status: corev1.PodStatus{Phase: corev1.PodRunning},
		}
	}
	want := pod.Pod{
		Namespace: "shop", Name: "web-1", UID: "u-1", Node: "node-a", Labels: map[string]string{"app": "web"},
		ServiceAccount: "web",
		Ports: []pod.Port{
			{Name: "proxy", Port: 15001, Protocol: pod.ProtoTCP},
			{Name: "http", Port: 8080, Protocol: pod.ProtoTCP},
			{Port: 53, Protocol: pod.ProtoUDP},
		},
	}
	got, ok, err := k8s.PodFrom(base())
	if err != nil || !ok || !got.Equal(want) {
		t.Fatalf("PodFrom = %+v, %v, %v; want %+v", got, ok, err, want)
	}

	for _, tc := range []struct {
		name string
		edit func(*corev1.Pod)
	}{
		{"unscheduled", func(p *corev1.Pod) { p.Spec.NodeName = "" }},
		{"host network", func(p *corev1.Pod) { p.Spec.HostNetwork = true }},
		{"succeeded", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }},
		{"failed", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base()
			tc.edit(p)
			if _, ok, err := k8s.PodFrom(p); ok || err != nil {
				t.Fatalf("PodFrom = ok %v, err %v; want no value", ok, err)
			}
		})
	}
	t.Run("invalid", func(t *testing.T) {
		p := base()
		p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{Name: "http", ContainerPort: 8081})
		if _, ok, err := k8s.PodFrom(p); !ok || !errors.Is(err, pod.ErrInvalid) {
			t.Fatalf("PodFrom with a port name twice = ok %v, err %v; want ok and pod.ErrInvalid", ok, err)
		}
	})
}

func TestEndpointsConditions(t *testing.T) {
	slice := &discoveryv1.EndpointSlice{
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, NodeName: ptr("a")}, // unset: ready
			{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}},
			{Addresses: []string{"10.0.0.3"}, Conditions: discoveryv1.EndpointConditions{
				Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}},
		},
	}
	fqdn := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeFQDN,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"example.com"}}}}
	got := k8s.Endpoints([]*discoveryv1.EndpointSlice{slice, fqdn})
	type cond struct{ ready, serving, terminating bool }
	want := map[string]cond{"10.0.0.1": {true, true, false}, "10.0.0.2": {false, false, false}, "10.0.0.3": {false, true, true}}
	if len(got) != len(want) {
		t.Fatalf("Endpoints = %+v; want %d", got, len(want))
	}
	for _, e := range got {
		if c := (cond{e.Ready, e.Serving, e.Terminating}); c != want[e.IP.String()] || e.Ports["http"] != 8080 {
			t.Errorf("%s: %+v; want %+v and http 8080", e.IP, e, want[e.IP.String()])
		}
	}
}

func TestServiceSpec(t *testing.T) {
	local := corev1.ServiceInternalTrafficPolicyLocal
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeNodePort, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10", "fd00::10"},
			Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, NodePort: 30080},
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
			},
			SessionAffinity:       corev1.ServiceAffinityClientIP,
			SessionAffinityConfig: &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr(int32(600))}},
			InternalTrafficPolicy: &local, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
		},
	}
	got, err := k8s.ServiceSpec(s)
	if err != nil {
		t.Fatal(err)
	}
	want := service.Spec{
		Namespace: "shop", Name: "web",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::10")},
		Ports: []service.Port{
			{Name: "http", Protocol: service.TCP, Port: 80, NodePort: 30080},
			{Name: "dns", Protocol: service.UDP, Port: 53},
		},
		SessionAffinity: service.AffinityClientIP, AffinityTimeout: 600 * time.Second,
		InternalTrafficPolicy: service.TrafficLocal, ExternalTrafficPolicy: service.TrafficLocal,
	}
	if !equalSpec(got, want) {
		t.Fatalf("ServiceSpec = %+v\nwant %+v", got, want)
	}

	headless := s.DeepCopy()
	headless.Spec.Type, headless.Spec.ClusterIP, headless.Spec.ClusterIPs = corev1.ServiceTypeClusterIP, "None", []string{"None"}
	svc, ok, err := k8s.ServiceFrom(headless, nil)
	if err != nil || !ok || len(svc.Frontends) != 0 {
		t.Fatalf("headless: %+v, %v, %v; want a service without frontends", svc, ok, err)
	}
	ext := &corev1.Service{ObjectMeta: s.ObjectMeta, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}}
	if _, ok, err := k8s.ServiceFrom(ext, nil); ok || err != nil {
		t.Fatalf("ExternalName: ok %v, err %v; want no value", ok, err)
	}
}

func equalSpec(a, b service.Spec) bool {
	if len(a.ClusterIPs) != len(b.ClusterIPs) || len(a.Ports) != len(b.Ports) {
		return false
	}
	for i := range a.ClusterIPs {
		if a.ClusterIPs[i] != b.ClusterIPs[i] {
			return false
		}
	}
	for i := range a.Ports {
		if a.Ports[i] != b.Ports[i] {
			return false
		}
	}
	a.ClusterIPs, a.Ports, b.ClusterIPs, b.Ports = nil, nil, nil, nil
	return a.Namespace == b.Namespace && a.Name == b.Name && a.SessionAffinity == b.SessionAffinity &&
		a.AffinityTimeout == b.AffinityTimeout && a.InternalTrafficPolicy == b.InternalTrafficPolicy &&
		a.ExternalTrafficPolicy == b.ExternalTrafficPolicy
}

func TestPolicyFrom(t *testing.T) {
	tcp := corev1.ProtocolTCP
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "allow-web", ResourceVersion: "7", UID: "x",
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: ptr(intstr.FromInt32(8080))}},
			}},
		},
	}
	p, err := k8s.PolicyFrom(np)
	if err != nil {
		t.Fatalf("PolicyFrom: %v", err)
	}
	if p.Key() != "shop/allow-web" {
		t.Fatalf("key = %s", p.Key())
	}

	bad := np.DeepCopy()
	bad.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeIngress}
	_, err = k8s.PolicyFrom(bad)
	var pe *k8s.PolicyError
	if !errors.As(err, &pe) || !errors.Is(err, policy.ErrInvalid) {
		t.Fatalf("PolicyFrom(policyTypes twice) = %v; want a *PolicyError wrapping policy.ErrInvalid", err)
	}
	if len(pe.FieldErrors) != 1 || pe.FieldErrors[0].Field != "spec.policyTypes[1]" || !strings.Contains(pe.Error(), "listed twice") {
		t.Fatalf("FieldErrors = %+v (%v); want one at spec.policyTypes[1]", pe.FieldErrors, pe)
	}
}

func TestNodeFrom(t *testing.T) {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeHostName, Address: "node-a"},
			{Type: corev1.NodeInternalIP, Address: "10.1.0.5"},
			{Type: corev1.NodeInternalIP, Address: "fd00::5"},
			{Type: corev1.NodeExternalIP, Address: "192.0.2.5"},
		}},
	}
	want := k8s.Node{Name: "node-a",
		InternalIPs: []netip.Addr{netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("fd00::5")},
		ExternalIPs: []netip.Addr{netip.MustParseAddr("192.0.2.5")}}
	if got := k8s.NodeFrom(n); !got.Equal(want) {
		t.Fatalf("NodeFrom = %+v; want %+v", got, want)
	}
}
