package controlplane

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// BenchmarkPodBurst: a leader that is already syncing receives b.N×1000
// pod creations as fast as the source can notify; the time is until the
// last of them is in etcd. It reports pods/s and the p99 of the lag from
// notification to write (meshplane_controlplane_lag_seconds).
func BenchmarkPodBurst(b *testing.B) {
	const perOp = 1000
	cluster := etcdtest.Cluster(b)
	keys, _ := kvstore.NewKeys(cluster)
	client := srv.Client(b)
	src := newFakeSource()
	cp, err := New(Config{Client: srv.Client(b), Cluster: cluster, ClusterID: 1, Source: src, GCInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for !cp.leading.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	b.ResetTimer()
	start := time.Now()
	total := b.N * perOp
	for i := range total {
		p := testPod(i, fmt.Sprintf("node-%d", i%50), map[string]string{"app": "web"})
		src.pods.set(p.Owner(), p, nil)
	}
	for {
		kvs, _, err := client.List(ctx, keys.PodsPrefix())
		if err != nil {
			b.Fatal(err)
		}
		if len(kvs) == total {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(total)/time.Since(start).Seconds(), "pods/s")
}
