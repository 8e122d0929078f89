package k8s_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/controlplane/k8s"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/service"
)

// TestControlPlaneOverKubernetes runs the control plane on this Source:
// objects created in the apiserver reach etcd as the agents read them,
// and a policy meshplane rejects gets its Warning Event instead.
func TestControlPlaneOverKubernetes(t *testing.T) {
	kube.Require(t)
	ctx := context.Background()
	c := adminClient(t)
	client := kube.Etcd.Client(t)
	cluster := etcdtest.Cluster(t)
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.New(controlplane.Config{Client: client, Cluster: cluster, ClusterID: 1, Source: newSource(t), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cp.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("control plane Run = %v", err)
		}
	})

	ns := kube.Namespace(t)
	if _, err := c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "node-e2e", Containers: []corev1.Container{{Name: "web", Image: "web:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: "web-1", Labels: map[string]string{k8s.ServiceNameLabel: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.9.10"}, NodeName: ptr("node-e2e")}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "twice"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{"Ingress", "Ingress"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	eventually(t, "pod in etcd", func() error {
		kv, ok, err := client.Get(ctx, keys.NodePodsPrefix("node-e2e")+ns+"/web")
		if err != nil || !ok {
			return fmt.Errorf("get: ok %v, %w", ok, err)
		}
		p, err := pod.Decode("node-e2e/"+ns+"/web", kv.Value)
		if err != nil || p.Labels["app"] != "web" || len(p.Ports) != 1 || p.Ports[0].Name != "http" {
			return fmt.Errorf("pod = %+v, %w", p, err)
		}
		return nil
	})
	eventually(t, "service in etcd", func() error {
		kv, ok, err := client.Get(ctx, keys.ServicesPrefix()+ns+"/web")
		if err != nil || !ok {
			return fmt.Errorf("get: ok %v, %w", ok, err)
		}
		s, err := service.Decode(ns+"/web", kv.Value)
		if err != nil || len(s.Frontends) != 1 || s.Frontends[0].Address.Addr().String() != svc.Spec.ClusterIP ||
			len(s.Frontends[0].Backends) != 1 || s.Frontends[0].Backends[0].Address.String() != "10.244.9.10:8080" {
			return fmt.Errorf("service = %+v, %w", s, err)
		}
		return nil
	})
	eventually(t, "event on the rejected policy", func() error {
		l, err := c.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=twice"})
		if err != nil {
			return err
		}
		if len(l.Items) == 0 || l.Items[0].Reason != k8s.InvalidReason {
			return fmt.Errorf("events = %+v", l.Items)
		}
		return nil
	})
	if _, ok, err := client.Get(ctx, keys.PoliciesPrefix()+ns+"/twice"); ok || err != nil {
		t.Errorf("the rejected policy is in etcd (ok %v, err %v)", ok, err)
	}
}
