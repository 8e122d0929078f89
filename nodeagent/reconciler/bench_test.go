package reconciler_test

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/meshplane/meshplane/nodeagent/reconciler"
)

// The benchmarks use key and value types shaped like the ipcache's: an
// LPM key of an IPv6-sized address and a small value.
type ipKey struct {
	PrefixLen uint32
	Addr      [16]byte
}

type ipValue struct {
	Identity uint32
	Tunnel   [4]byte
	Flags    uint8
}

func ipEntry(i int, gen uint32) (ipKey, ipValue) {
	var k ipKey
	k.PrefixLen = 128
	k.Addr[0], k.Addr[1] = 0xfd, 0x00
	binary.BigEndian.PutUint32(k.Addr[12:], uint32(i))
	return k, ipValue{Identity: uint32(i%60000) + 256 + gen, Tunnel: [4]byte{10, 0, byte(i >> 8), byte(i)}}
}

// memTarget is a lean in-memory Target for benchmarks: a map and the
// number of entries written, with no recording.
type memTarget struct {
	mu sync.Mutex
	// mu guards m, puts and deletes.
	m             map[ipKey]ipValue
	puts, deletes int
	written       chan struct{} // 1-buffered; a send after every PutBatch
}

func newMemTarget(n int) *memTarget {
	return &memTarget{m: make(map[ipKey]ipValue, n), written: make(chan struct{}, 1)}
}

func (t *memTarget) PutBatch(keys []ipKey, vals []ipValue) (int, error) {
	t.mu.Lock()
	for i, k := range keys {
		t.m[k] = vals[i]
	}
	t.puts += len(keys)
	t.mu.Unlock()
	select {
	case t.written <- struct{}{}:
	default:
	}
	return len(keys), nil
}

func (t *memTarget) DeleteBatch(keys []ipKey) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, k := range keys {
		delete(t.m, k)
	}
	t.deletes += len(keys)
	return len(keys), nil
}

func (t *memTarget) Iterate(fn func(ipKey, ipValue) bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, v := range t.m {
		if !fn(k, v) {
			break
		}
	}
	return nil
}

func (t *memTarget) writes() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.puts + t.deletes
}

const benchEntries = 100_000

// benchTable returns a table of n entries that is not ready yet.
func benchTable(n int) *reconciler.Table[ipKey, ipValue] {
	table := reconciler.NewTable[ipKey, ipValue]()
	for i := range n {
		table.Set(ipEntry(i, 0))
	}
	return table
}

// runSync measures one start of a reconciler: from MarkReady to Synced.
func runSync(b *testing.B, table *reconciler.Table[ipKey, ipValue], target *memTarget) {
	b.Helper()
	r, err := reconciler.New(table, target, reconciler.Config{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	b.StartTimer()
	table.MarkReady()
	<-r.Synced()
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkInitialSync100k writes 100k desired entries into an empty map.
func BenchmarkInitialSync100k(b *testing.B) {
	b.ReportAllocs()
	b.StopTimer()
	for range b.N {
		table := benchTable(benchEntries)
		target := newMemTarget(benchEntries)
		runSync(b, table, target)
		if n := target.writes(); n != benchEntries {
			b.Fatalf("%d writes, want %d", n, benchEntries)
		}
	}
}

// BenchmarkResync100kUnchanged restarts onto a map that already holds
// the table: it must read and compare 100k entries and write nothing.
func BenchmarkResync100kUnchanged(b *testing.B) {
	b.ReportAllocs()
	b.StopTimer()
	for range b.N {
		table := benchTable(benchEntries)
		target := newMemTarget(benchEntries)
		for i := range benchEntries {
			k, v := ipEntry(i, 0)
			target.m[k] = v
		}
		runSync(b, table, target)
		if n := target.writes(); n != 0 {
			b.Fatalf("%d writes, want none", n)
		}
	}
}

// BenchmarkChangeLatency measures one Set until the map holds it, with
// 100k entries installed.
func BenchmarkChangeLatency(b *testing.B) {
	table := benchTable(benchEntries)
	target := newMemTarget(benchEntries)
	r, err := reconciler.New(table, target, reconciler.Config{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}()
	table.MarkReady()
	<-r.Synced()
	<-target.written // drop the initial sync's signal, if any
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		k, v := ipEntry(i%benchEntries, uint32(i/benchEntries)+1)
		table.Set(k, v)
		<-target.written
	}
}

// BenchmarkTableSet measures Set on a ready table of 100k entries, each
// Set changing a value, with no reconciler taking the changes.
func BenchmarkTableSet(b *testing.B) {
	table := benchTable(benchEntries)
	table.MarkReady()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		table.Set(ipEntry(i%benchEntries, uint32(i/benchEntries)+1))
	}
}

// BenchmarkTableSetParallel is BenchmarkTableSet from GOMAXPROCS writers.
func BenchmarkTableSetParallel(b *testing.B) {
	table := benchTable(benchEntries)
	table.MarkReady()
	b.ReportAllocs()
	b.ResetTimer()
	var next sync.Mutex
	seed := 0
	b.RunParallel(func(pb *testing.PB) {
		next.Lock()
		seed++
		i := seed * 7919
		next.Unlock()
		for pb.Next() {
			i++
			table.Set(ipEntry(i%benchEntries, uint32(i)))
		}
	})
}

// BenchmarkTableLoad100k measures the initial load of 100k entries into a
// table that is not ready yet, as watch caches do at agent start.
func BenchmarkTableLoad100k(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		benchTable(benchEntries)
	}
}
