package bpf

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
)

// mapCase is one of the agent's maps with a way to make entries for it, so
// that one set of tests runs against all five.
type mapCase[K, V comparable] struct {
	name string
	pick func(*Maps) *Map[K, V]
	// entry returns the i-th test entry; keys differ for different i, and
	// gen changes only the value. Keys are full-length on LPM tries, so
	// that no entry contains another.
	entry func(i int, gen uint32) (K, V)
}

// mapTests are the tests every mapCase runs.
type mapTests interface {
	caseName() string
	roundTrip(t *testing.T)
	batch(t *testing.T)
	full(t *testing.T)
	iterateWhileDeleting(t *testing.T)
	iterateDeletingAhead(t *testing.T)
}

// addrN returns a distinct address for each i: IPv4 for even i, IPv6 for
// odd, so that every map holds both families.
func addrN(i int) netip.Addr {
	if i%2 == 0 {
		return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	var b [16]byte
	b[0], b[1] = 0xfd, 0x00
	binary.BigEndian.PutUint32(b[12:], uint32(i))
	return netip.AddrFrom16(b)
}

var allMaps = []mapTests{
	mapCase[IPCacheKey, IPCacheValue]{
		name: "ipcache",
		pick: func(ms *Maps) *Map[IPCacheKey, IPCacheValue] { return ms.IPCache },
		entry: func(i int, gen uint32) (IPCacheKey, IPCacheValue) {
			a := addrN(i)
			return IPCacheKeyFor(netip.PrefixFrom(a, a.BitLen())),
				IPCacheValueFor(uint32(i)+gen, addrN(i+1), IPCacheFlags(i%2))
		},
	},
	mapCase[EndpointKey, EndpointValue]{
		name: "endpoints",
		pick: func(ms *Maps) *Map[EndpointKey, EndpointValue] { return ms.Endpoints },
		entry: func(i int, gen uint32) (EndpointKey, EndpointValue) {
			return EndpointKeyFor(addrN(i)), EndpointValue{
				EndpointID: uint32(i) + 1,
				IfIndex:    uint32(i) + 2,
				Identity:   uint32(i) + gen,
				Flags:      EndpointFlags(i % 4),
				PodMAC:     [6]byte{2, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)},
				NodeMAC:    [6]byte{2, 1, 0, byte(i >> 16), byte(i >> 8), byte(i)},
			}
		},
	},
	mapCase[PolicyKey, PolicyValue]{
		name: "policy",
		pick: func(ms *Maps) *Map[PolicyKey, PolicyValue] { return ms.Policy },
		entry: func(i int, gen uint32) (PolicyKey, PolicyValue) {
			dir := Ingress
			if i%2 == 1 {
				dir = Egress
			}
			k := PolicyLookupKey(uint32(i/1000)+1, dir, uint32(i), ProtoTCP, uint16(i%60000)+1)
			return k, PolicyValue{Verdict: Verdict(i%2 + 1), Cookie: uint32(i) + gen}
		},
	},
	mapCase[ServiceKey, ServiceValue]{
		name: "services",
		pick: func(ms *Maps) *Map[ServiceKey, ServiceValue] { return ms.Services },
		entry: func(i int, gen uint32) (ServiceKey, ServiceValue) {
			fe := netip.AddrPortFrom(addrN(i/4), 80)
			slot := uint16(i % 4)
			if slot == 0 {
				return ServiceKeyFor(fe, ProtoTCP, 0), ServiceEntry(uint32(i/4)+1, 3+uint16(gen))
			}
			return ServiceKeyFor(fe, ProtoTCP, slot), BackendSlot(uint32(i/4)+1, uint32(i)+gen)
		},
	},
	mapCase[BackendKey, BackendValue]{
		name: "backends",
		pick: func(ms *Maps) *Map[BackendKey, BackendValue] { return ms.Backends },
		entry: func(i int, gen uint32) (BackendKey, BackendValue) {
			return BackendKey{ID: uint32(i) + 1},
				BackendValueFor(netip.AddrPortFrom(addrN(i), 8080+uint16(gen)), ProtoUDP, BackendFlags(i%2))
		},
	},
}

func (c mapCase[K, V]) caseName() string { return c.name }

