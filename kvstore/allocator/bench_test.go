package allocator

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/labels"
)

// BenchmarkAllocateKnown: a label set this node already holds is resolved
// from memory, with no etcd round trip.
func BenchmarkAllocateKnown(b *testing.B) {
	cluster := etcdtest.Cluster(b)
	ag := startAgent(b, cluster, "bench", func(c *Config) {
		f, _ := labels.NewFilter(labels.DefaultFilterPatterns())
		c.Filter = f
	})
	ctx := context.Background()
	s := set(b, "k8s:app=web,k8s:io.kubernetes.pod.namespace=shop,k8s:tier=front,k8s:version=v2")
	if _, err := ag.alloc.Allocate(ctx, s); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := ag.alloc.Allocate(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAllocateNew: new label sets from 64 concurrent callers on one
// node, coalesced into batches. Reports transactions per identity.
func BenchmarkAllocateNew(b *testing.B) {
	cluster := etcdtest.Cluster(b)
	ag := startAgent(b, cluster, "bench", nil)
	ctx := context.Background()
	b.SetParallelism(32)
	var seq atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s := labels.MustNewSet(labels.Label{Source: "k8s", Key: "app", Value: fmt.Sprintf("new-%d", seq.Add(1))})
			if _, err := ag.alloc.Allocate(ctx, s); err != nil {
				b.Error(err)
				return
			}
		}
	})
	st := ag.alloc.Stats()
	if st.Created > 0 {
		b.ReportMetric(float64(st.Txns)/float64(st.Created), "txns/identity")
	}
}

// BenchmarkCacheMemory100k: heap held by the identity cache for 100,000
// identities (two clusters' worth, as a meshed agent would hold).
func BenchmarkCacheMemory100k(b *testing.B) {
	const n = 100_000
	cluster := etcdtest.Cluster(b)
	keys := mustKeys(b, cluster)
	c := srv.Client(b)
	ctx := context.Background()
	ops := make([]clientv3.Op, 0, 1000)
	for i := range n {
		id, _ := identity.New(identity.ClusterID(1+i/identity.LocalCount), identity.MinLocal+i%identity.LocalCount)
		v := fmt.Sprintf("k8s:app=app-%d,k8s:io.kubernetes.pod.namespace=ns-%d,k8s:tier=tier-%d", i, i%50, i%3)
		ops = append(ops, clientv3.OpPut(keys.IdentityID(id.String()), v))
		if len(ops) == cap(ops) {
			if _, err := c.Etcd().Txn(ctx).Then(ops...).Commit(); err != nil {
				b.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	b.ResetTimer()
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		cache, err := kvstore.NewCache(c, kvstore.CacheConfig[labels.Set]{Prefix: keys.IdentityIDPrefix(), Decode: DecodeIdentity})
		if err != nil {
			b.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- cache.Run(rctx) }()
		if err := cache.WaitSynced(ctx); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if cache.Len() != n {
			b.Fatalf("cache holds %d, want %d", cache.Len(), n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc), "heap-bytes/100k")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-bytes/identity")
		runtime.KeepAlive(cache)
		cancel()
		<-done
	}
}
