package bpf

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
)

// randomPrefixes returns n distinct masked prefixes of random lengths, IPv4
// and IPv6, many nested in others, as ipcache keys and values (identity i+1).
func randomPrefixes(seed uint64, n int) ([]IPCacheKey, []IPCacheValue) {
	r := rand.New(rand.NewPCG(seed, seed))
	seen := make(map[IPCacheKey]bool)
	var keys []IPCacheKey
	var vals []IPCacheValue
	for len(keys) < n {
		var a netip.Addr
		if r.IntN(2) == 0 {
			// A small space, so that prefixes nest.
			a = netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
		} else {
			var b [16]byte
			b[0], b[1], b[2], b[15] = 0xfd, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))
			a = netip.AddrFrom16(b)
		}
		k := IPCacheKeyFor(netip.PrefixFrom(a, r.IntN(a.BitLen()+1)))
		if seen[k] {
			continue
		}
		seen[k] = true
		keys = append(keys, k)
		vals = append(vals, IPCacheValueFor(uint32(len(keys)), netip.Addr{}, 0))
	}
	return keys, vals
}

// TestLPMWalkOrder checks lpmLess against the kernel: walking a trie of
// nested prefixes with BPF_MAP_GET_NEXT_KEY returns every key once, in
// exactly the order lpmLess sorts them.
func TestLPMWalkOrder(t *testing.T) {
	m := openMaps(t, testConfig(t)).IPCache
	keys, vals := randomPrefixes(1, 1000)
	if _, err := m.PutBatch(keys, vals); err != nil {
		t.Fatal(err)
	}
	var walk []IPCacheKey
	var cursor any
	for {
		var next IPCacheKey
		err := m.do(func(em *ebpf.Map) error { return em.NextKey(cursor, &next) })
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		walk = append(walk, next)
		cursor = &walk[len(walk)-1]
	}
	sorted := slices.Clone(keys)
	slices.SortFunc(sorted, func(a, b IPCacheKey) int {
		switch {
		case lpmLess(keyBytes(&a), keyBytes(&b)):
			return -1
		case lpmLess(keyBytes(&b), keyBytes(&a)):
			return 1
		}
		t.Fatalf("lpmLess: %v and %v are neither less than the other", a, b)
		return 0
	})
	if !slices.Equal(walk, sorted) {
		for i := range min(len(walk), len(sorted)) {
			if walk[i] != sorted[i] {
				t.Fatalf("kernel walk differs from lpmLess at %d of %d/%d: kernel %v, lpmLess %v", i, len(walk), len(sorted), walk[i], sorted[i])
			}
		}
		t.Fatalf("kernel walk has %d keys, lpmLess %d", len(walk), len(sorted))
	}
}

func TestLPMLess(t *testing.T) {
	p := func(s string) []byte {
		k := IPCacheKeyFor(netip.MustParsePrefix(s))
		return slices.Clone(keyBytes(&k))
	}
	// In the kernel's walk order: more specific first, child 0 before
	// child 1 (lpm_trie.c's own example, then the families).
	order := []string{"192.168.0.0/24", "192.168.1.0/24", "192.168.128.0/24", "192.168.0.0/16", "0.0.0.0/0", "fd00::/16", "::/0"}
	for i := range order {
		for j := range order {
			if got := lpmLess(p(order[i]), p(order[j])); got != (i < j) {
				t.Errorf("lpmLess(%s, %s) = %v", order[i], order[j], got)
			}
		}
	}
}

// TestIterateNestedWhileDeleting: concurrent deletes on a trie of nested
// prefixes. Every survivor is reported once with its own value, never the
// value of a shorter prefix that an LPM lookup of a vanished key returns.
func TestIterateNestedWhileDeleting(t *testing.T) {
	cfg := testConfig(t)
	m := openMaps(t, cfg).IPCache
	other, err := OpenPinned[IPCacheKey, IPCacheValue](m.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for round := range 5 {
		keys, vals := randomPrefixes(uint64(round)+10, 1000)
		if _, err := m.PutBatch(keys, vals); err != nil {
			t.Fatal(err)
		}
		want := make(map[IPCacheKey]IPCacheValue)
		for i := range keys {
			want[keys[i]] = vals[i]
		}
		var victims []IPCacheKey
		for k := range dump(t, m) {
			if want[k].Identity%3 != 0 {
				victims = append(victims, k)
			}
		}
		// In walk order, so that the deleter keeps hitting the walk's key.
		slices.SortFunc(victims, func(a, b IPCacheKey) int {
			if lpmLess(keyBytes(&a), keyBytes(&b)) {
				return -1
			}
			return 1
		})
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := other.DeleteBatch(victims[:len(victims)/2]); err != nil {
				t.Errorf("DeleteBatch: %v", err)
			}
			for _, k := range victims[len(victims)/2:] {
				if _, err := other.Delete(k); err != nil {
					t.Errorf("Delete: %v", err)
				}
			}
		})
		got := make(map[IPCacheKey]IPCacheValue)
		err := m.Iterate(func(k IPCacheKey, v IPCacheValue) bool {
			if _, dup := got[k]; dup {
				t.Errorf("%v reported twice", k)
			}
			got[k] = v
			return true
		})
		wg.Wait()
		if err != nil {
			t.Fatalf("Iterate: %v", err)
		}
		for k, v := range got {
			if want[k] != v {
				t.Fatalf("round %d: %v reported with %v; its value is %v", round, k, v, want[k])
			}
		}
		for k, v := range want {
			if v.Identity%3 == 0 && got[k] != v {
				t.Fatalf("round %d: survivor %v not reported", round, k)
			}
		}
		if _, err := m.DeleteBatch(keys); err != nil {
			t.Fatal(err)
		}
	}
}