// entries returns test entries first..first+n-1 as slices and as a map.
func (c mapCase[K, V]) entries(first, n int, gen uint32) ([]K, []V, map[K]V) {
	keys, vals, want := make([]K, n), make([]V, n), make(map[K]V, n)
	for i := range n {
		keys[i], vals[i] = c.entry(first+i, gen)
		want[keys[i]] = vals[i]
	}
	return keys, vals, want
}

func TestMaps(t *testing.T) {
	for _, c := range allMaps {
		t.Run(c.caseName(), func(t *testing.T) {
			t.Parallel()
			t.Run("RoundTrip", c.roundTrip)
			t.Run("Batch", c.batch)
			t.Run("Full", c.full)
			t.Run("IterateWhileDeleting", c.iterateWhileDeleting)
			t.Run("IterateDeletingAhead", c.iterateDeletingAhead)
		})
	}
}

// roundTrip: Put, Lookup, replace, Count, Iterate, Delete, for IPv4 and
// IPv6 entries.
func (c mapCase[K, V]) roundTrip(t *testing.T) {
	m := c.pick(openMaps(t, testConfig(t)))
	const n = 64
	keys, vals, want := c.entries(0, n, 0)
	for i := range keys {
		if err := m.Put(keys[i], vals[i]); err != nil {
			t.Fatalf("Put(%v): %v", keys[i], err)
		}
	}
	for i, k := range keys {
		v, ok, err := m.Lookup(k)
		if err != nil || !ok || v != vals[i] {
			t.Fatalf("Lookup(%v) = %v, %v, %v; want %v, true, nil", k, v, ok, err, vals[i])
		}
	}
	// Replacing a value keeps one entry per key.
	k0, v0 := c.entry(0, 7)
	if err := m.Put(k0, v0); err != nil {
		t.Fatalf("Put(%v) again: %v", k0, err)
	}
	want[k0] = v0
	if v, ok, err := m.Lookup(k0); err != nil || !ok || v != v0 {
		t.Fatalf("Lookup(%v) after replace = %v, %v, %v; want %v", k0, v, ok, err, v0)
	}
	if got := dump(t, m); diffEntries(got, want) != "[]" {
		t.Fatalf("Iterate: %s", diffEntries(got, want))
	}
	if cnt, err := m.Count(); err != nil || cnt != n {
		t.Fatalf("Count = %d, %v; want %d", cnt, err, n)
	}
	for i := 0; i < n; i += 2 {
		if ok, err := m.Delete(keys[i]); err != nil || !ok {
			t.Fatalf("Delete(%v) = %v, %v; want true, nil", keys[i], ok, err)
		}
		delete(want, keys[i])
	}
	if ok, err := m.Delete(keys[0]); err != nil || ok {
		t.Fatalf("Delete(%v) of a deleted key = %v, %v; want false, nil", keys[0], ok, err)
	}
	if v, ok, err := m.Lookup(keys[0]); err != nil || ok {
		t.Fatalf("Lookup(%v) of a deleted key = %v, %v, %v; want false", keys[0], v, ok, err)
	}
	if got := dump(t, m); diffEntries(got, want) != "[]" {
		t.Fatalf("Iterate after Delete: %s", diffEntries(got, want))
	}
	if cnt, err := m.Count(); err != nil || cnt != n/2 {
		t.Fatalf("Count after Delete = %d, %v; want %d", cnt, err, n/2)
	}
	// Stopping early is honored.
	seen := 0
	if err := m.Iterate(func(K, V) bool { seen++; return seen < 3 }); err != nil || seen != 3 {
		t.Fatalf("Iterate stopping after 3: saw %d, err %v", seen, err)
	}
}

