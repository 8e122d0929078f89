package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/meshplane/meshplane/cmd/mesh-controlplane/cpcmd"
	"github.com/meshplane/meshplane/kubetest"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/service"
)

var kube *kubetest.Server

func TestMain(m *testing.M) { os.Exit(kubetest.RunMain(m, &kube)) }

// TestKubernetesToEtcd runs mesh-controlplane as main wires it against a
// real kube-apiserver: a namespace, a scheduled pod, a service and its
// EndpointSlice created there reach etcd as pod metadata, namespace labels
// and a service with its backend.
func TestKubernetesToEtcd(t *testing.T) {
	kube.Require(t)
	cluster := etcdtest.Cluster(t)
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	client := kube.Etcd.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- cpcmd.Main(ctx, []string{
			"--cluster-name", cluster, "--etcd-endpoints", kube.Etcd.Endpoint(),
			"--kubeconfig", kube.Kubeconfig, "--metrics-address", "", "--lease-ttl", "2s",
		}, io.Discard, kubeSource)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("mesh-controlplane exited %d", code)
		}
	}()

	ns := kube.Namespace(t)
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	create := func(path string, obj map[string]any) {
		t.Helper()
		if err := kube.Create(cctx, path, obj); err != nil {
			t.Fatal(err)
		}
	}
	meta := func(name string, labels map[string]string) map[string]any {
		return map[string]any{"name": name, "namespace": ns, "labels": labels}
	}
	create("/api/v1/namespaces/"+ns+"/pods", map[string]any{
		"apiVersion": "v1", "kind": "Pod", "metadata": meta("web-1", map[string]string{"app": "web"}),
		"spec": map[string]any{"nodeName": "node-1", "containers": []any{map[string]any{
			"name": "c", "image": "example", "ports": []any{map[string]any{"name": "http", "containerPort": 8080}},
		}}},
	})
	create("/api/v1/namespaces/"+ns+"/services", map[string]any{
		"apiVersion": "v1", "kind": "Service", "metadata": meta("web", nil),
		"spec": map[string]any{"selector": map[string]string{"app": "web"},
			"ports": []any{map[string]any{"name": "http", "port": 80, "targetPort": 8080}}},
	})
	create("/apis/discovery.k8s.io/v1/namespaces/"+ns+"/endpointslices", map[string]any{
		"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
		"metadata":    meta("web-abc", map[string]string{"kubernetes.io/service-name": "web"}),
		"addressType": "IPv4",
		"endpoints": []any{map[string]any{"addresses": []string{"10.0.0.5"}, "nodeName": "node-1",
			"conditions": map[string]any{"ready": true, "serving": true, "terminating": false}}},
		"ports": []any{map[string]any{"name": "http", "port": 8080, "protocol": "TCP"}},
	})

	deadline := time.Now().Add(30 * time.Second)
	for {
		msg := check(ctx, client, keys, ns)
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd after 30s: %s", msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// check says what etcd lacks, or "".
func check(ctx context.Context, c *kvstore.Client, keys kvstore.Keys, ns string) string {
	kv, ok, err := c.Get(ctx, keys.Pod("node-1", ns, "web-1"))
	if err != nil || !ok {
		return fmt.Sprintf("pod: %v %v", ok, err)
	}
	p, err := pod.Decode("node-1/"+ns+"/web-1", kv.Value)
	if err != nil || p.Labels["app"] != "web" || len(p.Ports) != 1 || p.Ports[0].Name != "http" {
		return fmt.Sprintf("pod %+v, %v", p, err)
	}
	if _, ok, err := c.Get(ctx, keys.Namespace(ns)); err != nil || !ok {
		return fmt.Sprintf("namespace: %v %v", ok, err)
	}
	kv, ok, err = c.Get(ctx, keys.Service(ns, "web"))
	if err != nil || !ok {
		return fmt.Sprintf("service: %v %v", ok, err)
	}
	s, err := service.Decode(ns+"/web", kv.Value)
	if err != nil || len(s.Frontends) != 1 || len(s.Frontends[0].Backends) != 1 ||
		s.Frontends[0].Backends[0].Address.String() != "10.0.0.5:8080" || s.Frontends[0].Backends[0].Node != "node-1" {
		return fmt.Sprintf("service %+v, %v", s, err)
	}
	return ""
}
