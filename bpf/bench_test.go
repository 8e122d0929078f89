package bpf

import (
	"net/netip"
	"testing"
)

// benchEntries is the size of the ipcache in the benchmarks: a large
// cluster's pods, half IPv4 /32s and half IPv6 /128s.
const benchEntries = 100_000

// benchIPCache returns an empty IPCache big enough for benchEntries and the
// entries.
func benchIPCache(b *testing.B) (*Map[IPCacheKey, IPCacheValue], []IPCacheKey, []IPCacheValue) {
	b.Helper()
	cfg := testConfig(b)
	cfg.IPCacheMax = 128 * 1024
	m := openMaps(b, cfg).IPCache
	keys := make([]IPCacheKey, benchEntries)
	vals := make([]IPCacheValue, benchEntries)
	for i := range keys {
		a := addrN(i)
		keys[i] = IPCacheKeyFor(netip.PrefixFrom(a, a.BitLen()))
		vals[i] = IPCacheValueFor(uint32(i), addrN(i+1), 0)
	}
	return m, keys, vals
}

// reportRate reports entries per second of measured time.
func reportRate(b *testing.B, perOp int) {
	b.ReportMetric(float64(b.N*perOp)/b.Elapsed().Seconds(), "entries/s")
}

// clear empties m, outside the measured time.
func clearMap(b *testing.B, m *Map[IPCacheKey, IPCacheValue], keys []IPCacheKey) {
	b.StopTimer()
	if _, err := m.DeleteBatch(keys); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
}

// BenchmarkIPCachePutBatch fills an empty ipcache with one PutBatch.
func BenchmarkIPCachePutBatch(b *testing.B) {
	m, keys, vals := benchIPCache(b)
	for b.Loop() {
		clearMap(b, m, keys)
		if _, err := m.PutBatch(keys, vals); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, benchEntries)
}

// BenchmarkIPCachePut fills an empty ipcache one Put at a time.
func BenchmarkIPCachePut(b *testing.B) {
	m, keys, vals := benchIPCache(b)
	for b.Loop() {
		clearMap(b, m, keys)
		for i := range keys {
			if err := m.Put(keys[i], vals[i]); err != nil {
				b.Fatal(err)
			}
		}
	}
	reportRate(b, benchEntries)
}

// BenchmarkIPCacheIterate walks a full ipcache, values included.
func BenchmarkIPCacheIterate(b *testing.B) {
	m, keys, vals := benchIPCache(b)
	if _, err := m.PutBatch(keys, vals); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		n := 0
		if err := m.Iterate(func(IPCacheKey, IPCacheValue) bool { n++; return true }); err != nil {
			b.Fatal(err)
		}
		if n != benchEntries {
			b.Fatalf("Iterate saw %d entries, want %d", n, benchEntries)
		}
	}
	reportRate(b, benchEntries)
}