// batch: PutBatch and DeleteBatch of 10k entries give what Put and Delete
// one by one give, through the kernel's batch operations and through the
// fallback.
func (c mapCase[K, V]) batch(t *testing.T) {
	const n = 10000
	size := func() Config {
		cfg := testConfig(t)
		cfg.IPCacheMax, cfg.EndpointsMax, cfg.PolicyMax, cfg.ServicesMax, cfg.BackendsMax = 16384, 16384, 16384, 16384, 16384
		return cfg
	}
	batch := c.pick(openMaps(t, size()))
	single := c.pick(openMaps(t, size()))
	fallback := c.pick(openMaps(t, size()))
	fallback.batchUpdate.Store(batchNo)
	fallback.batchDelete.Store(batchNo)

	keys, vals, want := c.entries(0, n, 0)
	for _, m := range []*Map[K, V]{batch, fallback} {
		if got, err := m.PutBatch(keys, vals); err != nil || got != n {
			t.Fatalf("%s: PutBatch = %d, %v; want %d, nil", m.Path(), got, err, n)
		}
	}
	if st := batch.batchUpdate.Load(); st != batchYes {
		t.Errorf("BPF_MAP_UPDATE_BATCH on %s: state %d; want %d (supported): the fallback ran", batch.Name(), st, batchYes)
	}
	for i := range keys {
		if err := single.Put(keys[i], vals[i]); err != nil {
			t.Fatalf("Put: %v", err)
		}
	}
	for _, m := range []*Map[K, V]{batch, single, fallback} {
		if got := dump(t, m); diffEntries(got, want) != "[]" {
			t.Fatalf("%s after puts: %s", m.Path(), diffEntries(got, want))
		}
	}

	// Delete every other of the first half, plus keys that were never
	// there, which are skipped.
	var del []K
	for i := 0; i < n/2; i += 2 {
		del = append(del, keys[i])
		delete(want, keys[i])
		if i%100 == 0 {
			k, _ := c.entry(n+i, 0)
			del = append(del, k)
		}
	}
	for _, m := range []*Map[K, V]{batch, fallback} {
		if got, err := m.DeleteBatch(del); err != nil || got != n/4 {
			t.Fatalf("%s: DeleteBatch = %d, %v; want %d, nil", m.Path(), got, err, n/4)
		}
	}
	if st := batch.batchDelete.Load(); st != batchYes {
		t.Errorf("BPF_MAP_DELETE_BATCH on %s: state %d; want %d (supported): the fallback ran", batch.Name(), st, batchYes)
	}
	t.Logf("%s: kernel batch update and delete supported", batch.Name())
	for _, k := range del {
		if _, err := single.Delete(k); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	for _, m := range []*Map[K, V]{batch, single, fallback} {
		if got := dump(t, m); diffEntries(got, want) != "[]" {
			t.Fatalf("%s after deletes: %s", m.Path(), diffEntries(got, want))
		}
		if cnt, err := m.Count(); err != nil || cnt != len(want) {
			t.Fatalf("%s: Count = %d, %v; want %d", m.Path(), cnt, err, len(want))
		}
	}
	// Deleting them again deletes nothing.
	if got, err := batch.DeleteBatch(del); err != nil || got != 0 {
		t.Fatalf("DeleteBatch of deleted keys = %d, %v; want 0, nil", got, err)
	}
	if got, err := batch.PutBatch(nil, nil); err != nil || got != 0 {
		t.Fatalf("PutBatch(nil) = %d, %v", got, err)
	}
	if _, err := batch.PutBatch(keys[:2], vals[:1]); err == nil {
		t.Fatal("PutBatch with 2 keys and 1 value succeeded")
	}
}

// full: a map of 8 entries takes 8, then says ErrMapFull with its name,
// through the batch and the fallback, and still lets values be replaced.
func (c mapCase[K, V]) full(t *testing.T) {
	const max = 8
	for _, useBatch := range []bool{true, false} {
		cfg := testConfig(t)
		cfg.IPCacheMax, cfg.EndpointsMax, cfg.PolicyMax, cfg.ServicesMax, cfg.BackendsMax = max, max, max, max, max
		m := c.pick(openMaps(t, cfg))
		if !useBatch {
			m.batchUpdate.Store(batchNo)
		}
		keys, vals, _ := c.entries(0, max+2, 0)
		n, err := m.PutBatch(keys, vals)
		if !errors.Is(err, ErrMapFull) || n != max {
			t.Fatalf("PutBatch of %d into a map of %d (batch %v) = %d, %v; want %d, ErrMapFull", max+2, max, useBatch, n, err, max)
		}
		for _, want := range []string{m.Name(), "maximum of 8 entries", "Config."} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("ErrMapFull message %q does not say %q", err, want)
			}
		}
		if err := m.Put(keys[max+1], vals[max+1]); !errors.Is(err, ErrMapFull) || !strings.Contains(err.Error(), m.Name()) {
			t.Fatalf("Put into a full map = %v; want ErrMapFull naming %s", err, m.Name())
		}
		k, v := c.entry(0, 9)
		if err := m.Put(k, v); err != nil {
			t.Fatalf("replacing a value in a full map: %v", err)
		}
		if cnt, err := m.Count(); err != nil || cnt != max {
			t.Fatalf("Count of a full map = %d, %v; want %d", cnt, err, max)
		}
	}
}

