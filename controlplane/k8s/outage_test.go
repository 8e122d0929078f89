package k8s_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/controlplane/k8s"
	"github.com/meshplane/meshplane/kubetest"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// TestAPIServerOutage: the API server goes away while the control plane
// runs. The control plane keeps running and deletes nothing (what agents
// read stays as it was); a pod deleted during the outage (removed from
// the API server's storage while it is down) is cleaned up from etcd once
// the API server is back, and what still exists is not rewritten.
func TestAPIServerOutage(t *testing.T) {
	kube.Require(t)
	ctx := context.Background()
	// An apiserver of its own, to kill and restart.
	srv := kubetest.Start(t, []string{kube.Etcd.Endpoint()})
	rc := restConfig(t, srv.Kubeconfig)
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	src, err := k8s.New(k8s.Config{REST: rc})
	if err != nil {
		t.Fatal(err)
	}
	client := kube.Etcd.Client(t)
	cluster := etcdtest.Cluster(t)
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.New(controlplane.Config{Client: client, Cluster: cluster, ClusterID: 1, Source: src, GCInterval: -1})
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

	ns := srv.Namespace(t)
	newPod := func(name string) {
		t.Helper()
		if _, err := c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
			Spec:       corev1.PodSpec{NodeName: "node-outage", Containers: []corev1.Container{{Name: "c", Image: "c"}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	version := func(name string) int64 {
		t.Helper()
		resp, err := client.Etcd().Get(ctx, keys.Pod("node-outage", ns, name))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return 0
		}
		return resp.Kvs[0].Version
	}
	newPod("stays")
	newPod("goes")
	eventually(t, "pods in etcd", func() error {
		if version("stays") == 0 || version("goes") == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	_, rev, err := client.List(ctx, keys.Prefix())
	if err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	// While it is down the pod goes from the API server's storage, as if
	// deleted by someone whose apiserver still ran.
	if err := client.Delete(ctx, srv.EtcdPrefix+"/pods/"+ns+"/goes"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("control plane stopped during the outage: %v", err)
	default:
	}
	kvs, _, err := client.List(ctx, keys.Prefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		if kv.ModRevision > rev {
			t.Errorf("%s written during the outage", kv.Key)
		}
	}
	if version("goes") == 0 || version("stays") == 0 {
		t.Fatal("a pod key went during the outage")
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the pod deleted during the outage cleaned up", func() error {
		if v := version("goes"); v != 0 {
			return fmt.Errorf("pods/node-outage/%s/goes still there", ns)
		}
		return nil
	})
	newPod("after")
	eventually(t, "a pod created after the outage", func() error {
		if version("after") == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	if v := version("stays"); v != 1 {
		t.Errorf("the pod that stayed has version %d; want 1 (not rewritten)", v)
	}
}