// TestIterateResumeCatchUp: fn inserts a key just before the one the walk
// is about to reach and deletes that one. The walk resumes from the key it
// stands on, finds the inserted key behind it, and catches up from there
// without reporting it or anything twice.
func TestIterateResumeCatchUp(t *testing.T) {
	m := openMaps(t, testConfig(t)).IPCache
	key := func(i int) IPCacheKey {
		return IPCacheLookupKey(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	const n = 400 // keys 0, 2, 4, ...; the walk meets them in address order
	for i := 0; i < n; i += 2 {
		if err := m.Put(key(i), IPCacheValueFor(uint32(i)+1, netip.Addr{}, 0)); err != nil {
			t.Fatal(err)
		}
	}
	seen := make(map[IPCacheKey]bool)
	err := m.Iterate(func(k IPCacheKey, v IPCacheValue) bool {
		if seen[k] {
			t.Errorf("%v reported twice", k)
		}
		seen[k] = true
		i := int(v.Identity) - 1
		if i%4 != 0 {
			t.Errorf("reported %v (key %d); want only multiples of 4", k, i)
		}
		if i+2 < n {
			if err := m.Put(key(i+1), IPCacheValueFor(uint32(i+1)+1, netip.Addr{}, 0)); err != nil {
				t.Error(err)
			}
			if _, err := m.Delete(key(i + 2)); err != nil {
				t.Error(err)
			}
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != n/4 {
		t.Errorf("reported %d keys; want %d", len(seen), n/4)
	}
}

// TestIterateHashSmallBatches: batch lookups smaller than a hash bucket make
// the kernel say ENOSPC; Iterate grows the batch and goes on.
func TestIterateHashSmallBatches(t *testing.T) {
	m := openMaps(t, testConfig(t)).Endpoints
	m.lookupChunk = 1
	c := allMaps[1].(mapCase[EndpointKey, EndpointValue])
	keys, vals, want := c.entries(0, 1000, 0)
	if _, err := m.PutBatch(keys, vals); err != nil {
		t.Fatal(err)
	}
	if got := dump(t, m); diffEntries(got, want) != "[]" {
		t.Fatalf("Iterate with batches of 1: %s", diffEntries(got, want))
	}
}

// TestIterateTrailExhausted: fn deletes the key the walk is about to reach
// and every recent key it could resume from. The walk catches up from the
// first key, reports every remaining key once, and, when that catch-up
// takes more steps than the map's budget allows, fails with
// ErrIterationAborted instead of looping.
func TestIterateTrailExhausted(t *testing.T) {
	for _, abort := range []bool{false, true} {
		cfg := testConfig(t)
		cfg.IPCacheMax = 4096
		m := openMaps(t, cfg).IPCache
		const n, at = 3000, 2000 // at: where fn deletes
		keys := make([]IPCacheKey, n)
		vals := make([]IPCacheValue, n)
		for i := range n {
			keys[i] = IPCacheLookupKey(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
			vals[i] = IPCacheValueFor(uint32(i)+1, netip.Addr{}, 0)
		}
		if _, err := m.PutBatch(keys, vals); err != nil {
			t.Fatal(err)
		}
		if abort {
			m.maxEntries = 0 // a budget of 1024 wasted steps; the catch-up takes about 2000
		}
		seen := make(map[IPCacheKey]bool)
		err := m.Iterate(func(k IPCacheKey, v IPCacheValue) bool {
			if seen[k] {
				t.Errorf("%v reported twice", k)
			}
			seen[k] = true
			if v.Identity-1 == at {
				if _, err := m.DeleteBatch(keys[at-lpmTrail-4 : at+2]); err != nil {
					t.Error(err)
				}
			}
			return true
		})
		if abort {
			if !errors.Is(err, ErrIterationAborted) {
				t.Fatalf("Iterate with a tiny budget = %v; want ErrIterationAborted", err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for i, k := range keys {
			if want := i <= at || i >= at+2; seen[k] != want {
				t.Errorf("key %d (%v): reported %v, want %v", i, k, seen[k], want)
			}
		}
	}
}
