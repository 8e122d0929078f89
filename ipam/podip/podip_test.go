package podip_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
)

func TestGateway(t *testing.T) {
	for _, tc := range []struct{ cidr, want string }{
		{"10.1.2.0/24", "10.1.2.1"},
		{"10.1.2.8/29", "10.1.2.9"},
		{"fd00:1::/120", "fd00:1::1"},
		{"fd00:1::/64", "fd00:1::1"},
	} {
		if got := podip.Gateway(netip.MustParsePrefix(tc.cidr)); got.String() != tc.want {
			t.Errorf("Gateway(%s) = %s, want %s", tc.cidr, got, tc.want)
		}
	}
}

// TestReservedNeverHandedOut fills CIDRs of several sizes and checks that
// the network, gateway and IPv4 broadcast addresses never come out, that
// every other address of the range does, once, and that the next
// allocation fails with ErrFull.
func TestReservedNeverHandedOut(t *testing.T) {
	for _, tc := range []struct {
		cidr     string
		fam      ipam.Family
		size     int // addresses managed (capped at MaxRange)
		reserved []string
		first    string
	}{
		{"10.1.2.0/24", ipam.IPv4, 256, []string{"10.1.2.0", "10.1.2.1", "10.1.2.255"}, "10.1.2.2"},
		{"10.1.2.16/28", ipam.IPv4, 16, []string{"10.1.2.16", "10.1.2.17", "10.1.2.31"}, "10.1.2.18"},
		{"10.1.2.8/29", ipam.IPv4, 8, []string{"10.1.2.8", "10.1.2.9", "10.1.2.15"}, "10.1.2.10"},
		{"fd00:1::100/120", ipam.IPv6, 256, []string{"fd00:1::100", "fd00:1::101"}, "fd00:1::102"},
		{"fd00:1::/125", ipam.IPv6, 8, []string{"fd00:1::", "fd00:1::1"}, "fd00:1::2"},
		// Capped: only the first MaxRange addresses are used.
		{"fd00:2::/64", ipam.IPv6, podip.MaxRange, []string{"fd00:2::", "fd00:2::1"}, "fd00:2::2"},
	} {
		t.Run(tc.cidr, func(t *testing.T) {
			t.Parallel()
			p := netip.MustParsePrefix(tc.cidr)
			a := mustOpen(t, podip.Config{Dir: t.TempDir()}, tc.cidr)
			reserved := make(map[netip.Addr]bool)
			for _, r := range tc.reserved {
				reserved[netip.MustParseAddr(r)] = true
			}
			got := make(map[netip.Addr]bool)
			for i := 0; ; i++ {
				addr, err := a.Allocate(fmt.Sprintf("pod-%d", i), tc.fam)
				if isFull(err) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 && addr.String() != tc.first {
					t.Errorf("first address %s, want %s", addr, tc.first)
				}
				if reserved[addr] || !p.Contains(addr) || got[addr] {
					t.Fatalf("handed out %s (reserved %v, in %s %v, twice %v)", addr, reserved[addr], p, p.Contains(addr), got[addr])
				}
				got[addr] = true
			}
			if want := tc.size - len(tc.reserved); len(got) != want {
				t.Errorf("handed out %d addresses, want %d", len(got), want)
			}
			st := a.Stats().CIDRs[0]
			want := podip.CIDRStats{CIDR: p, Gateway: podip.Gateway(p), Size: tc.size, Reserved: len(tc.reserved), Used: len(got)}
			if st != want {
				t.Errorf("stats %+v, want %+v", st, want)
			}
		})
	}
}