// iterateWhileDeleting: while another descriptor of the map (as another
// process would) deletes half the entries, Iterate reports every entry
// that stays, each once, with its value, and no error.
func (c mapCase[K, V]) iterateWhileDeleting(t *testing.T) {
	const n = 4000
	cfg := testConfig(t)
	cfg.IPCacheMax, cfg.EndpointsMax, cfg.PolicyMax, cfg.ServicesMax, cfg.BackendsMax = n, n, n, n, n
	m := c.pick(openMaps(t, cfg))
	other, err := OpenPinned[K, V](m.Path())
	if err != nil {
		t.Fatalf("OpenPinned: %v", err)
	}
	defer other.Close()

	idx := c.index(n)
	for round := range 3 {
		keys, vals, want := c.entries(0, n, uint32(round))
		if _, err := m.PutBatch(keys, vals); err != nil {
			t.Fatalf("PutBatch: %v", err)
		}
		// The deleter removes the odd entries in the order the walk
		// meets them, so that it keeps deleting the key the walk stands
		// on and the kernel keeps restarting.
		var victims []K
		if err := m.Iterate(func(k K, _ V) bool {
			if idx[k]%2 == 1 {
				victims = append(victims, k)
			}
			return true
		}); err != nil {
			t.Fatalf("Iterate: %v", err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, k := range victims {
				if _, err := other.Delete(k); err != nil {
					t.Errorf("Delete: %v", err)
					return
				}
			}
		}()
		got := make(map[K]V)
		err := m.Iterate(func(k K, v V) bool {
			if _, dup := got[k]; dup {
				t.Errorf("round %d: %v reported twice", round, k)
			}
			got[k] = v
			return true
		})
		wg.Wait()
		if err != nil {
			t.Fatalf("round %d: Iterate while deleting: %v", round, err)
		}
		for _, k := range victims {
			delete(want, k)
		}
		for k, w := range want {
			if g, ok := got[k]; !ok || g != w {
				t.Fatalf("round %d: survivor %v: got %v (reported %v), want %v", round, k, g, ok, w)
			}
		}
		for k, g := range got {
			if _, ok := idx[k]; !ok {
				t.Fatalf("round %d: reported %v = %v, which was never written", round, k, g)
			}
		}
	}
}

// iterateDeletingAhead: fn deletes the key the walk is about to reach, so
// that on an LPM trie every step restarts the kernel's walk. Iterate must
// still report every other key, once, and in linear time (catching up from
// the first key every time would take minutes for 8000 keys).
func (c mapCase[K, V]) iterateDeletingAhead(t *testing.T) {
	const n = 8000
	cfg := testConfig(t)
	cfg.IPCacheMax, cfg.EndpointsMax, cfg.PolicyMax, cfg.ServicesMax, cfg.BackendsMax = n, n, n, n, n
	m := c.pick(openMaps(t, cfg))
	keys, vals, _ := c.entries(0, n, 0)
	if _, err := m.PutBatch(keys, vals); err != nil {
		t.Fatalf("PutBatch: %v", err)
	}
	// The walk's order, read first.
	var order []K
	if err := m.Iterate(func(k K, _ V) bool { order = append(order, k); return true }); err != nil {
		t.Fatal(err)
	}
	if len(order) != n {
		t.Fatalf("walk saw %d keys, want %d", len(order), n)
	}
	pos := make(map[K]int, n)
	for i, k := range order {
		pos[k] = i
	}
	deleted := make(map[K]bool)
	seen := make(map[K]bool)
	err := m.Iterate(func(k K, _ V) bool {
		if seen[k] {
			t.Errorf("%v reported twice", k)
		}
		if deleted[k] && m.lpm {
			t.Errorf("%v reported after it was deleted", k)
		}
		seen[k] = true
		if i := pos[k] + 1; i < n && !deleted[order[i]] && !seen[order[i]] {
			deleted[order[i]] = true
			if _, err := m.Delete(order[i]); err != nil {
				t.Errorf("Delete: %v", err)
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("Iterate: %v", err)
	}
	for _, k := range order {
		if !deleted[k] && !seen[k] {
			t.Fatalf("%v was never deleted but not reported", k)
		}
	}
	if m.lpm && len(seen) != n/2 {
		t.Errorf("reported %d keys; want every other one, %d", len(seen), n/2)
	}
}

// index maps the keys of the first n test entries to their i.
func (c mapCase[K, V]) index(n int) map[K]int {
	idx := make(map[K]int, n)
	for i := range n {
		k, _ := c.entry(i, 0)
		idx[k] = i
	}
	return idx
}

func TestIPCacheLongestPrefix(t *testing.T) {
	m := openMaps(t, testConfig(t)).IPCache
	entries := map[string]uint32{
		"0.0.0.0/0":    2,
		"10.0.0.0/8":   100,
		"10.1.0.0/24":  200,
		"10.1.0.5/32":  300,
		"::/0":         2,
		"fd00::/64":    400,
		"fd00::1/128":  500,
		"fd00::/16":    600,
		"10.1.0.64/26": 700,
	}
	for p, id := range entries {
		if err := m.Put(IPCacheKeyFor(netip.MustParsePrefix(p)), IPCacheValueFor(id, netip.Addr{}, 0)); err != nil {
			t.Fatalf("Put(%s): %v", p, err)
		}
	}
	lookups := []struct {
		addr string
		want uint32 // 0: no match
	}{
		{"10.1.0.5", 300},      // the /32 wins over the /24
		{"10.1.0.6", 200},      // the /24 wins over the /8
		{"10.1.0.65", 700},     // the /26 inside the /24
		{"10.2.0.1", 100},      // the /8 wins over the /0
		{"192.168.1.1", 2},     // the /0
		{"fd00::1", 500},       // the /128
		{"fd00::2", 400},       // the /64
		{"fd00:1::1", 600},     // the /16
		{"2001:db8::1", 2},     // the IPv6 /0
		{"::ffff:10.1.0.5", 2}, // v4-mapped is IPv6: only ::/0 covers it
	}
	check := func() {
		t.Helper()
		for _, l := range lookups {
			v, ok, err := m.Lookup(IPCacheLookupKey(netip.MustParseAddr(l.addr)))
			if err != nil {
				t.Fatalf("Lookup(%s): %v", l.addr, err)
			}
			if got := map[bool]uint32{true: v.Identity}[ok]; got != l.want {
				t.Errorf("Lookup(%s) = identity %d (found %v); want %d", l.addr, got, ok, l.want)
			}
		}
	}
	check()

	// Deleting the IPv6 /0 must not let the IPv4 /0 catch IPv6 addresses.
	if ok, err := m.Delete(IPCacheKeyFor(netip.MustParsePrefix("::/0"))); err != nil || !ok {
		t.Fatalf("Delete(::/0) = %v, %v", ok, err)
	}
	// Delete is exact: deleting a /25 that was never stored deletes nothing,
	// even though a /24 contains it.
	if ok, err := m.Delete(IPCacheKeyFor(netip.MustParsePrefix("10.1.0.0/25"))); err != nil || ok {
		t.Fatalf("Delete(10.1.0.0/25) = %v, %v; want false: Delete is exact", ok, err)
	}
	if ok, err := m.Delete(IPCacheKeyFor(netip.MustParsePrefix("10.1.0.5/32"))); err != nil || !ok {
		t.Fatalf("Delete(10.1.0.5/32) = %v, %v", ok, err)
	}
	lookups[0].want = 200
	lookups[8].want = 0
	lookups[9].want = 0
	check()

	// Iterate returns the stored prefixes, each once.
	got := dump(t, m)
	if len(got) != len(entries)-2 {
		t.Fatalf("Iterate saw %d prefixes, want %d: %v", len(got), len(entries)-2, got)
	}
	for k, v := range got {
		if want := entries[k.Prefix().String()]; want != v.Identity {
			t.Errorf("Iterate: %v = %v; want identity %d", k, v, want)
		}
	}
}

func TestPutRejectsInvalid(t *testing.T) {
	ms := openMaps(t, testConfig(t))
	for _, tc := range []struct {
		name string
		put  func() error
	}{
		{"zero ipcache key (would match everything)", func() error {
			return ms.IPCache.Put(IPCacheKey{}, IPCacheValueFor(1, netip.Addr{}, 0))
		}},
		{"ipcache key with host bits", func() error {
			k := IPCacheKeyFor(netip.MustParsePrefix("10.0.0.0/8"))
			k.Addr[3] = 1
			return ms.IPCache.Put(k, IPCacheValue{})
		}},
		{"zero endpoint key", func() error {
			return ms.Endpoints.Put(EndpointKey{}, EndpointValue{EndpointID: 1, IfIndex: 1})
		}},
		{"endpoint without ifindex", func() error {
			return ms.Endpoints.Put(EndpointKeyFor(netip.MustParseAddr("10.0.0.1")), EndpointValue{EndpointID: 1})
		}},
		{"policy without verdict", func() error {
			return ms.Policy.Put(PolicyLookupKey(1, Ingress, 2, ProtoTCP, 80), PolicyValue{})
		}},
		{"service without protocol", func() error {
			return ms.Services.Put(ServiceKeyFor(netip.MustParseAddrPort("10.96.0.1:80"), 0, 0), ServiceEntry(1, 0))
		}},
		{"backend ID 0", func() error {
			return ms.Backends.Put(BackendKey{}, BackendValueFor(netip.MustParseAddrPort("10.0.0.1:80"), ProtoTCP, 0))
		}},
		{"batch with one bad entry", func() error {
			k := []IPCacheKey{IPCacheKeyFor(netip.MustParsePrefix("10.0.0.0/8")), {}}
			n, err := ms.IPCache.PutBatch(k, make([]IPCacheValue, 2))
			if n != 0 {
				t.Errorf("PutBatch wrote %d entries before refusing", n)
			}
			return err
		}},
	} {
		if err := tc.put(); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	if n, err := ms.IPCache.Count(); err != nil || n != 0 {
		t.Errorf("IPCache holds %d entries (%v) after refused writes", n, err)
	}
}

func TestClose(t *testing.T) {
	ms := openMaps(t, testConfig(t))
	m := ms.Endpoints
	k := EndpointKeyFor(netip.MustParseAddr("10.0.0.1"))
	v := EndpointValue{EndpointID: 1, IfIndex: 2}
	if err := m.Put(k, v); err != nil {
		t.Fatal(err)
	}
	if err := ms.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := ms.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for name, err := range map[string]error{
		"Put":     m.Put(k, v),
		"Lookup":  func() error { _, _, err := m.Lookup(k); return err }(),
		"Delete":  func() error { _, err := m.Delete(k); return err }(),
		"Iterate": m.Iterate(func(EndpointKey, EndpointValue) bool { return true }),
		"ID":      func() error { _, err := m.ID(); return err }(),
	} {
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("%s after Close = %v; want os.ErrClosed", name, err)
		}
	}
	// The pin, and so the entry, stayed.
	again, err := OpenPinned[EndpointKey, EndpointValue](m.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got, ok, err := again.Lookup(k); err != nil || !ok || got != v {
		t.Fatalf("after Close and reopen: Lookup = %v, %v, %v; want %v", got, ok, err, v)
	}
}

// TestConcurrentUse runs writers, readers and a Close at once under -race.
func TestConcurrentUse(t *testing.T) {
	m := openMaps(t, testConfig(t)).Backends
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				k := BackendKey{ID: uint32(w*1000 + i + 1)}
				err := m.Put(k, BackendValueFor(netip.MustParseAddrPort("10.0.0.1:80"), ProtoTCP, 0))
				if errors.Is(err, os.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				if _, _, err := m.Lookup(k); err != nil && !errors.Is(err, os.ErrClosed) {
					t.Errorf("Lookup: %v", err)
				}
			}
		})
	}
	wg.Go(func() {
		if err := m.Iterate(func(BackendKey, BackendValue) bool { return true }); err != nil && !errors.Is(err, os.ErrClosed) {
			t.Errorf("Iterate: %v", err)
		}
		_ = m.Close()
	})
	wg.Wait()
}