func TestFullThenAddCIDR(t *testing.T) {
	a := mustOpen(t, podip.Config{Dir: t.TempDir()}, "10.1.2.8/29")
	for i := range 5 {
		if _, err := a.Allocate(fmt.Sprint("pod-", i), ipam.IPv4); err != nil {
			t.Fatal(err)
		}
	}
	_, err := a.Allocate("pod-5", ipam.IPv4)
	if !isFull(err) {
		t.Fatalf("Allocate in a full CIDR: %v, want ErrFull", err)
	}
	for _, want := range []string{"10.1.2.8/29: 5 allocated", "claim another CIDR", "AddCIDR", `"pod-5"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// No IPv6 CIDR at all is the same situation.
	if _, err := a.Allocate("pod-5", ipam.IPv6); !isFull(err) || !strings.Contains(err.Error(), "no IPv6 pod CIDR") {
		t.Errorf("Allocate IPv6 without an IPv6 CIDR: %v", err)
	}
	if _, _, err := a.AllocateDual("pod-5"); !isFull(err) {
		t.Errorf("AllocateDual without an IPv6 CIDR: %v", err)
	}
	if got := a.Lookup("pod-5"); got != nil {
		t.Errorf("a failed AllocateDual left %v allocated", got)
	}

	for _, tc := range []struct {
		cidr    string
		wantErr error
	}{
		{"10.1.2.8/29", nil}, // already there: no-op
		{"10.1.2.0/28", podip.ErrInvalidCIDR},
		{"10.1.2.12/30", podip.ErrInvalidCIDR},
		{"10.1.3.1/24", podip.ErrInvalidCIDR},
		{"10.1.3.0/24", nil},
		{"fd00::/120", nil},
	} {
		if err := a.AddCIDR(netip.MustParsePrefix(tc.cidr)); !errors.Is(err, tc.wantErr) {
			t.Errorf("AddCIDR(%s) = %v, want %v", tc.cidr, err, tc.wantErr)
		}
	}
	addr, err := a.Allocate("pod-5", ipam.IPv4)
	if err != nil || addr.String() != "10.1.3.2" {
		t.Fatalf("Allocate after AddCIDR = %s, %v; want 10.1.3.2", addr, err)
	}
	v4, v6, err := a.AllocateDual("pod-5")
	if err != nil || v4 != addr || v6.String() != "fd00::2" {
		t.Fatalf("AllocateDual = %s, %s, %v; want %s, fd00::2", v4, v6, err, addr)
	}
	if err := checkConsistent(a); err != nil {
		t.Fatal(err)
	}
}

func TestAllocateIdempotent(t *testing.T) {
	a := mustOpen(t, podip.Config{Dir: t.TempDir()}, "10.1.2.0/24", "fd00::/120")
	first, err := a.Allocate("ns/pod/c1", ipam.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		again, err := a.Allocate("ns/pod/c1", ipam.IPv4)
		if err != nil || again != first {
			t.Fatalf("Allocate again = %s, %v; want %s", again, err, first)
		}
	}
	other, err := a.Allocate("ns/pod/c2", ipam.IPv4)
	if err != nil || other == first {
		t.Fatalf("another owner got %s, %v", other, err)
	}
	v4, v6, err := a.AllocateDual("ns/pod/c1")
	if err != nil || v4 != first || !v6.Is6() {
		t.Fatalf("AllocateDual = %s, %s, %v", v4, v6, err)
	}
	if got := a.Lookup("ns/pod/c1"); len(got) != 2 || got[0] != v4 || got[1] != v6 {
		t.Errorf("Lookup = %v", got)
	}
	if st := a.Stats(); st.Journal.Records != 3 {
		t.Errorf("%d records, want 3: an idempotent Allocate writes nothing", st.Journal.Records)
	}
}

func TestReleaseAndOwners(t *testing.T) {
	a := mustOpen(t, podip.Config{Dir: t.TempDir()}, "10.1.2.0/24", "fd00::/120")
	if err := a.Release("never/allocated"); err != nil {
		t.Errorf("Release of an unknown owner: %v", err)
	}
	if _, _, err := a.AllocateDual("ns/pod"); err != nil {
		t.Fatal(err)
	}
	for range 2 { // CNI DEL is retried
		if err := a.Release("ns/pod"); err != nil {
			t.Fatal(err)
		}
	}
	if got := a.Lookup("ns/pod"); got != nil {
		t.Errorf("Lookup after Release = %v", got)
	}
	st := a.Stats()
	if st.CIDRs[0].Quarantined != 1 || st.CIDRs[1].Quarantined != 1 || st.Allocated != 0 {
		t.Errorf("after Release: %+v", st)
	}
	for _, owner := range []string{"", "a\nb", "a\rb", "a\x00b", strings.Repeat("x", podip.MaxOwnerLen+1)} {
		if _, err := a.Allocate(owner, ipam.IPv4); !errors.Is(err, podip.ErrInvalidOwner) {
			t.Errorf("Allocate(%q) = %v, want ErrInvalidOwner", owner, err)
		}
		if err := a.Release(owner); !errors.Is(err, podip.ErrInvalidOwner) {
			t.Errorf("Release(%q) = %v, want ErrInvalidOwner", owner, err)
		}
	}
	for _, owner := range []string{"a b c", "ns/pod/" + strings.Repeat("f", 64), strings.Repeat("x", podip.MaxOwnerLen), "ünïcode"} {
		if _, err := a.Allocate(owner, ipam.IPv4); err != nil {
			t.Errorf("Allocate(%q): %v", owner, err)
		}
	}
	if _, err := a.Allocate("x", ipam.Family(5)); err == nil {
		t.Error("Allocate with family 5 succeeded")
	}
}

func TestQuarantine(t *testing.T) {
	t.Run("not reused before it passes", func(t *testing.T) {
		clock := newFakeClock()
		a := mustOpen(t, podip.Config{Dir: t.TempDir(), Clock: clock}, "10.1.2.8/29")
		var addrs []netip.Addr
		for i := range 5 {
			addr, err := a.Allocate(fmt.Sprint("pod-", i), ipam.IPv4)
			if err != nil {
				t.Fatal(err)
			}
			addrs = append(addrs, addr)
		}
		if err := a.Release("pod-2"); err != nil {
			t.Fatal(err)
		}
		clock.Advance(podip.DefaultQuarantine - time.Nanosecond)
		_, err := a.Allocate("new", ipam.IPv4)
		if !isFull(err) || !strings.Contains(err.Error(), "1 quarantined") {
			t.Fatalf("Allocate during quarantine: %v, want ErrFull naming the quarantine", err)
		}
		if st := a.Stats().CIDRs[0]; st.Quarantined != 1 || st.Free != 0 {
			t.Errorf("stats during quarantine: %+v", st)
		}
		clock.Advance(time.Nanosecond)
		addr, err := a.Allocate("new", ipam.IPv4)
		if err != nil || addr != addrs[2] {
			t.Fatalf("Allocate after quarantine = %s, %v; want %s", addr, err, addrs[2])
		}
	})
	t.Run("round robin skips a just released address", func(t *testing.T) {
		a := mustOpen(t, podip.Config{Dir: t.TempDir(), Quarantine: -1}, "10.1.2.0/24")
		first, _ := a.Allocate("a", ipam.IPv4)
		if err := a.Release("a"); err != nil {
			t.Fatal(err)
		}
		if next, _ := a.Allocate("b", ipam.IPv4); next == first {
			t.Errorf("released %s was handed out again at once", first)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		a := mustOpen(t, podip.Config{Dir: t.TempDir(), Quarantine: -1}, "10.1.2.8/29")
		for i := range 5 {
			if _, err := a.Allocate(fmt.Sprint("pod-", i), ipam.IPv4); err != nil {
				t.Fatal(err)
			}
		}
		want := a.Lookup("pod-3")[0]
		if err := a.Release("pod-3"); err != nil {
			t.Fatal(err)
		}
		if got, err := a.Allocate("new", ipam.IPv4); err != nil || got != want {
			t.Errorf("Allocate = %s, %v; want %s at once", got, err, want)
		}
	})
	t.Run("survives a restart", func(t *testing.T) {
		clock := newFakeClock()
		cfg := podip.Config{Dir: t.TempDir(), Clock: clock, Quarantine: 10 * time.Second}
		a, err := podip.Open(cfg, prefixes("10.1.2.8/29"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if _, err := a.Allocate(fmt.Sprint("pod-", i), ipam.IPv4); err != nil {
				t.Fatal(err)
			}
		}
		want := a.Lookup("pod-0")[0]
		if err := a.Release("pod-0"); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		clock.Advance(6 * time.Second)
		a = mustOpen(t, cfg, "10.1.2.8/29")
		if _, err := a.Allocate("new", ipam.IPv4); !isFull(err) {
			t.Fatalf("Allocate 6s after the release, across a restart: %v, want ErrFull", err)
		}
		clock.Advance(4 * time.Second)
		if got, err := a.Allocate("new", ipam.IPv4); err != nil || got != want {
			t.Errorf("Allocate after the quarantine = %s, %v; want %s", got, err, want)
		}
	})
	t.Run("release time in the future counts as now", func(t *testing.T) {
		clock := newFakeClock()
		cfg := podip.Config{Dir: t.TempDir(), Clock: clock, Quarantine: 10 * time.Second}
		a, err := podip.Open(cfg, prefixes("10.1.2.8/29"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if _, err := a.Allocate(fmt.Sprint("pod-", i), ipam.IPv4); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Release("pod-0"); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		clock.Advance(-time.Hour) // the wall clock stepped back
		a = mustOpen(t, cfg, "10.1.2.8/29")
		clock.Advance(10 * time.Second)
		if _, err := a.Allocate("new", ipam.IPv4); err != nil {
			t.Errorf("Allocate a quarantine after a clock step: %v", err)
		}
	})
}

func TestOpenValidation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     podip.Config
		cidrs   []string
		wantErr error
		want    string
	}{
		{"no dir", podip.Config{}, nil, podip.ErrConfig, "Dir"},
		{"negative sync", podip.Config{Dir: "x", SyncInterval: -1}, nil, podip.ErrConfig, "SyncInterval"},
		{"host bits", podip.Config{}, []string{"10.1.2.3/24"}, podip.ErrInvalidCIDR, "did you mean 10.1.2.0/24"},
		{"v4 /30", podip.Config{}, []string{"10.1.2.0/30"}, podip.ErrInvalidCIDR, "/29 or larger"},
		{"v4 /32", podip.Config{}, []string{"10.1.2.0/32"}, podip.ErrInvalidCIDR, "too small"},
		{"v6 /126", podip.Config{}, []string{"fd00::/126"}, podip.ErrInvalidCIDR, "/125 or larger"},
		{"v6 /128", podip.Config{}, []string{"fd00::/128"}, podip.ErrInvalidCIDR, "too small"},
		{"4in6", podip.Config{}, []string{"::ffff:10.1.2.0/120"}, podip.ErrInvalidCIDR, "IPv4 form"},
		{"overlap", podip.Config{}, []string{"10.1.0.0/16", "10.1.2.0/24"}, podip.ErrInvalidCIDR, "overlap"},
		{"twice", podip.Config{}, []string{"fd00::/120", "fd00::/120"}, podip.ErrInvalidCIDR, "overlap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			if cfg.Dir == "" && !errors.Is(tc.wantErr, podip.ErrConfig) {
				cfg.Dir = t.TempDir()
			}
			a, err := podip.Open(cfg, prefixes(tc.cidrs...))
			if err == nil {
				_ = a.Close()
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(fmt.Sprint(err), tc.want) {
				t.Errorf("Open = %v, want %v saying %q", err, tc.wantErr, tc.want)
			}
		})
	}
	if _, err := podip.Open(podip.Config{Dir: t.TempDir()}, []netip.Prefix{{}}); !errors.Is(err, podip.ErrInvalidCIDR) {
		t.Errorf("Open with a zero prefix: %v", err)
	}
}

func TestOrphans(t *testing.T) {
	clock := newFakeClock()
	cfg := podip.Config{Dir: t.TempDir(), Clock: clock}
	a, err := podip.Open(cfg, prefixes("10.1.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	old := make(map[string]netip.Addr)
	for i := range 10 {
		owner := fmt.Sprint("old-", i)
		if old[owner], err = a.Allocate(owner, ipam.IPv4); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	// The node's CIDR changed: the old allocations are kept and reported.
	a = mustOpen(t, cfg, "10.1.2.0/24")
	st := a.Stats()
	if len(st.Orphans) != 10 || st.Allocated != 10 || st.CIDRs[0].Used != 0 {
		t.Fatalf("stats after a CIDR change: %+v", st)
	}
	if got, err := a.Allocate("old-3", ipam.IPv4); err != nil || got != old["old-3"] {
		t.Errorf("Allocate for an orphan's owner = %s, %v; want %s", got, err, old["old-3"])
	}
	if got, err := a.Allocate("new-0", ipam.IPv4); err != nil || got.String() != "10.1.2.2" {
		t.Errorf("Allocate for a new owner = %s, %v", got, err)
	}
	if err := a.Release("old-0"); err != nil {
		t.Fatal(err)
	}
	// The old CIDR comes back: its orphans are adopted, the released one
	// stays quarantined.
	if err := a.AddCIDR(netip.MustParsePrefix("10.1.1.0/24")); err != nil {
		t.Fatal(err)
	}
	st = a.Stats()
	if len(st.Orphans) != 0 || st.CIDRs[1].Used != 9 || st.CIDRs[1].Quarantined != 1 {
		t.Errorf("stats after AddCIDR: %+v", st)
	}
	for i := range 300 {
		addr, err := a.Allocate(fmt.Sprint("more-", i), ipam.IPv4)
		if isFull(err) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for owner, o := range old {
			if addr == o {
				t.Fatalf("%s handed out again; it belonged to %s", addr, owner)
			}
		}
	}
	if err := checkConsistent(a); err != nil {
		t.Fatal(err)
	}
}

func TestOrphanOnReservedAddress(t *testing.T) {
	cfg := podip.Config{Dir: t.TempDir()}
	a, err := podip.Open(cfg, prefixes("10.1.2.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	var addr netip.Addr
	for i := range 128 { // up to 10.1.2.129
		if addr, err = a.Allocate(fmt.Sprint("pod-", i), ipam.IPv4); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	// 10.1.2.127 is the broadcast address of 10.1.2.0/25, 10.1.2.128 the
	// network and 10.1.2.129 the gateway of 10.1.2.128/25.
	a = mustOpen(t, cfg, "10.1.2.0/25", "10.1.2.128/25")
	st := a.Stats()
	var orphans []string
	for _, o := range st.Orphans {
		orphans = append(orphans, o.Addr.String())
	}
	if fmt.Sprint(orphans) != "[10.1.2.127 10.1.2.128 10.1.2.129]" || addr.String() != "10.1.2.129" {
		t.Errorf("orphans %v", orphans)
	}
	if err := checkConsistent(a); err != nil {
		t.Fatal(err)
	}
}

func TestLockedAndClosed(t *testing.T) {
	dir := t.TempDir()
	a, err := podip.Open(podip.Config{Dir: dir}, prefixes("10.1.2.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := podip.Open(podip.Config{Dir: dir}, nil); !errors.Is(err, podip.ErrLocked) {
		if err == nil {
			_ = b.Close()
		}
		t.Errorf("second Open of one directory: %v, want ErrLocked", err)
	}
	addr, err := a.Allocate("pod", ipam.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := a.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	if _, err := a.Allocate("pod2", ipam.IPv4); !errors.Is(err, podip.ErrClosed) {
		t.Errorf("Allocate after Close: %v", err)
	}
	if err := a.Release("pod"); !errors.Is(err, podip.ErrClosed) {
		t.Errorf("Release after Close: %v", err)
	}
	if err := a.AddCIDR(netip.MustParsePrefix("10.9.0.0/24")); !errors.Is(err, podip.ErrClosed) {
		t.Errorf("AddCIDR after Close: %v", err)
	}
	if got := a.Lookup("pod"); len(got) != 1 || got[0] != addr {
		t.Errorf("Lookup after Close = %v", got)
	}
	b := mustOpen(t, podip.Config{Dir: dir}, "10.1.2.0/24")
	if got := b.Lookup("pod"); len(got) != 1 || got[0] != addr {
		t.Errorf("Lookup after reopen = %v, want [%s]", got, addr)
	}
}

// TestConcurrent allocates and releases from many goroutines, then checks
// that no address went out twice, before and after a reopen.
func TestConcurrent(t *testing.T) {
	cfg := podip.Config{Dir: t.TempDir(), Quarantine: -1, SyncInterval: time.Millisecond}
	a, err := podip.Open(cfg, prefixes("10.1.0.0/20", "fd00::/116"))
	if err != nil {
		t.Fatal(err)
	}
	const workers, perWorker = 8, 400
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				owner := fmt.Sprintf("w%d/pod-%d", w, i)
				if _, _, err := a.AllocateDual(owner); err != nil {
					errs <- err
					return
				}
				if i%3 == 0 {
					if err := a.Release(fmt.Sprintf("w%d/pod-%d", w, i/2)); err != nil {
						errs <- err
						return
					}
				}
				_ = a.Stats()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := checkConsistent(a); err != nil {
		t.Fatal(err)
	}
	before := a.Allocations()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a = mustOpen(t, cfg, "10.1.0.0/20", "fd00::/116")
	if err := checkConsistent(a); err != nil {
		t.Fatal(err)
	}
	if after := a.Allocations(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("allocations changed across a reopen:\nbefore %v\nafter  %v", before, after)
	}
}
